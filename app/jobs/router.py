"""The job monitor over HTTP: list, read, retry and cancel background jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app import flows
from app.auth.deps import DB, CurrentUser
from app.fields import MAX_ID, PathId, QueryId
from app.http import error_responses
from app.jobs import service
from app.jobs.models import JobKind, JobStatus
from app.jobs.schemas import JobRead

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("")
def list_jobs(
    user: CurrentUser,
    db: DB,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    project_id: QueryId | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.DEFAULT_PAGE,
    after: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="the last id of the previous page")
    ] = None,
) -> list[JobRead]:
    """Jobs newest first, at most ``limit``; pass the last id as ``after`` for the next ones."""
    jobs = service.list_jobs(
        db,
        user=user,
        status=status,
        kind=kind,
        project_id=project_id,
        limit=limit,
        after=after,
    )
    return [JobRead.model_validate(j) for j in jobs]


@router.get("/{job_id}")
def get_job(job_id: PathId, user: CurrentUser, db: DB) -> JobRead:
    """One job with its stage, progress, result or error."""
    return JobRead.model_validate(service.get_job(db, user=user, job_id=job_id))


@router.post("/{job_id}/retry", responses=error_responses(409))
def retry_job(job_id: PathId, user: CurrentUser, db: DB) -> JobRead:
    """Queue a failed or canceled job again (409 otherwise); it is sent once committed."""
    job = service.get_job(db, user=user, job_id=job_id)
    return JobRead.model_validate(flows.retry_job(db, job=job))


@router.post("/{job_id}/cancel", responses=error_responses(409))
def cancel_job(job_id: PathId, user: CurrentUser, db: DB) -> JobRead:
    """Cancel a queued job at once, or ask a running one to stop; 409 once it has finished."""
    job = service.get_job(db, user=user, job_id=job_id)
    return JobRead.model_validate(flows.cancel_job(db, job=job))
