"""Embeddings over HTTP: start an embedding job for a project, list them."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.auth.deps import DB, CurrentUser
from app.embeddings import service
from app.embeddings.schemas import EmbeddingCreate
from app.jobs.models import JobKind
from app.jobs.schemas import JobRead
from app.jobs.service import jobs_of_kind
from app.projects.deps import EngineerAccess, ProjectAccess

router = APIRouter(prefix="/api/projects", tags=["embeddings"])


@router.post("/{project_id}/embeddings", status_code=status.HTTP_202_ACCEPTED)
def start_embedding(
    body: EmbeddingCreate, access: EngineerAccess, user: CurrentUser, db: DB
) -> JobRead:
    """Embed the project's images with a backbone (engineers): 202 with the job, or with the
    same job while it is still queued."""
    job = service.start_embedding(
        db,
        project=access.project,
        backbone=body.backbone,
        image_size=body.image_size,
        created_by=user.id,
    )
    return JobRead.model_validate(job)


@router.get("/{project_id}/embeddings")
def list_embeddings(access: ProjectAccess, db: DB) -> list[JobRead]:
    """The project's embedding jobs with their results, newest first (members)."""
    jobs = jobs_of_kind(db, project_id=access.project.id, kind=JobKind.embed)
    return [JobRead.model_validate(j) for j in jobs]
