"""The labelling queue (leases on the current batch) and labels (append-only, idempotent)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import metrics
from app.auth.models import User
from app.db import utcnow
from app.errors import Conflict, Invalid, NotFound, PermissionDenied
from app.items.models import Item, Split
from app.items.schemas import image_url
from app.labeling import sql
from app.labeling.models import Label, Lease
from app.labeling.schemas import LabelRead, QueueEntry
from app.projects.models import MemberRole
from app.projects.service import (
    Access,
    effective_role,
    get_access,
    lock_project,
    settings_of,
)
from app.rawsql import Raw, read_json
from app.rounds import sql as rounds_sql
from app.rounds.models import Round
from app.rounds.schemas import Suggestion

# A lease race lost to another annotator is retried this many times before answering with
# what was won; each retry sees the winner's committed lease, so one retry nearly always does.
LEASE_ATTEMPTS = 4


class Queued(NamedTuple):
    """Entries leased to the caller; ``maybe_done``: a round to complete after the commit.

    An empty queue whose batch has no open item left is a round whose last label committed but
    whose completion never ran (its server died between the two): it completes then.
    """

    entries: list[QueueEntry]
    maybe_done: list[int]


def _lease_sqlite(raw: Raw, *, params: dict[str, Any]) -> list[sql.Candidate]:
    """Choose and lease on SQLite: candidates, then their upsert; the candidates won."""
    rows = raw.fetch(sql.CANDIDATES_SQLITE, params | {"tried": []}, sql.Candidate)
    if not rows:
        return []
    upsert = {k: params[k] for k in ("round_id", "user_id", "now", "until")}
    ids = [r.item_id for r in rows]
    won = {r.item_id for r in raw.fetch(sql.UPSERT_SQLITE, upsert | {"ids": ids}, sql.ItemId)}
    chosen = [r for r in rows if r.item_id in won]
    metrics.ITEMS_LEASED.inc(sum(c.fresh for c in chosen))
    return chosen


def _lease_postgres(raw: Raw, *, params: dict[str, Any], n: int) -> list[sql.Candidate]:
    """Choose and lease on PostgreSQL, retrying a race lost to another caller."""
    chosen: list[sql.Candidate] = []
    tried: list[int] = []
    for _ in range(LEASE_ATTEMPTS):
        rows = raw.fetch(
            sql.LEASE_PG, params | {"n": n - len(chosen), "tried": tried}, sql.Candidate
        )
        new = [row for row in rows if row.won]
        chosen.extend(new)
        metrics.ITEMS_LEASED.inc(sum(c.fresh for c in new))
        # Each retry sees the winner's committed lease, so one retry nearly always does.
        if len(new) == len(rows) or len(chosen) >= n:
            break
        tried.extend(row.item_id for row in rows)
    return chosen


def next_batch(db: Session, *, project_id: int, user: User, n: int) -> Queued:
    """Lease up to ``n`` items of the current batch to the caller, their own leases first.

    404 for a project the caller is not a member of (admins are members of every project).
    """
    raw = Raw(db)
    found = raw.fetch_one(
        sql.QUEUE_CONTEXT[raw.postgres],
        {"project_id": project_id, "user_id": user.id, **sql.PARAMS},
        sql.QueueContext,
    )
    if found is None or effective_role(user, found.role) is None:
        raise NotFound("no such project")
    if found.round_id is None:
        return Queued([], [])
    lease_seconds = settings_of(project_id, read_json(found.settings)).lease_seconds
    now = utcnow()
    until = now + timedelta(seconds=lease_seconds)
    params: dict[str, Any] = {
        "round_id": found.round_id,
        "user_id": user.id,
        "now": now,
        "grace": now - timedelta(seconds=lease_seconds),
        "until": until,
    }
    if raw.postgres:
        chosen = _lease_postgres(raw, params=params, n=n)
    else:
        chosen = _lease_sqlite(raw, params=params | {"n": n})
    if not chosen:
        # A plain read: the completion re-checks, exactly, in a transaction of its own (this
        # one commits its leases without waiting for the disk, see sql.QUEUE_CONTEXT).
        done = (
            raw.fetch_one(sql.FIRST_OPEN, {"round_id": found.round_id}, rounds_sql.OpenItem) is None
        )
        return Queued([], [found.round_id] if done else [])
    chosen.sort(key=lambda c: c.rank)
    entries = [
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
    return Queued(entries, [])


def _project_item(db: Session, *, item_id: int, project_id: int, user: User) -> Access:
    """The item's project as the caller may reach it; 404 for an item they cannot see."""
    item_project = db.scalar(select(Item.project_id).where(Item.id == item_id))
    if item_project is None or item_project != project_id:
        raise NotFound("no such item in this project")
    return get_access(db, project_id=item_project, user=user)


def skip(db: Session, *, access: Access, user: User, item_id: int) -> None:
    """Give the caller's lease on an item back to the queue.

    The lease row is kept, ending now, rather than deleted: others may take the item at once,
    while the caller's own queue passes over it for a lease period (the open part of the
    queue, in ``app.labeling.sql``). It also begins now: a lease that ended where it began is
    a skip, told apart from one that ran out, whose item its holder may take again at once.
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
    lease.created_at = lease.expires_at = now
    db.flush()


def drop_leases(db: Session, *, user_id: int, project_id: int | None = None) -> None:
    """End a user's leases at once (in one project, or everywhere): their items go back to
    the queue for everyone, rather than waiting out a lease nobody will label under."""
    query = delete(Lease).where(Lease.user_id == user_id)
    if project_id is not None:
        query = query.where(
            Lease.round_id.in_(select(Round.id).where(Round.project_id == project_id))
        )
    db.execute(query)


def _label_context(raw: Raw, *, user: User, item_id: int, key: str) -> sql.LabelContext:
    """The context of a label on an item; 404 for an item the caller cannot see."""
    row = raw.fetch_one(
        sql.LABEL_CONTEXT[raw.postgres],
        {"item_id": item_id, "user_id": user.id, "key": key, "now": utcnow(), **sql.PARAMS},
        sql.LabelContext,
    )
    role = effective_role(user, row.role) if row is not None else None
    if row is None or role is None:
        raise NotFound("no such item in this project")
    return row._replace(
        classes=list(read_json(row.classes)),
        settings=read_json(row.settings),
        role=role,
        held_by_other=bool(row.held_by_other),
        in_open_batch=bool(row.in_open_batch),
        labelled_by_other=bool(row.labelled_by_other),
        replay=bool(row.replay),
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
) -> tuple[sql.LabelContext, LabelRead | None]:
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


def check_annotator_may_label(ctx: sql.LabelContext) -> None:
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


class Labelled(NamedTuple):
    """A label's answer: the label, whether it is new, and rounds to complete after the commit."""

    label: LabelRead
    created: bool
    maybe_done: list[int]


def store_label(db: Session, *, user: User, item_id: int, label: str, key: str) -> Labelled:
    """Store a label and mark the batches that hold the item.

    The hot path of the service: two statements and the commit on PostgreSQL (the context
    with the item's lock; the write with its probe for an untouched open item), on the
    driver's cursor. The rounds whose batch it may have finished come back, for
    ``app.rounds.service.complete_round`` once this has committed.
    """
    raw = Raw(db)
    ctx, replayed = check_label(db, raw, user=user, item_id=item_id, label=label, key=key)
    if replayed is not None:
        return Labelled(replayed, False, [])
    now = utcnow()
    params = {
        "item_id": item_id,
        "project_id": ctx.project_id,
        "user_id": user.id,
        "label": label,
        "key": key,
        "now": now,
        **sql.PARAMS,
    }
    label_id, maybe_done = (
        _store_postgres(raw, params) if raw.postgres else _store_sqlite(raw, params)
    )
    if label_id is None:
        # A concurrent request with the same key won the unique index (PostgreSQL waited for
        # it to commit): this one answers with the winner's label.
        existing = replayed_label(db, key=key, user=user)
        if existing is None:
            raise Conflict("this key is being used by another request; try again")
        return Labelled(existing, False, [])
    metrics.LABELS_SUBMITTED.inc()
    read = LabelRead(id=label_id, item_id=item_id, label=label, user=user.username, created_at=now)
    return Labelled(read, True, maybe_done)


def _store_postgres(raw: Raw, params: dict[str, Any]) -> tuple[int | None, list[int]]:
    stored = raw.fetch_one(sql.STORE_LABEL_PG, params, sql.Stored)
    if stored is None or stored.label_id is None:
        return None, []
    return stored.label_id, sorted(stored.round_ids)


def _store_sqlite(raw: Raw, params: dict[str, Any]) -> tuple[int | None, list[int]]:
    inserted = raw.fetch_one(sql.INSERT_LABEL_SQLITE, params, sql.LabelId)
    if inserted is None:
        return None, []
    raw.rows(sql.SET_LABEL_SQLITE, params)
    marked = {r.round_id for r in raw.fetch(sql.MARK_SQLITE, params, sql.RoundId)}
    raw.rows(sql.RELEASE_SQLITE, params)
    done = [
        round_id
        for round_id in sorted(marked)
        if raw.fetch_one(sql.DONE_SQLITE, params | {"round_id": round_id}, sql.RoundId)
    ]
    return inserted.id, done


class Undone(NamedTuple):
    """The item whose label an undo just marked undone, and its project."""

    item_id: int
    project_id: int


def undo_label(db: Session, *, user: User, label_id: int) -> Undone | None:
    """Undo a label: its author, an engineer of the project or an admin may; idempotent.

    Returns the item when this call undid the label (None when it was undone before); the
    item keeps its old label until ``settle_item``, once the caller has taken the locks that
    must come before its selection rows change.
    """
    row = db.get(Label, label_id)
    if row is None:
        raise NotFound("no such label")
    access = get_access(db, project_id=row.project_id, user=user)
    if row.user_id != user.id and not access.can_engineer:
        raise PermissionDenied("only its author or an engineer of the project may undo a label")
    if row.undone_at is not None:
        return None
    # The project's lock first, as round starts and completions take it (an undo may reopen a
    # round: ``app.projects.service.lock_project``), then the item's, as a new label takes it
    # (``sql.LABEL_CONTEXT``): it orders a label and an undo of the same item.
    lock_project(db, project_id=row.project_id)
    db.execute(select(Item.id).where(Item.id == row.item_id).with_for_update())
    row.undone_at = utcnow()
    db.flush()
    return Undone(item_id=row.item_id, project_id=row.project_id)


def settle_item(db: Session, *, item_id: int) -> str | None:
    """Set the item's current label to its newest live one, and its selection rows to match.

    With the label store's statements, the one writer of ``Item.label`` and
    ``Selection.labeled``; the caller holds the item's lock (see ``sql.SETTLE``). Returns the
    item's label now.
    """
    raw = Raw(db)
    settled = raw.fetch_one(sql.SETTLE, {"item_id": item_id}, sql.Settled)
    label = settled.label if settled is not None else None
    raw.rows(sql.SETTLE_SELECTIONS, {"item_id": item_id, "labeled": label is not None})
    return label


def mark_batch(db: Session, *, round_id: int) -> None:
    """Mark the items of a batch just written that were labelled meanwhile as labelled."""
    Raw(db).rows(sql.MARK_BATCH, {"round_id": round_id})
