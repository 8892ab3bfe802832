"""Rounds: start, read, cancel, complete, reopen, and the database steps a round's runner takes.

The runner itself (worker/rounds.py) does the torch work. Every write to a round's status goes
through the functions here, so the rules of a round's life live in one file; a round completes
through ``complete_round`` alone, whoever asks (a label, an empty queue, the runner's saved
batch, a new round superseding an open batch). The one exception to "every write to selections
is here" is whether an item of a batch is labelled: ``app.labeling.service`` keeps that in step
with the item's label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, text, true
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow
from app.embeddings.schemas import embedding_size
from app.errors import Conflict, Invalid, NotFound
from app.items.models import TEXT_PREVIEW_CHARS, Item, Split
from app.items.schemas import image_url
from app.jobs.dispatch import contained
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind, JobStatus
from app.jobs.service import create_job, draw_seed
from app.labeling import service as labeling
from app.labeling.models import Lease
from app.projects import kinds
from app.projects.models import Project, ProjectKind
from app.projects.schemas import ProjectSettings
from app.projects.service import Access, get_access, lock_project, project_settings
from app.rawsql import Raw
from app.rounds import sql
from app.rounds.models import ACTIVE_ROUND_STATUSES, Round, RoundStatus, Selection
from app.rounds.schemas import ProxyConfig, RoundRead, SelectionEntry, Suggestion

log = logging.getLogger(__name__)

FINISHED_ROUND_STATUSES = (RoundStatus.completed, RoundStatus.failed, RoundStatus.canceled)
# A round in one of these has left running: the events stream closes after showing it.
LEFT_RUNNING = (RoundStatus.labeling, *FINISHED_ROUND_STATUSES)


def resolve_proxy(
    settings: ProjectSettings,
    proxy: ProxyConfig | None,
    *,
    default_arch: str | None = None,
    kind: str = ProjectKind.image,
    target: bool = False,
) -> dict[str, Any]:
    """The full proxy configuration: what the caller gave, the project's settings for the rest.

    A ``linear`` proxy is a head on a backbone's embeddings: its ``image_size`` is the side the
    backbone embeds at (the backbone's own by default), and it has no epochs or learning rate.
    ``fasttext`` (text) has its dimension, epochs, learning rate and word n-gram length.
    An evaluation's target (``target``) is resolved the same way, with the project's default
    target. Every name is checked against the project's kind (422 when it does not fit).
    """
    given = proxy or ProxyConfig()
    arch = given.arch or default_arch or settings.default_proxy
    backbone = given.backbone or settings.backbone
    (kinds.check_target if target else kinds.check_proxy)(kind, arch)
    kinds.check_backbone(kind, backbone)
    if arch != "fasttext" and (given.dim is not None or given.word_ngrams is not None):
        raise Invalid("dim and word_ngrams are settings of the fasttext proxy only")
    if arch == "linear":
        size = embedding_size(backbone, given.image_size)
        return {"arch": arch, "backbone": backbone, "image_size": size}
    if arch == "fasttext":
        return {
            "arch": arch,
            "dim": given.dim or settings.fasttext_dim,
            "epochs": given.epochs or settings.fasttext_epochs,
            "lr": given.lr if given.lr is not None else settings.proxy_lr,
            "word_ngrams": given.word_ngrams or settings.fasttext_word_ngrams,
            # Clustering strategies (typiclust, auto) and their cold starts use embeddings.
            "backbone": backbone,
        }
    return {
        "arch": arch,
        "epochs": given.epochs or settings.proxy_epochs,
        "batch_size": given.batch_size or settings.proxy_batch_size,
        "lr": given.lr if given.lr is not None else settings.proxy_lr,
        "image_size": given.image_size or settings.image_size,
        # Clustering strategies (typiclust, auto) and their cold starts work on embeddings.
        "backbone": backbone,
    }


def in_open_batch(*, negate: bool = False) -> Any:
    """A filter on ``Item``: the item is (``negate``: is not) in the batch of a round of its
    project being labelled; the same fact the label context reads (``app.rounds.sql``)."""
    fact = sql.in_open_batch("items.id", "items.project_id")
    return text(f"NOT {fact}" if negate else fact).bindparams(**sql.STATUS)


def open_batch_items(project_id: int) -> Any:
    """A subquery: item ids in the batch of a round of the project that is still labelling."""
    return (
        select(Item.id)
        .where(Item.project_id == project_id, in_open_batch())
        .correlate(None)
        .scalar_subquery()
    )


def labelling_round_id(db: Session, *, project_id: int) -> int | None:
    """The project's newest round in labelling (the queue's), as ``queue/next`` finds it."""
    query = text("SELECT " + sql.newest_labelling_round(":project_id"))
    found: int | None = db.scalar(query.bindparams(project_id=project_id, **sql.STATUS))
    return found


def count_candidates(db: Session, *, project_id: int) -> int:
    """Unlabelled pool items a new round may select: not already in a batch being labelled."""
    return (
        db.scalar(
            select(func.count())
            .select_from(Item)
            .where(
                Item.project_id == project_id,
                Item.split == Split.pool,
                Item.label.is_(None),
                in_open_batch(negate=True),
            )
        )
        or 0
    )


def start_round(
    db: Session,
    *,
    project: Project,
    strategy: str,
    batch_size: int,
    proxy: ProxyConfig | None,
    seed: int | None,
    created_by: int | None,
    supersede: bool = False,
) -> Round:
    """Write a queued round and its job; the job is sent once the transaction commits.

    A round still being labelled blocks a new one (its open items would be stranded), unless
    ``supersede`` closes that batch first: its open items go back to the pool.
    """
    lock_project(db, project_id=project.id)
    follow_jobs(db, project_id=project.id)
    active = db.scalar(
        select(Round.number).where(
            Round.project_id == project.id, Round.status.in_(ACTIVE_ROUND_STATUSES)
        )
    )
    if active is not None:
        raise Conflict(f"round {active} of this project is still queued or running")
    labelling = list(
        db.scalars(
            select(Round).where(
                Round.project_id == project.id, Round.status == RoundStatus.labeling
            )
        )
    )
    if labelling and not supersede:
        raise Conflict(
            f"round {labelling[0].number} of this project is still being labelled; "
            'finish its batch, cancel it, or send {"supersede": true} to close it'
        )
    for open_round in labelling:
        complete_round(db, round_id=open_round.id, supersede=True)
    if batch_size < 1:
        raise Invalid("batch_size must be at least 1")
    candidates = count_candidates(db, project_id=project.id)
    if candidates == 0:
        raise Invalid("the pool has no unlabelled items left to select from")
    if batch_size > candidates:
        raise Invalid(
            f"batch_size {batch_size} is larger than the {candidates} unlabelled pool items "
            "that are not already in a batch being labelled"
        )
    number = (
        db.scalar(select(func.max(Round.number)).where(Round.project_id == project.id)) or 0
    ) + 1
    rnd = Round(
        project_id=project.id,
        number=number,
        status=RoundStatus.queued,
        strategy=strategy,
        batch_size=batch_size,
        proxy=resolve_proxy(project_settings(project), proxy, kind=project.kind),
        seed=draw_seed(seed),
        metrics={},
        created_by=created_by,
    )
    db.add(rnd)
    db.flush()
    job = create_job(
        db,
        kind=JobKind.round,
        project_id=project.id,
        params={"round_id": rnd.id},
        created_by=created_by,
    )
    rnd.job_id = job.id
    db.flush()
    return rnd


def batch_done(db: Session, *, round_id: int, wait_for_labels: bool = False) -> bool:
    """Whether every item of the round's batch has a label (one index probe).

    ``wait_for_labels`` (PostgreSQL): the probe locks the open row it finds FOR SHARE, so it
    waits for a label in flight on that item and re-reads the row as committed.
    """
    raw = Raw(db)
    probe = sql.first_open(":round_id") + (
        " FOR SHARE OF s" if wait_for_labels and raw.postgres else ""
    )
    return raw.fetch_one(probe, {"round_id": round_id}, sql.OpenItem) is None


def complete_round(db: Session, *, round_id: int, supersede: bool = False) -> bool:
    """Complete a round in labelling whose batch is done, or, superseding, whatever is open.

    The one way a round becomes ``completed``: after a label's commit (the rounds it may have
    finished), at an empty queue (a completion that never ran), when the runner saves a batch
    labelled meanwhile, and when a new round supersedes the open batch (its leases dropped,
    its open items back to the pool, ``metrics.superseded``). True if it completed the round.

    Exact whatever runs at the same time: the project's row lock, then the round's, make
    completers take turns (in the order round starts and undos take them), and the probe waits
    for every label in flight on an open item (FOR SHARE without SKIP LOCKED), then re-reads
    that row as committed. A batch fully labelled may start the next round (``auto_next_round``).
    """
    rnd = lock_round(db, round_id=round_id)
    if rnd is None or rnd.status != RoundStatus.labeling:
        return False
    if supersede:
        db.execute(delete(Lease).where(Lease.round_id == rnd.id))
        # Closed before every item had a label: the learning curve and suggestion accuracy say so.
        rnd.metrics = {**rnd.metrics, "superseded": True}
    elif not batch_done(db, round_id=round_id, wait_for_labels=True):
        return False
    rnd.status = RoundStatus.completed
    rnd.finished_at = utcnow()
    db.flush()
    log.info("round %s of project %s completed", rnd.number, rnd.project_id)
    record_suggestion_accuracy(db, rnd=rnd)
    if not supersede:
        _start_next_if_asked(db, rnd=rnd)
    return True


def lock_round(db: Session, *, round_id: int) -> Round | None:
    """The round, its project's row locked first and then its own (PostgreSQL), read as
    committed once the locks are granted: what changes a round's status decides on this."""
    project_id = db.scalar(select(Round.project_id).where(Round.id == round_id))
    if project_id is None:
        return None
    lock_project(db, project_id=project_id)
    return db.scalar(select(Round).where(Round.id == round_id).with_for_update())


def _start_next_if_asked(db: Session, *, rnd: Round) -> None:
    """With the project's ``auto_next_round`` on, start the next round after ``rnd``.

    Same strategy, batch size and proxy; its job is sent only after this transaction commits.
    """
    # Nothing here may fail the completion: stored settings that no longer validate, or a next
    # round that cannot start, are logged and the round still completes. The savepoint undoes
    # any half-written round, and its job is not sent.
    try:
        with contained(db), db.begin_nested():
            project = db.get(Project, rnd.project_id)
            if project is not None and project_settings(project).auto_next_round:
                start_next_round(db, finished=rnd)
    except Exception:
        log.exception(
            "round %s of project %s: the automatic next round failed; the round stays completed",
            rnd.number,
            rnd.project_id,
        )


def hold_rounds_of_item(db: Session, *, project_id: int, item_id: int) -> list[Round]:
    """Before an undo reopens an item: the rounds whose batch holds it, locked until the end.

    The project's row first, as a round start takes it: an undo and a new round of the same
    project take turns, so the undo sees the new round (and reopens nothing older), or the new
    round sees the reopened one (and refuses, or supersedes it). Then the rounds in labelling
    or completed that hold the item: a round whose completion is running right now is still in
    labelling in this statement's snapshot; the lock waits for that completion, and the row
    comes back as it committed. Taken before the undo reopens the item's selection rows, which
    that completion's probe waits on: the other order could deadlock with it.
    """
    lock_project(db, project_id=project_id)
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


def reopen_rounds(db: Session, *, held: list[Round]) -> None:
    """After an undo left an item of their batches unlabelled: reopen the completed ones.

    Only a completed round that is still the project's newest goes back to labelling: once a
    later round exists, the older batch stays closed and the item returns to the pool.
    """
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


def start_next_round(db: Session, *, finished: Round) -> Round | None:
    """Start the round after ``finished`` with its strategy, batch size and proxy, if possible.

    Called from a label submission: it never raises for a pool that ran dry or a round that is
    already running, so the label that completed the batch is still saved.
    """
    project = db.get(Project, finished.project_id)
    if project is None:
        return None
    candidates = count_candidates(db, project_id=project.id)
    if candidates == 0:
        log.info("project %s: pool exhausted, no next round", project.id)
        return None
    try:
        return start_round(
            db,
            project=project,
            strategy=finished.strategy,
            batch_size=min(finished.batch_size, candidates),
            proxy=ProxyConfig.model_validate(
                {k: v for k, v in finished.proxy.items() if k in ProxyConfig.model_fields}
            ),
            seed=(finished.seed + 1) % 2**31,
            created_by=finished.created_by,
        )
    except (Conflict, Invalid) as exc:
        log.info("project %s: no automatic next round: %s", project.id, exc.detail)
        return None


def out_of_step(
    db: Session, *, project_id: int | None = None, limit: int | None = None
) -> list[tuple[Round, Job | None]]:
    """Queued or running rounds whose job has finished or vanished, with that job."""
    query = (
        select(Round, Job)
        .outerjoin(Job, Job.id == Round.job_id)
        .where(Round.status.in_(ACTIVE_ROUND_STATUSES))
        .where((Job.id.is_(None)) | (Job.status.in_(FINISHED_JOB_STATUSES)))
        .order_by(Round.id)
        .limit(limit)
    )
    if project_id is not None:
        query = query.where(Round.project_id == project_id)
    return list(db.execute(query).tuples())


def follow_jobs(db: Session, *, project_id: int | None = None) -> list[Round]:
    """Bring queued or running rounds whose job has finished (or vanished) in line with it.

    The runner keeps a round in step with its job itself; this catches what it cannot: a job
    canceled before it started, or failed by the reconciler after its worker died.
    """
    fixed = []
    for rnd, job in out_of_step(db, project_id=project_id):
        if job is not None and job.status == JobStatus.canceled:
            rnd.status = RoundStatus.canceled
            rnd.error = job.error or "canceled"
        else:
            rnd.status = RoundStatus.failed
            if job is None:
                rnd.error = "the round's job no longer exists"
            else:
                rnd.error = job.error or f"its job {job.status} without selecting a batch"
        rnd.finished_at = utcnow()
        fixed.append(rnd)
    if fixed:
        db.flush()
    return fixed


def requeue(db: Session, *, job_id: int) -> None:
    """Put the round of a retried round job back to queued (409 if another round is active)."""
    rnd = db.scalar(select(Round).where(Round.job_id == job_id))
    if rnd is None:
        return
    other = db.scalar(
        select(Round.id).where(
            Round.project_id == rnd.project_id,
            Round.id != rnd.id,
            Round.status.in_(ACTIVE_ROUND_STATUSES),
        )
    )
    if other is not None:
        raise Conflict(f"round {other} of the project is active; retry this one after it")
    if rnd.status not in (RoundStatus.failed, RoundStatus.canceled):
        raise Conflict(f"the job's round is {rnd.status}; only a failed or canceled one is retried")
    rnd.status = RoundStatus.queued
    rnd.error = None
    rnd.finished_at = None


def round_project_access(
    db: Session, *, round_id: int, user: User, engineer: bool = False
) -> Access:
    """The round's project access, or 404 when the caller cannot see the round."""
    project_id = db.scalar(select(Round.project_id).where(Round.id == round_id))
    if project_id is None:
        raise NotFound("no such round")
    try:
        return get_access(db, project_id=project_id, user=user, engineer=engineer)
    except NotFound:
        raise NotFound("no such round") from None


def read_round(rnd: Round, job: Job | None, *, labeled: int) -> RoundRead:
    """The round's JSON, with stage and progress from its job and how much of its batch is done."""
    return RoundRead(
        id=rnd.id,
        project_id=rnd.project_id,
        number=rnd.number,
        status=rnd.status,
        stage=job.stage if job else None,
        progress=job.progress if job else 0.0,
        strategy=rnd.strategy,
        batch_size=rnd.batch_size,
        proxy=rnd.proxy,
        seed=rnd.seed,
        labeled=labeled,
        metrics=rnd.metrics,
        error=rnd.error,
        job_id=rnd.job_id,
        created_at=rnd.created_at,
        started_at=rnd.started_at,
        finished_at=rnd.finished_at,
    )


def round_reads(
    db: Session, *, project_id: int | None = None, round_id: int | None = None
) -> list[RoundRead]:
    """Rounds with their jobs in one query: one round by id, or a project's, newest first."""
    # Items of the batch with a live label: an index-only count on
    # ix_selections_round_labeled_rank, kept in step with labels by app.labeling.sql.
    labeled = (
        select(func.count())
        .where(Selection.round_id == Round.id, Selection.labeled == true())
        .scalar_subquery()
    )
    query = select(Round, Job, labeled).outerjoin(Job, Job.id == Round.job_id)
    if round_id is not None:
        query = query.where(Round.id == round_id)
    if project_id is not None:
        query = query.where(Round.project_id == project_id)
    rows = db.execute(query.order_by(Round.number.desc())).tuples()
    return [read_round(r, j, labeled=n) for r, j, n in rows]


def selection(db: Session, *, round_id: int) -> list[SelectionEntry]:
    """A round's batch in rank order, with scores and the proxy's suggestions (and a text
    item's first characters, cut in the query)."""
    rows = db.execute(
        select(
            Selection,
            Item.name,
            func.substr(Item.text, 1, TEXT_PREVIEW_CHARS),
            Item.text_chars,
        )
        .join(Item, Item.id == Selection.item_id)
        .where(Selection.round_id == round_id)
        .order_by(Selection.rank)
    ).tuples()
    return [
        SelectionEntry(
            item_id=s.item_id,
            name=name,
            rank=s.rank,
            score=s.score,
            image_url=None if chars is not None else image_url(s.item_id),
            suggestion=Suggestion(label=s.suggested_label, confidence=s.suggested_prob),
            text=preview,
            text_chars=chars,
        )
        for s, name, preview, chars in rows
    ]


def check_cancelable(rnd: Round) -> None:
    """Conflict once the round has finished."""
    if rnd.status in FINISHED_ROUND_STATUSES:
        raise Conflict(f"the round is already {rnd.status}")


def mark_canceled(db: Session, *, rnd: Round) -> Round:
    """Close a round as canceled now (its job, if any, is canceled by ``app.flows``)."""
    check_cancelable(rnd)
    if rnd.status == RoundStatus.labeling:
        # Held items go back: nobody labels a batch that no longer exists.
        db.execute(delete(Lease).where(Lease.round_id == rnd.id))
    rnd.status = RoundStatus.canceled
    rnd.error = "canceled"
    rnd.finished_at = utcnow()
    db.flush()
    return rnd


@dataclass(frozen=True)
class RoundState:
    """What the events stream reports."""

    status: str
    stage: str | None
    progress: float


def round_state(db: Session, *, round_id: int) -> RoundState | None:
    """The round's status with its job's stage and progress, in one small query."""
    row = db.execute(
        select(Round.status, Job.stage, Job.progress)
        .outerjoin(Job, Job.id == Round.job_id)
        .where(Round.id == round_id)
    ).first()
    if row is None:
        return None
    status, stage, progress = row
    return RoundState(status=status, stage=stage, progress=float(progress or 0.0))


# ---- steps of the runner (worker/rounds.py), each inside the runner's own short transaction ----


def begin_running(db: Session, *, round_id: int) -> Round | None:
    """Mark the round running; None when there is nothing to do (gone, canceled, already done)."""
    rnd = db.get(Round, round_id)
    if rnd is None or rnd.status in (RoundStatus.canceled, RoundStatus.failed):
        return None
    if rnd.status in (RoundStatus.labeling, RoundStatus.completed):
        has_batch = db.scalar(select(exists().where(Selection.round_id == round_id)))
        if has_batch:
            return None
    rnd.status = RoundStatus.running
    rnd.error = None
    rnd.started_at = rnd.started_at or utcnow()
    db.flush()
    return rnd


def save_batch(
    db: Session,
    *,
    round_id: int,
    entries: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> bool:
    """The runner's last step: write the batch and move the round to labelling.

    ``entries``: ``{item_id, rank, score, suggested_label, suggested_prob}`` each. Items
    labelled while the proxy trained are saved as labelled; a batch that is all such items
    completes its round at once instead of waiting for labels that will never come. Returns
    False and writes nothing when the round was canceled meanwhile.
    """
    # The project's lock, then the round's, before the items': the order every completer takes.
    rnd = lock_round(db, round_id=round_id)
    if rnd is None or rnd.status != RoundStatus.running:
        return False
    item_ids = [e["item_id"] for e in entries]
    # An item labelled while the proxy trained must be saved as labelled, or the batch never
    # completes. Locking the batch's item rows first (PostgreSQL) waits for a label being
    # written to one of them, so its label is seen below; a label that comes later waits for
    # this transaction, and then its own update finds these selection rows.
    if item_ids:
        db.execute(
            select(Item.id)
            .where(Item.id.in_(item_ids))
            .order_by(Item.id)
            .with_for_update(read=True)
        )
    # Delete then insert: a task that runs twice replaces its batch, never duplicates it.
    db.execute(delete(Selection).where(Selection.round_id == round_id))
    if entries:
        db.execute(insert(Selection), [{"round_id": round_id, **e} for e in entries])
        labeling.mark_batch(db, round_id=round_id)
    rnd.metrics = metrics
    rnd.status = RoundStatus.labeling
    rnd.error = None
    db.flush()
    complete_round(db, round_id=round_id)
    return True


def record_suggestion_accuracy(db: Session, *, rnd: Round) -> None:
    """Put in the round's metrics how often its proxy's suggestion was the label given.

    Counted over the batch's labelled items that had a suggestion (a cold start has none), so
    an annotator sees whether pre-selected guesses deserve trust.
    """
    suggested, right = db.execute(
        select(
            func.count(),
            func.count().filter(Item.label == Selection.suggested_label),
        )
        .select_from(Selection)
        .join(Item, Item.id == Selection.item_id)
        .where(
            Selection.round_id == rnd.id,
            Selection.suggested_label.is_not(None),
            Item.label.is_not(None),
        )
    ).one()
    rnd.metrics = {
        **rnd.metrics,
        "suggestion_accuracy": round(right / suggested, 4) if suggested else None,
        "suggestions_checked": int(suggested),
    }
    db.flush()


def end_round(db: Session, *, round_id: int, status: str, error: str | None) -> None:
    """Mark a round that was running failed or canceled, with the reason."""
    rnd = db.get(Round, round_id)
    if rnd is None or rnd.status not in ACTIVE_ROUND_STATUSES:
        return
    rnd.status = status
    rnd.error = error
    rnd.finished_at = utcnow()
    db.flush()
