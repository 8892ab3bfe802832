"""Each fact of a batch and a label has one source, and both its readers agree on every case.

The labelling hot path reads these facts through driver-level statements (``app.labeling.sql``),
the rest of the app through SQLAlchemy; both are built from the same fragment or rule. Each
table below is run through both readers, on the back end of the run (SQLite and PostgreSQL).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import unit_of_work, utcnow
from app.errors import NotFound
from app.exports.service import labeled_batches
from app.items.models import Item
from app.labeling import sql
from app.labeling.models import Label
from app.projects.models import Member
from app.projects.service import effective_role, get_access, member_role
from app.rawsql import Raw
from app.rounds import service as rounds
from tests.factories import Factory


def _label_context(db: Session, *, item_id: int, user: User) -> sql.LabelContext:
    raw = Raw(db)
    params = {"item_id": item_id, "user_id": user.id, "key": "none", "now": utcnow()}
    row = raw.fetch_one(sql.LABEL_CONTEXT[raw.postgres], params | sql.PARAMS, sql.LabelContext)
    assert row is not None
    return row


def _queue_context(db: Session, *, project_id: int, user: User) -> sql.QueueContext:
    raw = Raw(db)
    params = {"project_id": project_id, "user_id": user.id}
    row = raw.fetch_one(sql.QUEUE_CONTEXT[raw.postgres], params | sql.PARAMS, sql.QueueContext)
    assert row is not None
    return row


# The statuses of the rounds whose batch holds the item -> whether it is in an open batch.
IN_OPEN_BATCH = [
    ([], False),
    (["labeling"], True),
    (["completed"], False),
    (["canceled"], False),
    (["completed", "labeling"], True),
]


@pytest.mark.parametrize(("statuses", "expected"), IN_OPEN_BATCH)
def test_items_of_the_open_batch(factory: Factory, statuses: list[str], expected: bool) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    (item,) = factory.items(project, 1)
    for status in statuses:
        factory.round_with_selection(project, [item], status=status)
    with unit_of_work() as db:
        raw_answer = bool(_label_context(db, item_id=item.id, user=eng).in_open_batch)
        orm_answer = db.scalar(
            select(func.count()).where(Item.id == item.id, rounds.in_open_batch())
        )
        in_subquery = db.scalar(
            select(func.count()).where(Item.id.in_(rounds.open_batch_items(project.id)))
        )
        candidates = rounds.count_candidates(db, project_id=project.id)
    assert (raw_answer, orm_answer, in_subquery) == (expected, int(expected), int(expected))
    # A new round may select the item only when no open batch holds it.
    assert candidates == (0 if expected else 1)


# The statuses of the project's rounds, oldest first -> the number of the queue's round.
NEWEST_LABELLING = [
    ([], None),
    (["labeling"], 1),
    (["completed", "labeling"], 2),
    (["labeling", "completed"], 1),
    (["labeling", "labeling"], 2),
    (["completed", "queued"], None),
]


@pytest.mark.parametrize(("statuses", "expected"), NEWEST_LABELLING)
def test_the_newest_round_in_labelling(
    factory: Factory, statuses: list[str], expected: int | None
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    items = factory.items(project, len(statuses))
    number = {
        rnd.id: rnd.number
        for rnd in (
            factory.round_with_selection(project, [item], status=status)
            for item, status in zip(items, statuses, strict=True)
        )
    }
    with unit_of_work() as db:
        raw_id = _queue_context(db, project_id=project.id, user=eng).round_id
        orm_id = rounds.labelling_round_id(db, project_id=project.id)
    assert raw_id == orm_id
    assert (number[raw_id] if raw_id is not None else None) == expected


# The caller's role on the server, and their membership role (None: not a member) -> the role
# they act with in the project (None: the project does not exist for them).
MEMBERSHIP = [
    ("admin", None, "admin"),
    ("admin", "annotator", "admin"),
    ("engineer", "engineer", "engineer"),
    ("annotator", "annotator", "annotator"),
    ("engineer", "annotator", "annotator"),
    ("engineer", None, None),
    ("annotator", None, None),
]


@pytest.mark.parametrize(("server_role", "membership", "expected"), MEMBERSHIP)
def test_is_a_member_or_admin(
    factory: Factory, server_role: str, membership: str | None, expected: str | None
) -> None:
    owner, caller = factory.user("engineer"), factory.user(server_role)
    project = factory.project(owner)
    (item,) = factory.items(project, 1)
    if membership is not None:
        with unit_of_work() as db:
            db.add(Member(project_id=project.id, user_id=caller.id, role=membership))
    with unit_of_work() as db:
        by_queue = effective_role(
            caller, _queue_context(db, project_id=project.id, user=caller).role
        )
        by_label = effective_role(caller, _label_context(db, item_id=item.id, user=caller).role)
        by_orm = member_role(db, project_id=project.id, user=caller)
        try:
            by_access: str | None = get_access(db, project_id=project.id, user=caller).role
        except NotFound:
            by_access = None
    assert (by_queue, by_label, by_orm, by_access) == (expected,) * 4


# An item's labels, oldest first, as (author: 0 or 1, label, undone) -> its current label and
# that label's author.
CURRENT_LABEL: list[tuple[list[tuple[int, str, bool]], tuple[str, int] | None]] = [
    ([], None),
    ([(0, "cat", False)], ("cat", 0)),
    ([(0, "cat", False), (1, "dog", False)], ("dog", 1)),
    ([(0, "cat", False), (1, "dog", True)], ("cat", 0)),
    ([(0, "cat", True)], None),
    ([(1, "dog", False), (0, "cat", True), (1, "bird", True)], ("dog", 1)),
]


@pytest.mark.parametrize(("history", "expected"), CURRENT_LABEL)
def test_an_items_current_label(
    factory: Factory, history: list[tuple[int, str, bool]], expected: tuple[str, int] | None
) -> None:
    authors = [factory.user("engineer"), factory.user("engineer")]
    project = factory.project(authors[0], members={authors[1]: "engineer"})
    (item,) = factory.items(project, 1)
    start = utcnow()
    labels = [
        Label(
            item_id=item.id,
            project_id=project.id,
            user_id=authors[who].id,
            label=label,
            created_at=start + timedelta(seconds=i),
            undone_at=start + timedelta(seconds=i, milliseconds=500) if undone else None,
        )
        for i, (who, label, undone) in enumerate(history)
    ]
    settled = factory.label_history(*labels) if labels else None
    want_label = expected[0] if expected else None
    with unit_of_work() as db:
        stored = db.scalar(select(Item.label).where(Item.id == item.id))
        # The hot path reads the current label's author to refuse a late label over it.
        by_other = [
            bool(_label_context(db, item_id=item.id, user=u).labelled_by_other) for u in authors
        ]
    exported: dict[int, Any] = {
        row.item_id: row.labeled_by
        for batch in labeled_batches(project_id=project.id)
        for row in batch
    }
    assert (settled, stored) == (want_label, want_label)
    if expected is None:
        assert by_other == [False, False]
        assert exported == {}
    else:
        author = expected[1]
        assert by_other == [author != 0, author != 1]
        assert exported == {item.id: authors[author].username}


# What writes an item's label or a selection's ``labeled`` flag, in SQL text or through the ORM.
_WRITES = re.compile(
    r"UPDATE\s+(items|selections)\s+SET\s+label"
    r"|update\((Item|Selection)\)"
    r"|\blabeled\s*=\s*(True|False)\b"
    r"|\b(item|it|row)\.label\s*=[^=]"
)


@pytest.mark.database_free
def test_only_the_labelling_statements_write_an_items_label() -> None:
    # Item.label and Selection.labeled say the same thing twice (the queue reads one, the
    # batch-done probe the other): one module writes both, so they cannot drift apart. An
    # import inserts new items with their labels (and Label rows), in no batch yet.
    root = Path(__file__).resolve().parents[1] / "app"
    writers = {
        str(path.relative_to(root.parent))
        for path in root.rglob("*.py")
        if _WRITES.search(path.read_text())
    }
    assert writers == {"app/labeling/sql.py"}
