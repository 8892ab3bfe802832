"""The labelling queue and labels: HTTP only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app import flows
from app.auth.deps import DB, CurrentUser
from app.fields import PathId
from app.http import error_responses
from app.labeling import service
from app.labeling.schemas import LabelCreate, LabelRead, QueueEntry, QueueSkip
from app.projects.deps import ProjectAccess

router = APIRouter(tags=["labeling"])


@router.post("/api/projects/{project_id}/queue/next")
def queue_next(
    access: ProjectAccess,
    user: CurrentUser,
    db: DB,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[QueueEntry]:
    """Lease up to ``n`` items of the current batch, the caller's own leases first."""
    return service.next_batch(db, access=access, user=user, n=n)


@router.post(
    "/api/projects/{project_id}/queue/skip",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(409),
)
def queue_skip(body: QueueSkip, access: ProjectAccess, user: CurrentUser, db: DB) -> None:
    """Give the caller's lease on an item back; 409 when the caller holds none."""
    service.skip(db, access=access, user=user, item_id=body.item_id)


@router.post(
    "/api/labels",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": LabelRead, "description": "a replayed key: the first label"},
        **error_responses(409),
    },
)
def create_label(body: LabelCreate, user: CurrentUser, db: DB, response: Response) -> LabelRead:
    """Store a label: 201 when new, 200 with the first label when the key is replayed."""
    label, created = flows.label_item(
        db, user=user, item_id=body.item_id, label=body.label, key=body.key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return label


@router.delete("/api/labels/{label_id}", status_code=status.HTTP_204_NO_CONTENT)
def undo_label(label_id: PathId, user: CurrentUser, db: DB) -> None:
    """Undo a label (its author, an engineer of the project, an admin)."""
    flows.undo_label(db, user=user, label_id=label_id)
