"""Jobs: written with their rows and sent after commit; the monitor's list, retry and cancel.

How a job runs once sent lives in ``app.jobs.runtime``.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.errors import Conflict, NotFound, PermissionDenied
from app.jobs.dispatch import send_after_commit
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind, JobStatus
from app.jobs.runtime import finish
from app.projects.models import Member, MemberRole
from app.rounds.models import ACTIVE_ROUND_STATUSES, Round, RoundStatus

log = logging.getLogger(__name__)


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
        finish(job, JobStatus.canceled, error="canceled before it started")
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
