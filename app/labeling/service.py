"""The labelling queue (leases on the current batch) and labels (append-only, idempotent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import metrics
from app.auth.models import Role, User
from app.db import utcnow
from app.errors import Conflict, Invalid, NotFound, PermissionDenied
from app.items.models import Item, Split
from app.items.schemas import image_url
from app.labeling.models import Label, Lease
from app.labeling.schemas import LabelRead, QueueEntry
from app.projects.models import MemberRole
from app.projects.service import Access, get_access, settings_of
from app.rawsql import Raw, read_json
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
    text: str | None  # a text item's whole text (DESIGN 4c); null for an image
    text_chars: int | None


# The batch entries a caller may lease, in two parts. Their live leases on unlabelled items of
# the round come back first (a reload loses nothing); then open items nobody holds: no lease,
# one from an older round, or one that ran out, except that a caller's own lease that ended (a
# skip sets it to end now) stays out of their own queue for a lease period, so a skipped item
# is not handed straight back. The open part walks ix_selections_round_labeled_rank in rank
# order and stops after :n hits, so it reads about n plus the items others hold right now,
# whatever the pool or batch size ("labeled, rank" pins that index: with the unique
# (round_id, rank) index the planner would filter its way past every labelled item).
_ENTRY = (
    "s.item_id, i.name, s.rank, s.score, s.suggested_label, s.suggested_prob, i.text, i.text_chars"
)
# Columns of _ENTRY: a row's first _FIELDS values make a _Candidate; then ``fresh`` (and ``won``).
_FIELDS = 8
_OWN_SQL = f"""
    SELECT {_ENTRY}, 0 AS fresh FROM leases l
    JOIN selections s ON s.item_id = l.item_id AND s.round_id = :round_id
    JOIN items i ON i.id = s.item_id
    WHERE l.round_id = :round_id AND l.user_id = :user_id AND l.expires_at >= :now
      AND i.label IS NULL AND s.item_id NOT IN (SELECT item_id FROM tried)
    ORDER BY s.rank LIMIT :n"""  # noqa: S608 - constants of this module, never input
_OPEN_SQL = f"""
    SELECT {_ENTRY}, 1 AS fresh FROM selections s
    JOIN items i ON i.id = s.item_id
    LEFT JOIN leases l ON l.item_id = s.item_id
    WHERE s.round_id = :round_id AND s.labeled = false AND i.label IS NULL
      AND (l.id IS NULL OR l.round_id <> :round_id
           OR (l.expires_at < :now AND (l.user_id <> :user_id OR l.expires_at < :grace)))
      AND s.item_id NOT IN (SELECT item_id FROM tried)
    ORDER BY s.labeled, s.rank LIMIT :n"""  # noqa: S608 - constants of this module, never input
# Insert or take over leases; the unique leases.item_id decides a race atomically: on
# PostgreSQL a second writer waits for the first, re-checks the WHERE on the committed row and
# gets nothing back, instead of an IntegrityError that would abort the transaction. Renewing
# one's own lease and taking over an expired one are the same statement; a renewal keeps when
# the holder first took the item, a takeover starts afresh.
_UPSERT_SQL = """
    INSERT INTO leases (item_id, round_id, user_id, expires_at, created_at)
    SELECT item_id, :round_id, :user_id, :until, :now FROM cand WHERE true
    ON CONFLICT (item_id) DO UPDATE SET
        round_id = excluded.round_id,
        expires_at = excluded.expires_at,
        created_at = CASE WHEN leases.user_id = excluded.user_id
                          THEN leases.created_at ELSE excluded.created_at END,
        user_id = excluded.user_id
    WHERE leases.user_id = :user_id OR leases.expires_at < :now OR leases.round_id <> :round_id
    RETURNING item_id"""
# PostgreSQL: choose and lease in one round trip. The open items' selection rows are locked
# with SKIP LOCKED, so a concurrent caller passes over them instead of waiting or taking the
# same ones; every candidate comes back, flagged with whether its lease was won.
_LEASE_PG = f"""
    WITH tried(item_id) AS (SELECT unnest(CAST(:tried AS integer[]))),
    own AS ({_OWN_SQL}),
    open_items AS ({_OPEN_SQL} FOR UPDATE OF s SKIP LOCKED),
    cand AS (
        SELECT * FROM (SELECT * FROM own UNION ALL SELECT * FROM open_items) AS c
        ORDER BY fresh, rank LIMIT :n
    ),
    won AS ({_UPSERT_SQL})
    SELECT cand.*, cand.item_id IN (SELECT item_id FROM won) AS won FROM cand
    """  # noqa: S608 - constants of this module, never input
# SQLite: writers are serialised (BEGIN IMMEDIATE), so nothing wins a race between this read
# and the upsert below, and no row locks exist to take.
_CANDIDATES_SQLITE = f"""
    WITH tried(item_id) AS (SELECT value FROM json_each(:tried))
    SELECT * FROM (SELECT * FROM ({_OWN_SQL}) UNION ALL SELECT * FROM ({_OPEN_SQL}))
    ORDER BY fresh, rank LIMIT :n
    """  # noqa: S608 - constants of this module, never input
# RETURNING needs SQLite 3.35.
_UPSERT_SQLITE = "WITH cand(item_id) AS (SELECT value FROM json_each(:ids)) " + _UPSERT_SQL  # noqa: S608
# The caller's role in the project (none for a non-member) and its newest round in labelling.
# PostgreSQL's first column sets the transaction's commit mode: a lease is soft state, so its
# commit need not wait for the WAL to reach the disk (this transaction only, in the same round
# trip). A crash may forget the last few milliseconds of leases; their items go back to the
# queue, and a label still checks who holds its item. Labels keep synchronous commit: a 201 is
# on disk. SQLite's first column is a placeholder.
_QUEUE_CONTEXT_SQL = """
    SELECT {first}, p.settings, m.role,
        (SELECT r.id FROM rounds r WHERE r.project_id = p.id AND r.status = 'labeling'
         ORDER BY r.number DESC LIMIT 1) AS round_id
    FROM projects p LEFT JOIN members m ON m.project_id = p.id AND m.user_id = :user_id
    WHERE p.id = :project_id"""
_QUEUE_CONTEXT = {
    True: _QUEUE_CONTEXT_SQL.format(first="set_config('synchronous_commit', 'off', true)"),
    False: _QUEUE_CONTEXT_SQL.format(first="NULL"),
}


def _lease_sqlite(raw: Raw, *, params: dict[str, Any]) -> list[tuple[_Candidate, bool]]:
    """Choose and lease on SQLite: candidates, then their upsert; those won, with freshness."""
    rows = raw.rows(_CANDIDATES_SQLITE, params | {"tried": []})
    if not rows:
        return []
    upsert = {k: params[k] for k in ("round_id", "user_id", "now", "until")}
    won = {row[0] for row in raw.rows(_UPSERT_SQLITE, upsert | {"ids": [r[0] for r in rows]})}
    return [(_Candidate(*row[:_FIELDS]), bool(row[_FIELDS])) for row in rows if row[0] in won]


def _lease_postgres(raw: Raw, *, params: dict[str, Any], n: int) -> list[_Candidate]:
    """Choose and lease on PostgreSQL, retrying a race lost to another caller."""
    chosen: list[_Candidate] = []
    tried: list[int] = []
    for _ in range(LEASE_ATTEMPTS):
        rows = raw.rows(_LEASE_PG, params | {"n": n - len(chosen), "tried": tried})
        new = [(_Candidate(*row[:_FIELDS]), bool(row[_FIELDS])) for row in rows if row[_FIELDS + 1]]
        chosen.extend(c for c, _ in new)
        metrics.ITEMS_LEASED.inc(sum(fresh for _, fresh in new))
        # Each retry sees the winner's committed lease, so one retry nearly always does.
        if len(new) == len(rows) or len(chosen) >= n:
            break
        tried.extend(row[0] for row in rows)
    return chosen


def next_batch(db: Session, *, project_id: int, user: User, n: int) -> list[QueueEntry]:
    """Lease up to ``n`` items of the current batch to the caller, their own leases first.

    404 for a project the caller is not a member of (admins are members of every project).
    """
    raw = Raw(db)
    found = raw.first(_QUEUE_CONTEXT[raw.postgres], {"project_id": project_id, "user_id": user.id})
    if found is None or (user.role != Role.admin and found[2] is None):
        raise NotFound("no such project")
    _, stored_settings, _, round_id = found
    if round_id is None:
        return []
    lease_seconds = settings_of(project_id, read_json(stored_settings)).lease_seconds
    now = utcnow()
    until = now + timedelta(seconds=lease_seconds)
    params: dict[str, Any] = {
        "round_id": round_id,
        "user_id": user.id,
        "now": now,
        "grace": now - timedelta(seconds=lease_seconds),
        "until": until,
    }
    if raw.postgres:
        chosen = _lease_postgres(raw, params=params, n=n)
    else:
        won = _lease_sqlite(raw, params=params | {"n": n})
        chosen = [c for c, _ in won]
        metrics.ITEMS_LEASED.inc(sum(fresh for _, fresh in won))
    chosen.sort(key=lambda c: c.rank)
    return [
        QueueEntry(
            item_id=c.item_id,
            name=c.name,
            rank=c.rank,
            score=c.score,
            image_url=None if c.text_chars is not None else image_url(c.item_id),
            suggestion=Suggestion(label=c.suggested_label, confidence=c.suggested_prob),
            text=c.text,
            text_chars=c.text_chars,
            lease_expires_at=until,
        )
        for c in chosen
    ]


def _project_item(db: Session, *, item_id: int, project_id: int, user: User) -> Access:
    """The item's project as the caller may reach it; 404 for an item they cannot see."""
    item_project = db.scalar(select(Item.project_id).where(Item.id == item_id))
    if item_project is None or item_project != project_id:
        raise NotFound("no such item in this project")
    return get_access(db, project_id=item_project, user=user)


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


@dataclass(frozen=True)
class _LabelContext:
    """What deciding on a label needs, read in one statement."""

    project_id: int
    split: str
    classes: list[str]
    settings: dict[str, Any] | None
    role: str | None  # the caller's membership role; None when not a member
    held_by_other: bool  # another user holds a live lease on the item
    in_open_batch: bool  # a batch being labelled in the item's project holds it
    labelled_by_other: bool  # the item's current label was given by another user
    replay: bool  # a label is stored under this key already


# The item with its project, the caller's membership and the facts the annotator rules read,
# in one round trip. On PostgreSQL the item's row is locked here: it orders a label and an undo
# of the same item, and every later statement of this transaction sees what committed before
# the lock was granted (see ``_settle_label``).
_LABEL_CONTEXT_SQL = """
    SELECT i.project_id, i.split, p.classes, p.settings, m.role,
        EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id AND l.user_id <> :user_id
                AND l.expires_at >= :now) AS held_by_other,
        EXISTS (SELECT 1 FROM selections s JOIN rounds r ON r.id = s.round_id
                WHERE s.item_id = i.id AND r.project_id = i.project_id
                AND r.status = 'labeling') AS in_open_batch,
        (i.label IS NOT NULL AND (SELECT c.user_id FROM labels c
                WHERE c.item_id = i.id AND c.undone_at IS NULL
                ORDER BY c.id DESC LIMIT 1) <> :user_id) AS labelled_by_other,
        EXISTS (SELECT 1 FROM labels k WHERE k.key = :key) AS replay
    FROM items i JOIN projects p ON p.id = i.project_id
    LEFT JOIN members m ON m.project_id = i.project_id AND m.user_id = :user_id
    WHERE i.id = :item_id"""
_LABEL_CONTEXT = {True: _LABEL_CONTEXT_SQL + " FOR UPDATE OF i", False: _LABEL_CONTEXT_SQL}


def _label_context(raw: Raw, *, user: User, item_id: int, key: str) -> _LabelContext:
    """The context of a label on an item; 404 for an item the caller cannot see."""
    row = raw.first(
        _LABEL_CONTEXT[raw.postgres],
        {"item_id": item_id, "user_id": user.id, "key": key, "now": utcnow()},
    )
    role = "admin" if user.role == Role.admin else (row[4] if row is not None else None)
    if row is None or role is None:
        raise NotFound("no such item in this project")
    return _LabelContext(
        project_id=row[0],
        split=row[1],
        classes=list(read_json(row[2])),
        settings=read_json(row[3]),
        role=role,
        held_by_other=bool(row[5]),
        in_open_batch=bool(row[6]),
        labelled_by_other=bool(row[7]),
        replay=bool(row[8]),
    )


def replayed_label(db: Session, *, key: str, user: User) -> LabelRead | None:
    """The label stored earlier under ``key`` by this user; Conflict if another user owns it."""
    existing = db.execute(
        select(Label.id, Label.item_id, Label.label, Label.user_id, Label.created_at).where(
            Label.key == key
        )
    ).first()
    if existing is None:
        return None
    if existing.user_id != user.id:
        raise Conflict("this key was used by another user; pick a new key")
    # The author is the caller: their name needs no look-up.
    return LabelRead(
        id=existing.id,
        item_id=existing.item_id,
        label=existing.label,
        user=user.username,
        created_at=existing.created_at,
    )


def check_label(
    db: Session, raw: Raw, *, user: User, item_id: int, label: str, key: str
) -> tuple[_LabelContext, LabelRead | None]:
    """May the caller label this item so: its context if so, with the first label of a replay.

    Engineers of the project (and admins) label any of its items; annotators what
    ``check_annotator_may_label`` allows. A replayed key answers with the label stored under it
    even if the rules changed since. Raises the domain error that says why not otherwise.
    """
    ctx = _label_context(raw, user=user, item_id=item_id, key=key)
    if ctx.replay:
        existing = replayed_label(db, key=key, user=user)
        if existing is not None:
            return ctx, existing
    if label not in ctx.classes:
        raise Invalid(
            f"{label!r} is not a class of this project; its classes are: " + ", ".join(ctx.classes)
        )
    if ctx.role not in ("admin", MemberRole.engineer):
        try:
            check_annotator_may_label(ctx)
        except (PermissionDenied, Conflict):
            # A replay racing its first try: that label may have committed since the look-up
            # above and closed the batch; the replay still answers with it.
            existing = replayed_label(db, key=key, user=user)
            if existing is not None:
                return ctx, existing
            raise
    return ctx, None


def check_annotator_may_label(ctx: _LabelContext) -> None:
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
    if ctx.split == Split.test:
        raise PermissionDenied("labels on the test split are set by engineers of the project")
    if ctx.held_by_other:
        raise Conflict("another annotator holds this item; ask queue/next for another")
    if settings_of(ctx.project_id, ctx.settings).annotators_label_any_pool_item:
        return
    if not ctx.in_open_batch:
        raise PermissionDenied(
            "annotators label the items of the batch being labelled; this item is not in it"
        )
    if ctx.labelled_by_other:
        # A late label from an annotator whose lease ran out, after another took the item over
        # and labelled it: refused like a live lease of theirs, never written over their label.
        raise Conflict("another annotator labelled this item meanwhile; ask queue/next for another")


def undo_label(db: Session, *, user: User, label_id: int) -> tuple[int, str | None] | None:
    """Undo a label: its author, an engineer of the project or an admin may; idempotent.

    Returns the item's id and its label now when this call undid the label (None when it was
    undone before).
    """
    row = db.get(Label, label_id)
    if row is None:
        raise NotFound("no such label")
    access = get_access(db, project_id=row.project_id, user=user)
    if row.user_id != user.id and not access.can_engineer:
        raise PermissionDenied("only its author or an engineer of the project may undo a label")
    if row.undone_at is not None:
        return None
    if db.get_bind().dialect.name == "postgresql":
        # The item's lock before the label's change, as a new label takes it (see above).
        db.execute(select(Item.id).where(Item.id == row.item_id).with_for_update())
    row.undone_at = utcnow()
    db.flush()
    return row.item_id, _settle_label(db, item_id=row.item_id)


_SETTLE_SQL = text(
    "UPDATE items SET label = (SELECT l.label FROM labels l WHERE l.item_id = :item_id "
    "AND l.undone_at IS NULL ORDER BY l.id DESC LIMIT 1) WHERE id = :item_id RETURNING label"
)


def _settle_label(db: Session, *, item_id: int) -> str | None:
    """Set the item's current label to its newest live one; the label it has now.

    The caller holds the item's row lock (PostgreSQL; SQLite's write transaction already
    serialises), taken before it wrote: that orders a label and an undo of the same item.
    Without it, an undo that read the labels just before a new label committed wrote its stale
    answer over the new label's (the browser test's undo-then-relabel lost its label this way,
    on PostgreSQL). This statement starts after the lock was granted, so on READ COMMITTED it
    sees every label or undo that held the lock before. ix_labels_item_id_id serves the read.
    """
    return db.execute(_SETTLE_SQL, {"item_id": item_id}).scalar()
