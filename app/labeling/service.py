"""The labelling queue (leases on the current batch) and labels (append-only, idempotent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, delete, false, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import metrics
from app.auth.models import User
from app.db import utcnow
from app.errors import Conflict, Invalid, NotFound, PermissionDenied
from app.items.models import Item, Split
from app.items.schemas import image_url
from app.labeling.models import Label, LabelSource, Lease
from app.labeling.schemas import LabelRead, QueueEntry
from app.projects.service import Access, get_access, project_settings
from app.rounds.models import Round, RoundStatus, Selection
from app.rounds.schemas import Suggestion

# A lease race lost to another annotator is retried this many times before answering with
# what was won; each retry sees the winner's committed lease, so one retry nearly always does.
LEASE_ATTEMPTS = 4


@dataclass(frozen=True)
class _Candidate:
    item_id: int
    name: str
    rank: int
    score: float
    suggested_label: str | None
    suggested_prob: float | None


def current_round(db: Session, *, project_id: int) -> Round | None:
    """The project's newest round whose batch is being labelled, if any."""
    return db.scalar(
        select(Round)
        .where(Round.project_id == project_id, Round.status == RoundStatus.labeling)
        .order_by(Round.number.desc())
        .limit(1)
    )


def _candidate_columns() -> Select[Any]:
    return select(
        Selection.item_id,
        Item.name,
        Selection.rank,
        Selection.score,
        Selection.suggested_label,
        Selection.suggested_prob,
    ).join(Item, Item.id == Selection.item_id)


def _own_leases(
    db: Session, *, round_id: int, user_id: int, now: datetime, n: int
) -> list[_Candidate]:
    """The caller's live leases on unlabelled items of the round, in rank order."""
    rows = db.execute(
        _candidate_columns()
        .join(Lease, Lease.item_id == Selection.item_id)
        .where(
            Selection.round_id == round_id,
            Lease.round_id == round_id,
            Lease.user_id == user_id,
            Lease.expires_at >= now,
            Item.label.is_(None),
        )
        .order_by(Selection.rank)
        .limit(n)
    )
    return [_Candidate(*row) for row in rows.tuples()]


def _open_items(
    db: Session,
    *,
    round_id: int,
    user_id: int,
    now: datetime,
    skip_grace: timedelta,
    n: int,
    exclude: set[int],
) -> list[_Candidate]:
    """Unlabelled items of the batch nobody holds, in rank order, locked against other callers.

    The scan walks the open part of the batch in rank order and stops after ``n`` hits, so it
    reads about ``n`` plus the items others hold right now, whatever the pool or batch size.
    On PostgreSQL the selection rows are locked with SKIP LOCKED: a concurrent caller passes
    over them instead of waiting or taking the same ones.
    """
    free = or_(
        Lease.id.is_(None),
        # A lease from an older round does not hold an item of this one.
        Lease.round_id != round_id,
        # Expired: anyone may take it over, except that a caller's own lease that ended (a skip
        # sets it to end now) stays out of their own queue for a lease period, so a skipped
        # item is not handed straight back to the annotator who skipped it.
        (Lease.expires_at < now)
        & or_(Lease.user_id != user_id, Lease.expires_at < now - skip_grace),
    )
    query = (
        _candidate_columns()
        .outerjoin(Lease, Lease.item_id == Selection.item_id)
        .where(
            Selection.round_id == round_id,
            # Equality on ``labeled`` keeps the scan on ix_selections_round_labeled_rank, in rank
            # order, past the batch's open items only; Item.label is the final word.
            Selection.labeled == false(),
            Item.label.is_(None),
            free,
        )
        # "labeled, rank", not just "rank": with labeled fixed this is the same order, but only
        # ix_selections_round_labeled_rank delivers it, so the planner cannot pick the unique
        # (round_id, rank) index and filter its way past every labelled item of the batch.
        .order_by(Selection.labeled, Selection.rank)
        .limit(n)
    )
    if exclude:
        query = query.where(Selection.item_id.not_in(exclude))
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Selection, skip_locked=True)
    return [_Candidate(*row) for row in db.execute(query).tuples()]


def _take_leases(
    db: Session, *, item_ids: list[int], round_id: int, user_id: int, now: datetime, until: datetime
) -> set[int]:
    """Insert or take over leases in one statement; returns the items actually won.

    ``ON CONFLICT (item_id) DO UPDATE ... WHERE`` makes the unique ``leases.item_id`` decide a
    race atomically: on PostgreSQL a second writer waits for the first, re-checks the WHERE on
    the committed row and gets nothing back, instead of an IntegrityError that would abort the
    transaction. Renewing one's own lease and taking over an expired one are the same statement.
    """
    if not item_ids:
        return set()
    dialect = db.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Lease).values(
        [
            {
                "item_id": item_id,
                "round_id": round_id,
                "user_id": user_id,
                "expires_at": until,
                "created_at": now,
            }
            for item_id in item_ids
        ]
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[Lease.item_id],
        set_={
            "round_id": stmt.excluded.round_id,
            "expires_at": stmt.excluded.expires_at,
            # A renewal keeps when the holder first took the item; a takeover starts afresh.
            "created_at": case(
                (Lease.user_id == stmt.excluded.user_id, Lease.created_at),
                else_=stmt.excluded.created_at,
            ),
            "user_id": stmt.excluded.user_id,
        },
        where=or_(Lease.user_id == user_id, Lease.expires_at < now, Lease.round_id != round_id),
    ).returning(Lease.item_id)
    return set(db.scalars(upsert))


def next_batch(db: Session, *, access: Access, user: User, n: int) -> list[QueueEntry]:
    """Lease up to ``n`` items of the current batch to the caller, their own leases first."""
    rnd = current_round(db, project_id=access.project.id)
    if rnd is None:
        return []
    lease_seconds = project_settings(access.project).lease_seconds
    now = utcnow()
    until = now + timedelta(seconds=lease_seconds)
    # A reload loses nothing: the caller's live leases come back first, and are renewed below.
    chosen = _own_leases(db, round_id=rnd.id, user_id=user.id, now=now, n=n)
    tried = {c.item_id for c in chosen}
    won = _take_leases(
        db, item_ids=list(tried), round_id=rnd.id, user_id=user.id, now=now, until=until
    )
    chosen = [c for c in chosen if c.item_id in won]
    for _ in range(LEASE_ATTEMPTS):
        wanted = n - len(chosen)
        if wanted <= 0:
            break
        fresh = _open_items(
            db,
            round_id=rnd.id,
            user_id=user.id,
            now=now,
            skip_grace=timedelta(seconds=lease_seconds),
            n=wanted,
            exclude=tried,
        )
        if not fresh:
            break
        tried.update(c.item_id for c in fresh)
        won = _take_leases(
            db,
            item_ids=[c.item_id for c in fresh],
            round_id=rnd.id,
            user_id=user.id,
            now=now,
            until=until,
        )
        new = [c for c in fresh if c.item_id in won]
        metrics.ITEMS_LEASED.inc(len(new))
        chosen.extend(new)
    chosen.sort(key=lambda c: c.rank)
    return [
        QueueEntry(
            item_id=c.item_id,
            name=c.name,
            rank=c.rank,
            score=c.score,
            image_url=image_url(c.item_id),
            suggestion=Suggestion(label=c.suggested_label, confidence=c.suggested_prob),
            lease_expires_at=until,
        )
        for c in chosen
    ]


def _project_item(db: Session, *, item_id: int, project_id: int | None, user: User) -> Access:
    """The item's project as the caller may reach it; 404 for an item they cannot see."""
    item = db.get(Item, item_id)
    if item is None or (project_id is not None and item.project_id != project_id):
        raise NotFound("no such item in this project")
    return get_access(db, project_id=item.project_id, user=user)


def skip(db: Session, *, access: Access, user: User, item_id: int) -> None:
    """Give the caller's lease on an item back to the queue.

    The lease row is kept, ending now, rather than deleted: others may take the item at once,
    while the caller's own queue passes over it for a lease period (see ``_open_items``).
    Raises Conflict when the caller holds no live lease on the item.
    """
    _project_item(db, item_id=item_id, project_id=access.project.id, user=user)
    now = utcnow()
    lease = db.scalar(
        select(Lease).where(
            Lease.item_id == item_id, Lease.user_id == user.id, Lease.expires_at >= now
        )
    )
    if lease is None:
        raise Conflict("you hold no lease on this item")
    lease.expires_at = now
    db.flush()


def label_read(label: Label, username: str | None) -> LabelRead:
    """The API shape of a label."""
    return LabelRead(
        id=label.id,
        item_id=label.item_id,
        label=label.label,
        user=username,
        created_at=label.created_at,
    )


def _replay(db: Session, *, key: str, user: User) -> Label | None:
    """The label stored earlier under ``key`` by this user; Conflict if another user owns it."""
    existing = db.scalar(select(Label).where(Label.key == key))
    if existing is not None and existing.user_id != user.id:
        raise Conflict("this key was used by another user; pick a new key")
    return existing


def submit_label(
    db: Session, *, user: User, item_id: int, label: str, key: str
) -> tuple[Label, Item | None]:
    """Store a label (or return the one stored under the same key), with the item when it is new.

    Engineers of the project (and admins) label any of its items; annotators what
    ``check_annotator_may_label`` allows. What a new label means for the batches that hold the
    item, and for their leases, is ``app.flows.label_item``'s business.
    """
    access = _project_item(db, item_id=item_id, project_id=None, user=user)
    existing = _replay(db, key=key, user=user)
    if existing is not None:
        # A replay answers with the first result even if the rules changed since.
        return existing, None
    if label not in access.project.classes:
        raise Invalid(
            f"{label!r} is not a class of this project; its classes are: "
            + ", ".join(access.project.classes)
        )
    if not access.can_engineer:
        try:
            check_annotator_may_label(db, access=access, user=user, item_id=item_id)
        except (PermissionDenied, Conflict):
            # A replay racing its first try: that label may have committed since the look-up
            # above and closed the batch; the replay still answers with it.
            existing = _replay(db, key=key, user=user)
            if existing is not None:
                return existing, None
            raise
    row = Label(
        item_id=item_id,
        project_id=access.project.id,
        user_id=user.id,
        label=label,
        source=LabelSource.human,
        key=key,
    )
    try:
        # A savepoint: when a concurrent replay of the same key wins the unique index, only this
        # insert is rolled back and the request answers with the winner's row.
        with db.begin_nested():
            db.add(row)
            db.flush()
    except IntegrityError:
        existing = _replay(db, key=key, user=user)
        if existing is None:
            raise
        return existing, None
    item = _settle_label(db, item_id=item_id)
    metrics.LABELS_SUBMITTED.inc()
    return row, item


def check_annotator_may_label(db: Session, *, access: Access, user: User, item_id: int) -> None:
    """What an annotator may label (DESIGN 5), or the error that says why not.

    - never an item of the test split (403): the proxy's and the target's accuracy are
      measured on those labels, so engineers (or an import) set them;
    - never an item another user holds by a live lease (409): a state that passes (the lease
      ends or is skipped), not a missing right; the client asks ``queue/next`` for another;
    - an item of a batch being labelled, which they hold or nobody holds (a lease that ran out
      while its annotator still looked, or an item reopened by an undo, is still theirs to
      label while no one else has taken it);
    - any other pool item only where the project's ``annotators_label_any_pool_item`` is on
      (403 otherwise).
    """
    item = db.get(Item, item_id)
    assert item is not None
    if item.split == Split.test:
        raise PermissionDenied("labels on the test split are set by engineers of the project")
    held = db.scalar(
        select(Lease.user_id).where(
            Lease.item_id == item_id, Lease.user_id != user.id, Lease.expires_at >= utcnow()
        )
    )
    if held is not None:
        raise Conflict("another annotator holds this item; ask queue/next for another")
    in_open_batch = db.scalar(
        select(Selection.id)
        .join(Round, Round.id == Selection.round_id)
        .where(
            Selection.item_id == item_id,
            Round.project_id == access.project.id,
            Round.status == RoundStatus.labeling,
        )
        .limit(1)
    )
    if project_settings(access.project).annotators_label_any_pool_item:
        return
    if in_open_batch is None:
        raise PermissionDenied(
            "annotators label the items of the batch being labelled; this item is not in it"
        )
    if item.label is not None and _labelled_by_another(db, item_id=item_id, user=user):
        # A late label from an annotator whose lease ran out, after another took the item over
        # and labelled it: refused like a live lease of theirs, never written over their label.
        raise Conflict("another annotator labelled this item meanwhile; ask queue/next for another")


def _labelled_by_another(db: Session, *, item_id: int, user: User) -> bool:
    """Whether the item's current label was given by someone else (ix_labels_item_id_id)."""
    author = db.scalar(
        select(Label.user_id)
        .where(Label.item_id == item_id, Label.undone_at.is_(None))
        .order_by(Label.id.desc())
        .limit(1)
    )
    return author is not None and author != user.id


def release_item(db: Session, *, item_id: int) -> None:
    """End every lease on a labelled item, whoever held it (an engineer may label over one)."""
    db.execute(delete(Lease).where(Lease.item_id == item_id))


def undo_label(db: Session, *, user: User, label_id: int) -> Item | None:
    """Undo a label: its author, an engineer of the project or an admin may; idempotent.

    Returns the item when this call undid the label (None when it was undone before).
    """
    row = db.get(Label, label_id)
    if row is None:
        raise NotFound("no such label")
    access = get_access(db, project_id=row.project_id, user=user)
    if row.user_id != user.id and not access.can_engineer:
        raise PermissionDenied("only its author or an engineer of the project may undo a label")
    if row.undone_at is not None:
        return None
    row.undone_at = utcnow()
    db.flush()
    return _settle_label(db, item_id=row.item_id)


def _settle_label(db: Session, *, item_id: int) -> Item:
    """Set the item's current label to its newest live one, under the item's row lock.

    The lock (PostgreSQL; SQLite's write transaction already serialises) orders a label and an
    undo of the same item: without it, an undo that read the labels just before a new label
    committed wrote its stale answer over the new label's (the browser test's undo-then-relabel
    lost its label this way, on PostgreSQL).
    """
    item = db.get(Item, item_id, with_for_update=True)
    assert item is not None
    # Read after the lock is held: on READ COMMITTED each statement sees what committed before
    # it, so a label or undo that held the lock is seen. ix_labels_item_id_id serves this.
    item.label = db.scalar(
        select(Label.label)
        .where(Label.item_id == item_id, Label.undone_at.is_(None))
        .order_by(Label.id.desc())
        .limit(1)
    )
    db.flush()
    return item


def username_of(db: Session, *, user_id: int | None) -> str | None:
    """A user's name, or None for a deleted account."""
    if user_id is None:
        return None
    return db.scalar(select(User.username).where(User.id == user_id))
