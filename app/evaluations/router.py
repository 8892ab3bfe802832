"""Evaluations over HTTP: start one, list them (accuracy against the number of labels)."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.auth.deps import DB, CurrentUser
from app.evaluations import service
from app.evaluations.schemas import EvaluationCreate
from app.jobs.models import JobKind
from app.jobs.schemas import JobRead
from app.jobs.service import jobs_of_kind
from app.projects.deps import EngineerAccess, ProjectAccess

router = APIRouter(prefix="/api/projects", tags=["evaluations"])


@router.post("/{project_id}/evaluations", status_code=status.HTTP_202_ACCEPTED)
def start_evaluation(
    body: EvaluationCreate, access: EngineerAccess, user: CurrentUser, db: DB
) -> JobRead:
    """Train the target on every label and test it (engineers): 202 with the job."""
    job = service.start_evaluation(
        db,
        project=access.project,
        target=body.target,
        epochs=body.epochs,
        batch_size=body.batch_size,
        lr=body.lr,
        image_size=body.image_size,
        seed=body.seed,
        created_by=user.id,
    )
    return JobRead.model_validate(job)


@router.get("/{project_id}/evaluations")
def list_evaluations(access: ProjectAccess, db: DB) -> list[JobRead]:
    """The project's evaluations, newest first: each result holds labels and test accuracy."""
    jobs = jobs_of_kind(db, project_id=access.project.id, kind=JobKind.evaluate)
    return [JobRead.model_validate(j) for j in jobs]
