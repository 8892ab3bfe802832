"""Rounds: start, read, cancel, and the database steps a round's runner takes.

The runner itself (worker/rounds.py) does the torch work; every write it makes to rounds and
selections goes through the functions here, so the rules of a round's life live in one file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, true, update
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import utcnow
from app.embeddings.schemas import embedding_size
from app.errors import Conflict, Invalid, NotFound
from app.items.models import TEXT_PREVIEW_CHARS, Item, Split
from app.items.schemas import image_url
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind, JobStatus
from app.jobs.service import create_job, draw_seed
from app.labeling.models import Lease
from app.projects import kinds
from app.projects.models import Project, ProjectKind
from app.projects.schemas import ProjectSettings
from app.projects.service import Access, get_access, project_settings
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
            "epochs": given.epochs or settings.proxy_epochs,
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


def _lock_project(db: Session, project_id: int) -> None:
    """Serialise round starts of one project: a row lock on PostgreSQL.

    SQLite needs none: a write request's transaction began with BEGIN IMMEDIATE, so writers
    already run one at a time (the ``FOR UPDATE`` is not rendered there).
    """
    db.execute(select(Project.id).where(Project.id == project_id).with_for_update())


def open_batch_items(project_id: int) -> Any:
    """A subquery: item ids in the batch of a round of the project that is still labelling."""
    return (
        select(Selection.item_id)
        .join(Round, Round.id == Selection.round_id)
        .where(Round.project_id == project_id, Round.status == RoundStatus.labeling)
    )


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
                Item.id.not_in(open_batch_items(project_id)),
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
    _lock_project(db, project.id)
    follow_jobs(db, project_id=project.id)
    active = db.scalar(
        select(Round.number).where(
            Round.project_id == project.id, Round.status.in_(ACTIVE_ROUND_STATUSES)
        )
    )
    if active is not None:
        raise Conflict(f"round {active} of this project is still queued or running")
    labeling = list(
        db.scalars(
            select(Round).where(
                Round.project_id == project.id, Round.status == RoundStatus.labeling
            )
        )
    )
    if labeling and not supersede:
        raise Conflict(
            f"round {labeling[0].number} of this project is still being labelled; "
            'finish its batch, cancel it, or send {"supersede": true} to close it'
        )
    for open_round in labeling:
        _close_batch(db, rnd=open_round)
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


def _close_batch(db: Session, *, rnd: Round) -> None:
    """End a labelling round early: its labelled items stay, the rest return to the pool."""
    db.execute(delete(Lease).where(Lease.round_id == rnd.id))
    rnd.status = RoundStatus.completed
    # Closed before every item had a label: the learning curve and suggestion accuracy say so.
    rnd.metrics = {**rnd.metrics, "superseded": True}
    rnd.finished_at = utcnow()
    record_suggestion_accuracy(db, rnd=rnd)


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


def get_round(db: Session, *, round_id: int, user: User, engineer: bool = False) -> Access:
    """The round's project access, or 404 when the caller cannot see the round."""
    project_id = db.scalar(select(Round.project_id).where(Round.id == round_id))
    if project_id is None:
        raise NotFound("no such round")
    try:
        return get_access(db, project_id=project_id, user=user, engineer=engineer)
    except NotFound:
        raise NotFound("no such round") from None


def load_round(db: Session, *, round_id: int) -> Round:
    """A round by id (404 when missing)."""
    rnd = db.get(Round, round_id)
    if rnd is None:
        raise NotFound("no such round")
    return rnd


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
    # ix_selections_round_labeled_rank, kept in step with labels by app.flows.
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


def save_selection(
    db: Session,
    *,
    round_id: int,
    entries: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> bool:
    """Write the batch (replacing any earlier one) and move the round to labelling.

    ``entries``: ``{item_id, rank, score, suggested_label, suggested_prob}`` each. Returns False
    and writes nothing when the round was canceled meanwhile.
    """
    rnd = db.get(Round, round_id)
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
        db.execute(
            update(Selection)
            .where(
                Selection.round_id == round_id,
                Selection.item_id.in_(select(Item.id).where(Item.label.is_not(None))),
            )
            .values(labeled=True)
        )
    rnd.metrics = metrics
    rnd.status = RoundStatus.labeling
    rnd.error = None
    db.flush()
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
