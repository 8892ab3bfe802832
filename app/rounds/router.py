"""Rounds over HTTP: start, list, read, the batch, cancel, and a stream of progress events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial

import anyio
from fastapi import APIRouter, Request, status
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from app import flows
from app.auth.deps import DB, CurrentUser, current_user
from app.errors import DomainError, NotFound
from app.fields import PathId
from app.http import error_responses
from app.projects.deps import EngineerAccess, ProjectAccess
from app.rounds import events, service
from app.rounds.deps import RoundAccess, RoundEngineerAccess
from app.rounds.schemas import RoundCreate, RoundEvent, RoundRead, SelectionEntry
from app.settings import get_settings

router = APIRouter(prefix="/api", tags=["rounds"])

# How often the events stream looks at the database: fast enough to feel live, one tiny query.
EVENTS_POLL_SECONDS = 0.5
# A comment line now and then keeps proxies from closing a quiet stream.
EVENTS_PING_SECONDS = 15
# How often a stream checks again that its caller may still listen: signed out, disabled,
# re-keyed or removed from the project, they stop receiving within this long.
EVENTS_REAUTH_SECONDS = 5.0


def _one(db: DB, round_id: int) -> RoundRead:
    rows = service.round_reads(db, round_id=round_id)
    if not rows:
        raise NotFound("no such round")
    return rows[0]


@router.post(
    "/projects/{project_id}/rounds",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(409),
)
def start_round(body: RoundCreate, access: EngineerAccess, user: CurrentUser, db: DB) -> RoundRead:
    """Start a round (engineers): 202 with the queued round; 409 while another is active or
    labelling, unless ``supersede`` closes the open batch first."""
    rnd = service.start_round(
        db,
        project=access.project,
        strategy=body.strategy,
        batch_size=body.batch_size,
        proxy=body.proxy,
        seed=body.seed,
        created_by=user.id,
        supersede=body.supersede,
    )
    return _one(db, rnd.id)


@router.get("/projects/{project_id}/rounds")
def list_rounds(access: ProjectAccess, db: DB) -> list[RoundRead]:
    """The project's rounds, newest first (members)."""
    return service.round_reads(db, project_id=access.project.id)


@router.get("/rounds/{round_id}")
def get_round(round_id: PathId, _: RoundAccess, db: DB) -> RoundRead:
    """One round with its stage, progress, metrics and error (members)."""
    return _one(db, round_id)


@router.get("/rounds/{round_id}/selection")
def get_selection(round_id: PathId, _: RoundAccess, db: DB) -> list[SelectionEntry]:
    """The round's batch in rank order with scores and suggestions (members)."""
    return service.selection(db, round_id=round_id)


@router.post("/rounds/{round_id}/cancel", responses=error_responses(409))
def cancel_round(round_id: PathId, _: RoundEngineerAccess, db: DB) -> RoundRead:
    """Cancel a round (engineers); a running one stops at its next epoch; 409 once finished."""
    flows.cancel_round(db, round_id=round_id)
    return _one(db, round_id)


def _check_events_access(request: Request, round_id: int, db: Session) -> int:
    """The caller's user id once they may see the round."""
    # Its own short read transaction: the request's session would otherwise stay open (and on
    # PostgreSQL hold a pooled connection) for as long as the client listens.
    user = current_user(request, db)
    service.round_project_access(db, round_id=round_id, user=user)
    return user.id


def _state(
    request: Request, round_id: int, db: Session, *, reauth: bool
) -> service.RoundState | None:
    """The round's state; None when it is gone or, on a re-check, the caller may not see it."""
    if reauth:
        try:
            service.round_project_access(db, round_id=round_id, user=current_user(request, db))
        except DomainError:
            return None
    return service.round_state(db, round_id=round_id)


@router.get(
    "/rounds/{round_id}/events", response_class=EventSourceResponse, responses=error_responses(429)
)
async def round_events(round_id: PathId, request: Request) -> EventSourceResponse:
    """Server-sent events ``{status, stage, progress}``: now, then each change, until it settles
    or the stream reaches its longest life (``SVP_EVENTS_MAX_SECONDS``; EventSource reconnects).
    429 past ``SVP_EVENTS_PER_USER`` open streams of the caller."""
    user_id = await events.poll(partial(_check_events_access, request, round_id))
    events.take_stream(user_id)
    ends_at = time.monotonic() + get_settings().events_max_seconds

    async def stream() -> AsyncIterator[ServerSentEvent]:
        last: service.RoundState | None = None
        checked = time.monotonic()
        while time.monotonic() < ends_at:
            reauth = time.monotonic() - checked >= EVENTS_REAUTH_SECONDS
            if reauth:
                checked = time.monotonic()
            state = await events.poll(partial(_state, request, round_id, reauth=reauth))
            if state is None:  # deleted with its project, or the caller's access ended
                return
            if state != last:
                event = RoundEvent(status=state.status, stage=state.stage, progress=state.progress)
                yield ServerSentEvent(data=event.model_dump_json())
                last = state
            if state.status in service.LEFT_RUNNING:
                return
            if await request.is_disconnected():
                return
            await anyio.sleep(EVENTS_POLL_SECONDS)

    try:
        return events.CountedEventSource(stream(), ping=EVENTS_PING_SECONDS, user_id=user_id)
    except BaseException:
        events.give_back_stream(user_id)
        raise
