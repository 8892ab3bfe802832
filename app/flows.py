"""Steps that cross domains: what a label or an undo means for the rounds that hold the item."""

from __future__ import annotations

import logging

from sqlalchemy import false, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.items.models import Item
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds.models import Round, RoundStatus, Selection
from app.rounds.service import record_suggestion_accuracy, start_next_round

log = logging.getLogger(__name__)


def _rounds_holding(db: Session, *, item_id: int, status: str) -> list[Round]:
    """Rounds in ``status`` whose batch holds the item, locked until the transaction ends.

    The row lock (PostgreSQL; SQLite's write transaction already serialises) makes the
    batch-done check see every concurrent label of the round: without it, two annotators
    labelling the last two items at once would each see the other's item still open.
    """
    return list(
        db.scalars(
            select(Round)
            .join(Selection, Selection.round_id == Round.id)
            .where(Selection.item_id == item_id, Round.status == status)
            .order_by(Round.id)
            .with_for_update(of=Round)
        )
    )


def _batch_done(db: Session, *, round_id: int) -> bool:
    """Whether every item of the round's batch has a label (one index probe)."""
    open_item = db.scalar(
        select(Selection.id)
        .where(Selection.round_id == round_id, Selection.labeled == false())
        # The order pins the plan to ix_selections_round_labeled_rank: a seq scan "finds" an
        # open row at once in a fresh batch, but walks the whole batch when it is nearly done.
        .order_by(Selection.labeled, Selection.rank)
        .limit(1)
    )
    return open_item is None


def after_label(db: Session, *, item: Item) -> None:
    """Mark the item done in every batch that holds it; complete a round whose batch is done."""
    db.execute(
        update(Selection)
        .where(Selection.item_id == item.id, Selection.labeled == false())
        .values(labeled=True)
    )
    for rnd in _rounds_holding(db, item_id=item.id, status=RoundStatus.labeling):
        if _batch_done(db, round_id=rnd.id):
            rnd.status = RoundStatus.completed
            rnd.finished_at = utcnow()
            db.flush()
            log.info("round %s of project %s completed", rnd.number, rnd.project_id)
            record_suggestion_accuracy(db, rnd=rnd)
            on_round_completed(db, rnd=rnd)


def on_round_completed(db: Session, *, rnd: Round) -> None:
    """Hook called in the label's transaction when a round's batch is fully labelled.

    With the project's ``auto_next_round`` on, the next round starts with the same strategy,
    batch size and proxy; its job is sent only after this transaction commits.
    """
    project = db.get(Project, rnd.project_id)
    if project is not None and project_settings(project).auto_next_round:
        start_next_round(db, finished=rnd)


def after_undo(db: Session, *, item: Item) -> None:
    """After an undo left the item without a label: reopen it, and the round it had completed.

    Only a completed round that is still the project's newest goes back to labelling: once a
    later round exists, the older batch stays closed and the item returns to the pool.
    """
    if item.label is not None:
        return
    db.execute(update(Selection).where(Selection.item_id == item.id).values(labeled=False))
    for rnd in _rounds_holding(db, item_id=item.id, status=RoundStatus.completed):
        newest = db.scalar(
            select(Round.id)
            .where(Round.project_id == rnd.project_id)
            .order_by(Round.number.desc())
            .limit(1)
        )
        if newest == rnd.id:
            rnd.status = RoundStatus.labeling
            rnd.finished_at = None
            db.flush()
            log.info("round %s of project %s reopened by an undo", rnd.number, rnd.project_id)
