"""Running a job: claim it, keep its heartbeat, call its kind's runner, record how it ended.

Both the server's stopgap thread pool and the Celery worker run a job through ``run_job``, so a
job behaves the same wherever it runs. A runner is ``fn(ctx: JobContext) -> dict``, registered
for its kind with ``register_runner`` by the process that may run it: a worker registers all of
its runners (``worker.runners``), the server only those it may run in its own pool (imports), so
the server never imports torch.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy.orm import Session

from app.db import unit_of_work, utcnow
from app.errors import is_disk_full
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind, JobStatus
from app.settings import get_settings

log = logging.getLogger(__name__)

# A job whose worker died this many times is failed instead of re-sent (a poison job).
MAX_ATTEMPTS = 3


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
        if fraction > 0:
            pause_point(f"{self.kind}:{stage}")


def pause_point(point: str) -> None:
    """Test only: stop here for good when ``SVP_TEST_PAUSE_AT`` names this point (see Settings).

    The job's heartbeat goes on meanwhile, as in a healthy worker, until the test kills it.
    """
    settings = get_settings()
    if settings.environment != "test" or settings.test_pause_at != point:
        return
    log.warning("event=paused point=%s; waiting to be killed (SVP_TEST_PAUSE_AT)", point)
    while True:
        time.sleep(60)


Runner = Callable[[JobContext], dict[str, Any]]

_REGISTRY: dict[str, Runner] = {}


def register_runner(kind: JobKind | str, fn: Runner) -> None:
    """Let this process run jobs of ``kind`` with ``fn`` (the same pair again is a no-op)."""
    key = str(kind)
    known = _REGISTRY.get(key)
    if known is not None and known is not fn:
        raise ValueError(f"jobs of kind {key!r} already run with {known.__qualname__}")
    _REGISTRY[key] = fn


def resolve_runner(kind: JobKind | str) -> Runner:
    """The runner registered for a kind of job in this process."""
    fn = _REGISTRY.get(str(kind))
    if fn is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise LookupError(
            f"no runner for jobs of kind {str(kind)!r} in this process (it runs: {known}); "
            "the server runs only imports itself, everything else needs a worker"
        )
    return fn


def lost_worker_reason(attempts: int) -> str:
    """The error of a job given up after its workers died."""
    return f"worker lost {attempts} times; giving up"


def run_job(job_id: int, *, worker: str | None = None) -> str:
    """Run a job once, idempotently: a finished job is left alone. Returns the final status.

    Only a queued job is claimed, or a running one whose heartbeat stopped (its worker died and
    the message came back): a second delivery while the first run is alive does nothing.
    """
    claimed = claim(job_id, worker=worker)
    if isinstance(claimed, str):
        return claimed
    ctx = claimed
    log.info("job=%s kind=%s event=start worker=%s", job_id, ctx.kind, worker)
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        with heartbeat(job_id):
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
            finish(job, status, result=result, error=error)
    log.info("job=%s kind=%s event=finish status=%s", job_id, ctx.kind, status)
    return status


def claim(job_id: int, *, worker: str | None) -> JobContext | str:
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
            finish(job, JobStatus.canceled, error="canceled before it started")
            return JobStatus.canceled
        dead = job.heartbeat_at is None or job.heartbeat_at < stale
        if job.status == JobStatus.running and dead and job.attempts >= MAX_ATTEMPTS:
            finish(job, JobStatus.failed, error=lost_worker_reason(job.attempts))
            return JobStatus.failed
        if not _won(db, job_id, worker=worker, now=now, stale=stale):
            log.info("job=%s event=skipped; it runs elsewhere (%s)", job_id, job.worker)
            return str(job.status)
        return JobContext(
            job_id=job.id,
            kind=job.kind,
            project_id=job.project_id,
            params=dict(job.params),
            worker=worker,
        )


def _won(db: Session, job_id: int, *, worker: str | None, now: datetime, stale: datetime) -> bool:
    """Take the job in one statement, so two deliveries racing for it cannot both win it."""
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
    # An UPDATE answers a CursorResult, but Session.execute is typed as returning a Result.
    return bool(won.rowcount == 1)  # type: ignore[attr-defined]


@contextmanager
def heartbeat(job_id: int) -> Iterator[None]:
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


def finish(
    job: Job,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record how a job ended (in the caller's transaction)."""
    job.status = status
    job.result = result if result is not None else job.result
    job.error = error
    job.finished_at = utcnow()
    if status == JobStatus.succeeded:
        job.progress = 1.0


# A job that failed on a full disk says so first: a retry succeeds only once space is freed.
DISK_FULL_REASON = "the server's disk is full (no space left on device): free space, then retry"


def _describe(exc: BaseException) -> str:
    """A failed job's error for the admin: the exception and the last frames, bounded."""
    tail = "".join(traceback.format_exception(exc)[-3:])
    if is_disk_full(exc):
        # Said first and plainly: the job cannot succeed until space is freed, then a retry does.
        return f"{DISK_FULL_REASON}\n{type(exc).__name__}: {exc}\n{tail}"[:4000]
    return f"{type(exc).__name__}: {exc}\n{tail}"[:4000]
