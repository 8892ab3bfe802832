"""Core-sets over HTTP: start one, list them."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.auth.deps import DB, CurrentUser
from app.coresets import service
from app.coresets.schemas import CoresetCreate
from app.jobs.models import JobKind
from app.jobs.schemas import JobRead
from app.jobs.service import jobs_of_kind
from app.projects.deps import EngineerAccess, ProjectAccess

router = APIRouter(prefix="/api/projects", tags=["coresets"])


@router.post("/{project_id}/coresets", status_code=status.HTTP_202_ACCEPTED)
def start_coreset(
    body: CoresetCreate, access: EngineerAccess, user: CurrentUser, db: DB
) -> JobRead:
    """Choose a core-set of the labelled items (engineers): 202 with the job."""
    job = service.start_coreset(
        db,
        project=access.project,
        fraction=body.fraction,
        strategy=body.strategy,
        proxy=body.proxy,
        seed=body.seed,
        created_by=user.id,
    )
    return JobRead.model_validate(job)


@router.get("/{project_id}/coresets")
def list_coresets(access: ProjectAccess, db: DB) -> list[JobRead]:
    """The project's core-set jobs with their results, newest first (members)."""
    jobs = jobs_of_kind(db, project_id=access.project.id, kind=JobKind.coreset)
    return [JobRead.model_validate(j) for j in jobs]
