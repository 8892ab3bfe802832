"""Jobs: written with their rows and sent after commit; the monitor's list, retry and cancel.

How a job runs once sent lives in ``app.jobs.runtime``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.errors import Conflict, NotFound, PermissionDenied
from app.jobs.dispatch import send_after_commit
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobStatus
from app.jobs.runtime import finish
from app.projects.models import Member, MemberRole

log = logging.getLogger(__name__)


def draw_seed(given: int | None) -> int:
    """The caller's seed, or a fresh one for a job about to be written."""
    # Drawn here, never in the worker, so a redelivered job makes the same choices.
    return given if given is not None else secrets.randbelow(2**31)


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


def visible_jobs(db: Session, *, user: User) -> Select[tuple[Job]]:
    """Jobs the caller may see: all for an admin, else those of projects they are engineer of.

    The project role decides, not the global one (DESIGN 5): an annotator made engineer of a
    project polls its imports like any engineer. A caller who is neither an admin, nor an
    engineer anywhere, nor an engineer of any project gets 403.
    """
    query = select(Job)
    if user.role == Role.admin:
        return query
    own = select(Member.project_id).where(
        Member.user_id == user.id, Member.role == MemberRole.engineer
    )
    if user.role != Role.engineer and db.scalar(own.limit(1)) is None:
        raise PermissionDenied("the job monitor is for admins and engineers of a project")
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
    query = visible_jobs(db, user=user)
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


def jobs_of_kind(db: Session, *, project_id: int, kind: str) -> list[Job]:
    """A project's jobs of one kind, newest first."""
    return list(
        db.scalars(
            select(Job)
            .where(Job.project_id == project_id, Job.kind == kind)
            .order_by(Job.id.desc())
        )
    )


def get_job(db: Session, *, user: User, job_id: int) -> Job:
    """One visible job; 404 for a job the caller may not see, as for one that does not exist."""
    job = db.scalar(visible_jobs(db, user=user).where(Job.id == job_id))
    if job is None:
        raise NotFound("no such job")
    return job


def check_retryable(job: Job) -> None:
    """Conflict unless the job failed or was canceled."""
    if job.status not in (JobStatus.failed, JobStatus.canceled):
        raise Conflict(f"only a failed or canceled job can be retried; this one is {job.status}")


def retry_job(db: Session, *, job: Job) -> Job:
    """Queue a failed or canceled job again; it is re-sent once the transaction commits.

    An import resumes from its checkpoint (its result). What a retry means for a round's job's
    round is ``app.flows.retry_job``'s business.
    """
    check_retryable(job)
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
    return job
