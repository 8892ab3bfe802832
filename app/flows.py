"""Steps that cross domains, called by the routers and runners; services never call this module.

- a label or an undo, and what it means for the rounds whose batch holds the item (a batch done
  completes its round, which may start the next one);
- a round's batch saved by its runner, complete at once when every item was labelled meanwhile;
- a round canceled, and its job with it;
- a round's job canceled or retried, and its round with it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow
from app.errors import Conflict
from app.jobs import service as jobs
from app.jobs.dispatch import contained
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind
from app.labeling import service as labeling
from app.labeling.schemas import LabelRead
from app.metrics import LABELS_SUBMITTED
from app.projects.models import Project
from app.projects.service import project_settings
from app.rawsql import Raw
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus, Selection

log = logging.getLogger(__name__)


# A new label and all it settles, in one statement on PostgreSQL: the label itself (a replay
# that won the unique key meanwhile leaves nothing inserted, and so nothing else written), the
# item's current label (the new label is its newest: the item's row lock, taken by the context
# read, orders labels and undos of one item), the batches that held it marked done, and every
# lease on it ended (whoever held it: an engineer may label over one). The sub-statements run
# in this order, each gated on the one before (a one-time filter on its output), because a
# concurrent queue/next locks selection rows before the lease row: the same order here cannot
# deadlock with it. Returned: the label's id, and the rounds in labelling whose batch it marked
# and in which the lateral probe (``untouched``) found no open item that no transaction is
# touching.
#
# That probe looks for an open item of the batch, other than this label's (the statement's
# snapshot still sees it open), that no transaction is touching right now. Rows locked by
# another label (or lease) in flight are skipped, so two annotators labelling the last two
# items at once both find nothing, and both go on to ``complete_if_done``; an item found is
# one somebody labels later, and that label will see this one committed (or locked, and skip
# it). A row labelled and committed since the snapshot is re-read as committed when locked,
# and drops out. FOR SHARE keeps the row found open until this commits. No round lock is
# taken: one per label serialised every label of a round on its row (about 265 labels/s at
# most with 50 annotators on 2 cores, against 369 without).
_STORE_LABEL_PG = """
    WITH ins AS (
        INSERT INTO labels (item_id, project_id, user_id, label, source, key, created_at)
        VALUES (:item_id, :project_id, :user_id, :label, 'human', :key, :now)
        ON CONFLICT (key) DO NOTHING RETURNING id
    ), settle AS (
        UPDATE items SET label = :label
        WHERE id = :item_id AND EXISTS (SELECT 1 FROM ins) RETURNING id
    ), mark AS (
        UPDATE selections SET labeled = true
        WHERE item_id = :item_id AND labeled = false AND EXISTS (SELECT 1 FROM settle)
        RETURNING round_id
    ), released AS (
        DELETE FROM leases
        WHERE item_id = :item_id AND (SELECT count(*) FROM mark) >= 0
          AND EXISTS (SELECT 1 FROM ins)
        RETURNING item_id
    )
    SELECT (SELECT id FROM ins),
        ARRAY(SELECT r.id FROM rounds r
              LEFT JOIN LATERAL (
                  SELECT s.id FROM selections s
                  WHERE s.round_id = r.id AND s.labeled = false AND s.item_id <> :item_id
                  ORDER BY s.labeled, s.rank LIMIT 1 FOR SHARE OF s SKIP LOCKED
              ) AS untouched ON true
              WHERE r.id IN (SELECT round_id FROM mark) AND r.status = 'labeling'
                AND (SELECT count(*) FROM released) >= 0 AND untouched.id IS NULL)"""
# SQLite serialises writers (BEGIN IMMEDIATE), so the same steps as plain statements.
_STORE_LABEL_SQLITE = (
    """INSERT INTO labels (item_id, project_id, user_id, label, source, key, created_at)
    VALUES (:item_id, :project_id, :user_id, :label, 'human', :key, :now)
    ON CONFLICT (key) DO NOTHING RETURNING id""",
    "UPDATE items SET label = :label WHERE id = :item_id",
    """UPDATE selections SET labeled = 1 WHERE item_id = :item_id AND labeled = 0
    RETURNING round_id""",
    "DELETE FROM leases WHERE item_id = :item_id",
)
# The first open item of a round's batch in rank order. The order pins the plan to
# ix_selections_round_labeled_rank, one index probe: a sequential scan "finds" an open row at
# once in a fresh batch but walks the whole batch when it is nearly done, and as NOT EXISTS the
# planner chose an anti-join over exactly that scan.
_FIRST_OPEN = """SELECT s.id FROM selections s WHERE s.round_id = :round_id
    AND s.labeled = false ORDER BY s.labeled, s.rank LIMIT 1"""


def label_item(
    db: Session, *, user: User, item_id: int, label: str, key: str
) -> tuple[LabelRead, bool, list[int]]:
    """Store a label and mark the batches that hold the item; True when the label is new.

    The hot path of the service: two statements and the commit on PostgreSQL (the context
    with the item's lock; the write with its probe for an untouched open item), on the
    driver's cursor. On SQLite a batch this label finished completes its round here. On
    PostgreSQL the rounds it may have finished come back, for ``complete_if_done`` once this
    has committed.
    """
    raw = Raw(db)
    ctx, replayed = labeling.check_label(db, raw, user=user, item_id=item_id, label=label, key=key)
    if replayed is not None:
        return replayed, False, []
    now = utcnow()
    params = {
        "item_id": item_id,
        "project_id": ctx.project_id,
        "user_id": user.id,
        "label": label,
        "key": key,
        "now": now,
    }
    if raw.postgres:
        stored = raw.first(_STORE_LABEL_PG, params)
        label_id, round_ids = (stored[0], sorted(stored[1])) if stored else (None, [])
    else:
        inserted = raw.first(_STORE_LABEL_SQLITE[0], params)
        label_id, round_ids = (inserted[0] if inserted else None), []
        if label_id is not None:
            raw.rows(_STORE_LABEL_SQLITE[1], params)
            round_ids = sorted({row[0] for row in raw.rows(_STORE_LABEL_SQLITE[2], params)})
            raw.rows(_STORE_LABEL_SQLITE[3], params)
    if label_id is None:
        # A concurrent request with the same key won the unique index (PostgreSQL waited for
        # it to commit): this one answers with the winner's label.
        existing = labeling.replayed_label(db, key=key, user=user)
        if existing is None:
            raise Conflict("this key is being used by another request; try again")
        return existing, False, []
    LABELS_SUBMITTED.inc()
    if raw.postgres:
        maybe_done = round_ids
    else:
        # SQLite serialises writers, so the plain probe is exact inside this transaction.
        maybe_done = []
        for round_id in round_ids:
            if _batch_done(db, round_id=round_id):
                rnd = db.get(Round, round_id)
                if rnd is not None and rnd.status == RoundStatus.labeling:
                    _complete(db, rnd=rnd)
    read = LabelRead(id=label_id, item_id=item_id, label=label, user=user.username, created_at=now)
    return read, True, maybe_done


def complete_if_done(db: Session, *, round_id: int) -> bool:
    """Complete a round in labelling whose batch has no open item left; True if it did.

    Exact whatever runs at the same time: the round's row lock makes completers take turns,
    and the probe waits for every label in flight on an open item (FOR SHARE without SKIP
    LOCKED), then re-reads that row as committed. Run after a label's transaction commits
    (``label_item`` says which rounds), and by ``queue/next`` when it finds nothing to lease,
    which also repairs a round whose last label committed but whose completion never ran.
    """
    rnd = db.scalar(select(Round).where(Round.id == round_id).with_for_update())
    if rnd is None or rnd.status != RoundStatus.labeling:
        return False
    if not _batch_done(db, round_id=round_id, wait_for_labels=True):
        return False
    _complete(db, rnd=rnd)
    return True


def complete_current_round(db: Session, *, project_id: int) -> bool:
    """``complete_if_done`` for the project's newest round in labelling, if it has one."""
    round_id = db.scalar(
        select(Round.id)
        .where(Round.project_id == project_id, Round.status == RoundStatus.labeling)
        .order_by(Round.number.desc())
        .limit(1)
    )
    return round_id is not None and complete_if_done(db, round_id=round_id)


def undo_label(db: Session, *, user: User, label_id: int) -> None:
    """Undo a label, and reopen what it had completed (idempotent)."""
    undone = labeling.undo_label(db, user=user, label_id=label_id)
    if undone is not None:
        item_id, label = undone
        after_undo(db, item_id=item_id, label=label)


def cancel_round(db: Session, *, rnd: Round) -> Round:
    """Cancel a round and its job: queued or labelling at once, running at its next report."""
    rounds.check_cancelable(rnd)
    job = db.get(Job, rnd.job_id) if rnd.job_id is not None else None
    live_job = job is not None and job.status not in FINISHED_JOB_STATUSES
    if job is not None and live_job:
        jobs.cancel_job(db, job=job)
    if rnd.status == RoundStatus.running and live_job:
        # The runner sees the request at its next progress report (each epoch) and ends the
        # round as canceled itself.
        return rnd
    return rounds.mark_canceled(db, rnd=rnd)


def cancel_job(db: Session, *, job: Job) -> Job:
    """Cancel a job; a round whose queued job is canceled is canceled with it."""
    jobs.cancel_job(db, job=job)
    if job.kind == JobKind.round and job.project_id is not None:
        rounds.follow_jobs(db, project_id=job.project_id)
    return job


def retry_job(db: Session, *, job: Job) -> Job:
    """Queue a failed or canceled job again; a round's job takes its round back to queued."""
    jobs.check_retryable(job)
    if job.kind == JobKind.round:
        rounds.requeue(db, job_id=job.id)
    return jobs.retry_job(db, job=job)


def _rounds_holding(db: Session, *, item_id: int) -> list[Round]:
    """Rounds in labelling or completed whose batch holds the item, locked until the end.

    Both statuses, not only completed: a round whose completion is running right now (after
    its last label's commit, see ``complete_if_done``) is still in labelling in this
    statement's snapshot; the lock waits for that completion, and the row comes back as it
    committed. Taken before the undo reopens the item's selection rows, which that completion's
    probe waits on: the other order could deadlock with it.
    """
    return list(
        db.scalars(
            select(Round)
            .join(Selection, Selection.round_id == Round.id)
            .where(
                Selection.item_id == item_id,
                Round.status.in_([RoundStatus.labeling, RoundStatus.completed]),
            )
            .order_by(Round.id)
            .with_for_update(of=Round)
        )
    )


def _batch_done(db: Session, *, round_id: int, wait_for_labels: bool = False) -> bool:
    """Whether every item of the round's batch has a label (one index probe).

    ``wait_for_labels`` (PostgreSQL): the probe locks the open row it finds FOR SHARE, so it
    waits for a label in flight on that item and re-reads the row as committed.
    """
    raw = Raw(db)
    probe = _FIRST_OPEN + (" FOR SHARE OF s" if wait_for_labels and raw.postgres else "")
    return raw.first(probe, {"round_id": round_id}) is None


def save_batch(
    db: Session, *, round_id: int, entries: list[dict[str, Any]], metrics: dict[str, Any]
) -> bool:
    """The runner's last step: write the batch, and complete the round if nothing is open.

    Items labelled while the proxy trained are saved as labelled; a batch that is all such
    items completes its round at once instead of waiting for labels that will never come.
    Returns False when the round was canceled meanwhile (nothing is written).
    """
    if not rounds.save_selection(db, round_id=round_id, entries=entries, metrics=metrics):
        return False
    rnd = db.get(Round, round_id)
    if rnd is not None and rnd.status == RoundStatus.labeling and _batch_done(db, round_id=rnd.id):
        _complete(db, rnd=rnd)
    return True


def _complete(db: Session, *, rnd: Round) -> None:
    """A round whose batch is fully labelled: completed, its suggestions scored, maybe a next."""
    rnd.status = RoundStatus.completed
    rnd.finished_at = utcnow()
    db.flush()
    log.info("round %s of project %s completed", rnd.number, rnd.project_id)
    rounds.record_suggestion_accuracy(db, rnd=rnd)
    on_round_completed(db, rnd=rnd)


def on_round_completed(db: Session, *, rnd: Round) -> None:
    """Hook called in the label's transaction when a round's batch is fully labelled.

    With the project's ``auto_next_round`` on, the next round starts with the same strategy,
    batch size and proxy; its job is sent only after this transaction commits.
    """
    # Nothing here may fail the label that completed the batch: stored settings that no longer
    # validate, or a next round that cannot start, are logged and the label still commits. The
    # savepoint undoes any half-written round, and its job is not sent.
    try:
        with contained(db), db.begin_nested():
            project = db.get(Project, rnd.project_id)
            if project is not None and project_settings(project).auto_next_round:
                rounds.start_next_round(db, finished=rnd)
    except Exception:
        log.exception(
            "round %s of project %s: the automatic next round failed; the label stands",
            rnd.number,
            rnd.project_id,
        )


def after_undo(db: Session, *, item_id: int, label: str | None) -> None:
    """After an undo left the item without a label: reopen it, and the round it had completed.

    Only a completed round that is still the project's newest goes back to labelling: once a
    later round exists, the older batch stays closed and the item returns to the pool.
    """
    if label is not None:
        return
    held = _rounds_holding(db, item_id=item_id)
    db.execute(update(Selection).where(Selection.item_id == item_id).values(labeled=False))
    for rnd in held:
        if rnd.status != RoundStatus.completed:
            continue
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
