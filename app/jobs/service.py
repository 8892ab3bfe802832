"""The life of a background job: created with its row, run by kind, progress kept in the row.

Both the server's stopgap thread pool and the Celery worker run a job through ``run_job``, so a
job behaves the same wherever it runs. A runner is ``fn(ctx: JobContext) -> dict`` named by a
dotted path in ``RUNNERS`` and imported only when a job of its kind runs (the server never
imports torch: only the worker resolves the round runners).
"""

from __future__ import annotations

import importlib
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.db import unit_of_work, utcnow
from app.errors import Conflict, NotFound, PermissionDenied
from app.jobs.dispatch import send_after_commit
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind, JobStatus
from app.projects.models import Member, MemberRole
from app.rounds.models import ACTIVE_ROUND_STATUSES, Round, RoundStatus
from app.settings import get_settings

log = logging.getLogger(__name__)

# kind -> "module:function"; each runner takes a JobContext and returns the job's result.
RUNNERS: dict[str, str] = {
    JobKind.import_: "app.items.importer:run_import",
    JobKind.round: "worker.rounds:run_round",
    JobKind.coreset: "worker.rounds:run_coreset",
    JobKind.evaluate: "worker.rounds:run_evaluate",
    JobKind.embed: "worker.embed:run_embed",
}


class JobCanceled(Exception):
    """Raised inside a runner when someone asked the job to stop."""


@dataclass
class JobContext:
    """What a runner gets: the job's id and params, and a way to report progress."""

    job_id: int
    kind: str
    project_id: int | None
    params: dict[str, Any]
    worker: str | None = None
    _stage: str | None = field(default=None, repr=False)

    def progress(self, stage: str, fraction: float) -> None:
        """Record stage and progress (0..1) in the job's row; raise JobCanceled if asked to stop."""
        if stage != self._stage:
            # One line per stage, not per report: a training loop reports every few batches.
            log.info("job=%s kind=%s stage=%s event=stage", self.job_id, self.kind, stage)
            self._stage = stage
        with unit_of_work() as db:
            db.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(stage=stage, progress=min(max(fraction, 0.0), 1.0), heartbeat_at=utcnow())
            )
            job = db.get(Job, self.job_id)
            canceled = job is None or job.cancel_requested
        if canceled:
            raise JobCanceled(f"job {self.job_id} was canceled")


def create_job(
    db: Session,
    *,
    kind: str,
    project_id: int | None,
    params: dict[str, Any],
    created_by: int | None,
) -> Job:
    """Write a queued job; it is sent to its runner only after the transaction commits."""
    job = Job(kind=kind, project_id=project_id, params=params, created_by=created_by)
    db.add(job)
    db.flush()
    send_after_commit(db, job_id=job.id, kind=kind)
    return job


def resolve_runner(kind: str) -> Callable[[JobContext], dict[str, Any]]:
    """Import the runner for a kind of job."""
    target = RUNNERS.get(kind)
    if target is None:
        raise LookupError(f"no runner for jobs of kind {kind!r}")
    module, _, name = target.partition(":")
    fn: Callable[[JobContext], dict[str, Any]] = getattr(importlib.import_module(module), name)
    return fn


# A job whose worker died this many times is failed instead of re-sent (a poison job).
MAX_ATTEMPTS = 3


def lost_worker_reason(attempts: int) -> str:
    """The error of a job given up after its workers died."""
    return f"worker lost {attempts} times; giving up"


def run_job(job_id: int, *, worker: str | None = None) -> str:
    """Run a job once, idempotently: a finished job is left alone. Returns the final status.

    Only a queued job is claimed, or a running one whose heartbeat stopped (its worker died and
    the message came back): a second delivery while the first run is alive does nothing.
    """
    claimed = _claim(job_id, worker=worker)
    if isinstance(claimed, str):
        return claimed
    ctx = claimed
    log.info("job=%s kind=%s event=start worker=%s", job_id, ctx.kind, worker)
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        with _beating(job_id):
            result = resolve_runner(ctx.kind)(ctx)
    except JobCanceled:
        status, error = JobStatus.canceled, "canceled"
    except Exception as exc:
        log.exception("job=%s kind=%s event=failed", job_id, ctx.kind)
        status, error = JobStatus.failed, _describe(exc)
    else:
        status = JobStatus.succeeded
    with unit_of_work() as db:
        job = db.get(Job, job_id)
        if job is not None:
            _finish(db, job, status, result=result, error=error)
    log.info("job=%s kind=%s event=finish status=%s", job_id, ctx.kind, status)
    return status


def _claim(job_id: int, *, worker: str | None) -> JobContext | str:
    """Mark the job running for this worker, or say why not (its status, or "missing")."""
    now = utcnow()
    stale = now - timedelta(seconds=get_settings().worker_dead_after_seconds)
    with unit_of_work() as db:
        job = db.get(Job, job_id)
        if job is None:
            log.warning("job=%s event=missing; nothing to run", job_id)
            return "missing"
        if job.status in FINISHED_JOB_STATUSES:
            return job.status
        if job.cancel_requested:
            _finish(db, job, JobStatus.canceled, error="canceled before it started")
            return JobStatus.canceled
        dead = job.heartbeat_at is None or job.heartbeat_at < stale
        if job.status == JobStatus.running and dead and job.attempts >= MAX_ATTEMPTS:
            _finish(db, job, JobStatus.failed, error=lost_worker_reason(job.attempts))
            return JobStatus.failed
        # One statement decides, so two deliveries racing for the job cannot both win it.
        won = db.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.status == JobStatus.queued,
                    and_(
                        Job.status == JobStatus.running,
                        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                    ),
                ),
            )
            .values(
                status=JobStatus.running,
                attempts=Job.attempts + 1,
                worker=worker,
                started_at=func.coalesce(Job.started_at, now),
                heartbeat_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            log.info("job=%s event=skipped; it runs elsewhere (%s)", job_id, job.worker)
            return str(job.status)
        return JobContext(
            job_id=job.id,
            kind=job.kind,
            project_id=job.project_id,
            params=dict(job.params),
            worker=worker,
        )


@contextmanager
def _beating(job_id: int) -> Iterator[None]:
    """Refresh the job's heartbeat from a thread while it runs, so a dead worker shows."""
    stop = threading.Event()
    interval = get_settings().worker_heartbeat_seconds

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with unit_of_work() as db:
                    db.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == JobStatus.running)
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:
                # A missed beat is harmless unless many are missed; keep trying.
                log.warning("job=%s event=heartbeat-failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"svp-job-{job_id}-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _finish(
    db: Session,
    job: Job,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    job.status = status
    job.result = result if result is not None else job.result
    job.error = error
    job.finished_at = utcnow()
    if status == JobStatus.succeeded:
        job.progress = 1.0


def _describe(exc: BaseException) -> str:
    """A failed job's error for the admin: the exception and the last frames, bounded."""
    tail = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tail}"[:4000]


# ---- the job monitor: what a caller may see, retry and cancel ----

# Jobs answered by one monitor request at most; the default when no limit is given.
MAX_PAGE = 500
DEFAULT_PAGE = 100


def visible_jobs(user: User) -> Select[tuple[Job]]:
    """Jobs the caller may see: all for an admin, an engineer's own projects' otherwise."""
    query = select(Job)
    if user.role == Role.admin:
        return query
    if user.role != Role.engineer:
        raise PermissionDenied("the job monitor is for engineers and admins")
    own = select(Member.project_id).where(
        Member.user_id == user.id, Member.role == MemberRole.engineer
    )
    return query.where(Job.project_id.in_(own))


def list_jobs(
    db: Session,
    *,
    user: User,
    status: str | None = None,
    kind: str | None = None,
    project_id: int | None = None,
    limit: int = DEFAULT_PAGE,
    after: int | None = None,
) -> list[Job]:
    """Visible jobs newest first, at most ``limit``; ``after`` is the last id of the page before."""
    query = visible_jobs(user)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if project_id is not None:
        query = query.where(Job.project_id == project_id)
    if after is not None:
        query = query.where(Job.id < after)
    limit = min(max(limit, 1), MAX_PAGE)
    return list(db.scalars(query.order_by(Job.id.desc()).limit(limit)))


def get_job(db: Session, *, user: User, job_id: int) -> Job:
    """One visible job; 404 for a job the caller may not see, as for one that does not exist."""
    job = db.scalar(visible_jobs(user).where(Job.id == job_id))
    if job is None:
        raise NotFound("no such job")
    return job


def retry_job(db: Session, *, job: Job) -> Job:
    """Queue a failed or canceled job again; it is re-sent once the transaction commits.

    An import resumes from its checkpoint (its result). A round's job takes its round back to
    queued, unless another round of the project is active meanwhile.
    """
    if job.status not in (JobStatus.failed, JobStatus.canceled):
        raise Conflict(f"only a failed or canceled job can be retried; this one is {job.status}")
    if job.kind == JobKind.round:
        _requeue_round(db, job=job)
    job.status = JobStatus.queued
    job.stage = None
    job.progress = 0.0
    job.error = None
    job.worker = None
    # The give-up budget is per retry: an admin retrying a job lost three times wants three more.
    job.attempts = 0
    job.cancel_requested = False
    job.sent_at = None
    job.started_at = None
    job.finished_at = None
    job.heartbeat_at = None
    db.flush()
    send_after_commit(db, job_id=job.id, kind=job.kind)
    return job


def cancel_job(db: Session, *, job: Job) -> Job:
    """Cancel a queued job now; ask a running one to stop at its next progress report."""
    if job.status in FINISHED_JOB_STATUSES:
        raise Conflict(f"the job has already {job.status}")
    job.cancel_requested = True
    if job.status == JobStatus.queued:
        _finish(db, job, JobStatus.canceled, error="canceled before it started")
    db.flush()
    if job.kind == JobKind.round and job.project_id is not None:
        # Imported here: the rounds service imports this module to create its jobs.
        from app.rounds.service import follow_jobs

        follow_jobs(db, project_id=job.project_id)
    return job


def _requeue_round(db: Session, *, job: Job) -> None:
    """Put the round of a retried round job back to queued (409 if another round is active)."""
    rnd = db.scalar(select(Round).where(Round.job_id == job.id))
    if rnd is None:
        return
    other = db.scalar(
        select(Round.id).where(
            Round.project_id == rnd.project_id,
            Round.id != rnd.id,
            Round.status.in_(ACTIVE_ROUND_STATUSES),
        )
    )
    if other is not None:
        raise Conflict(f"round {other} of the project is active; retry this one after it")
    if rnd.status not in (RoundStatus.failed, RoundStatus.canceled):
        raise Conflict(f"the job's round is {rnd.status}; only a failed or canceled one is retried")
    rnd.status = RoundStatus.queued
    rnd.error = None
    rnd.finished_at = None
