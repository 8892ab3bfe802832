"""The labelling queue and labels: HTTP only."""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app import flows
from app.auth.deps import DB, CurrentUser, LoopUser
from app.db import run_in_unit_of_work
from app.fields import PathId
from app.http import error_responses
from app.labeling import service
from app.labeling.schemas import LabelCreate, LabelRead, QueueEntry, QueueSkip
from app.projects.deps import ProjectAccess
from app.rounds import service as rounds

router = APIRouter(tags=["labeling"])
log = logging.getLogger(__name__)


async def _complete_rounds(round_ids: list[int]) -> None:
    """Complete the rounds a unit of work may have finished, once it has committed.

    Each in a transaction of its own, after the request's: the completion's probe waits for
    labels in flight, this request's included, and a lease's transaction commits without
    waiting for the disk. What it does not manage (the database gone meanwhile) is logged, not
    answered: the label stands, and the next ``queue/next`` that finds nothing to lease
    completes the round.
    """
    for round_id in round_ids:
        try:
            await run_in_unit_of_work(partial(rounds.complete_round, round_id=round_id), write=True)
        except Exception:
            log.exception("completing round %s failed; queue/next will retry it", round_id)


# The hot routes are async and hand their whole unit of work to one thread (see
# ``run_in_unit_of_work``); the caller comes from the credential cache without a hop.


@router.post("/api/projects/{project_id}/queue/next")
async def queue_next(
    project_id: PathId,
    user: LoopUser,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[QueueEntry]:
    """Lease up to ``n`` items of the current batch, the caller's own leases first."""
    queued = await run_in_unit_of_work(
        lambda db: service.next_batch(db, project_id=project_id, user=user, n=n), write=True
    )
    await _complete_rounds(queued.maybe_done)
    return queued.entries


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
async def create_label(body: LabelCreate, user: LoopUser, response: Response) -> LabelRead:
    """Store a label: 201 when new, 200 with the first label when the key is replayed."""
    labelled = await run_in_unit_of_work(
        lambda db: service.store_label(
            db, user=user, item_id=body.item_id, label=body.label, key=body.key
        ),
        write=True,
    )
    await _complete_rounds(labelled.maybe_done)
    if not labelled.created:
        response.status_code = status.HTTP_200_OK
    return labelled.label


@router.delete("/api/labels/{label_id}", status_code=status.HTTP_204_NO_CONTENT)
async def undo_label(label_id: PathId, user: LoopUser) -> None:
    """Undo a label (its author, an engineer of the project, an admin)."""
    await run_in_unit_of_work(
        lambda db: flows.undo_label(db, user=user, label_id=label_id), write=True
    )
