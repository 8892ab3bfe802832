"""A project's counts come from ``item_counts``, kept by triggers on ``items`` (migration 0009):
exact after every kind of write, by whoever writes, and never a deadlock under concurrent labels.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from sqlalchemy import create_engine, delete, func, select, text, update

from app.db import unit_of_work
from app.items.models import Item
from app.projects.models import ALL_ITEMS, COUNT_SHARDS, ItemCount, Project
from tests.factories import Factory
from tests.test_class_counts import _counts, _label
from tests.test_text_import import csv_bytes, imported

_keys = itertools.count()
# The triggers of migration 0009 on each back end (SQLite's update is two: a relabel, a move).
TRIGGERS = {
    "postgresql": {"item_counts_insert", "item_counts_update", "item_counts_delete"},
    "sqlite": {
        "item_counts_insert",
        "item_counts_relabel",
        "item_counts_move",
        "item_counts_delete",
    },
}


def truth(project_id: int) -> dict[tuple[str, str], int]:
    """What ``item_counts`` must say, counted from the items themselves."""
    with unit_of_work(write=False) as db:
        rows = db.execute(
            select(Item.split, Item.label, func.count())
            .where(Item.project_id == project_id)
            .group_by(Item.split, Item.label)
        ).tuples()
        found: dict[tuple[str, str], int] = {}
        for split, label, n in rows:
            found[(split, ALL_ITEMS)] = found.get((split, ALL_ITEMS), 0) + n
            if label is not None:
                found[(split, label)] = n
        return found


def kept(project_id: int) -> dict[tuple[str, str], int]:
    """What ``item_counts`` says (zero rows left out)."""
    with unit_of_work(write=False) as db:
        rows = db.execute(
            select(ItemCount.split, ItemCount.label, func.sum(ItemCount.n))
            .where(ItemCount.project_id == project_id)
            .group_by(ItemCount.split, ItemCount.label)
        ).tuples()
        return {(split, label): int(n) for split, label, n in rows if n}


def project_read(factory: Factory, user: Any, project: Project) -> dict[str, Any]:
    r = factory.client(user).get(f"/api/projects/{project.id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_triggers_exist_at_head(database_url: str) -> None:
    # A later migration that rebuilds ``items`` on SQLite (batch mode) drops them: it must
    # make them again, or every count goes stale without an error.
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                query = (
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'items'"
                )
            else:
                query = (
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'items'::regclass "
                    "AND NOT tgisinternal"
                )
            names = set(conn.execute(text(query)).scalars())
    finally:
        engine.dispose()
    assert names >= TRIGGERS[engine.dialect.name]


def test_every_writer_keeps_the_counts_exact(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog", "bird"])
    # Rows written by the ORM (a test's factory), in both splits.
    pool = factory.items(project, 40)
    test = factory.items(project, 7, split="test")
    c = factory.client(eng)
    # Labels, a relabel, an undo back to another label and one back to none, through the API.
    first = _label(c, pool[0].id, "cat")
    _label(c, pool[0].id, "dog")
    _label(c, pool[1].id, "cat")
    undone = _label(c, pool[2].id, "bird")
    _label(c, test[0].id, "bird")
    relabel = _label(c, test[1].id, "dog")
    assert c.delete(f"/api/labels/{undone}").status_code == 204
    assert c.delete(f"/api/labels/{first}").status_code == 204  # pool[0] stays dog
    _label(c, test[1].id, "cat")
    assert c.delete(f"/api/labels/{relabel}").status_code == 204  # not its newest: stays cat
    assert kept(project.id) == truth(project.id)
    assert truth(project.id)[("pool", "dog")] == 1
    assert _counts(c, project.id)["unlabeled"] == {"pool": 38, "test": 5}
    body = project_read(factory, eng, project)
    assert body["counts"] == {"items": 47, "labeled": 4, "unlabeled": 43, "rounds": 0}

    # Plain SQL: an update of another column changes nothing, a move between splits (with a
    # label, and with a label changed in the same statement) moves the counts, a delete lowers
    # them.
    with unit_of_work() as db:
        db.execute(update(Item).where(Item.project_id == project.id).values(name="renamed"))
        db.execute(update(Item).where(Item.id.in_([pool[0].id, pool[3].id])).values(split="test"))
        db.execute(update(Item).where(Item.id == pool[4].id).values(split="test", label="cat"))
        db.execute(delete(Item).where(Item.id.in_([pool[1].id, pool[5].id, test[0].id])))
    assert kept(project.id) == truth(project.id)
    assert project_read(factory, eng, project)["counts"]["items"] == 44


def test_an_import_with_labels_counts_its_items_in_one_statement(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["pos", "neg"], kind="text")
    other = factory.project(eng, classes=["pos", "neg"], kind="text")
    c = factory.client(eng)
    rows = [
        [f"text number {i}", "pos" if i % 3 == 0 else ("neg" if i % 3 == 1 else "")]
        for i in range(120)
    ]
    result = imported(factory, c, project, [("a.csv", csv_bytes(["text", "label"], rows))])
    assert result["added"] == 120
    # The same texts again: duplicates, nothing counted twice; and into the test split.
    imported(factory, c, project, [("a.csv", csv_bytes(["text", "label"], rows))])
    imported(
        factory,
        c,
        project,
        [("b.csv", csv_bytes(["text"], [[f"held out {i}"] for i in range(9)]))],
        split="test",
    )
    assert kept(project.id) == truth(project.id)
    assert kept(project.id)[("pool", "pos")] == 40
    assert kept(other.id) == {}
    assert project_read(factory, eng, project)["counts"] == {
        "items": 129,
        "labeled": 80,
        "unlabeled": 49,
        "rounds": 0,
    }


def test_counts_are_spread_over_shards(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 3 * COUNT_SHARDS)
    with unit_of_work(write=False) as db:
        shards = db.execute(
            select(ItemCount.shard, ItemCount.n).where(
                ItemCount.project_id == project.id, ItemCount.label == ALL_ITEMS
            )
        ).all()
    # Consecutive ids: every shard holds three, so concurrent labels rarely share a row.
    assert sorted(shards) == [(k, 3) for k in range(COUNT_SHARDS)]


def test_concurrent_labels_and_relabels_stay_exact_without_deadlock(factory: Factory) -> None:
    workers = 8
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["a", "b"])
    items = factory.items(project, 4 * COUNT_SHARDS)
    clients = [factory.client(eng) for _ in range(workers)]
    errors: list[str] = []

    def work(k: int) -> None:
        c = clients[k]
        # Every worker labels every item, flipping classes: each write moves one item between
        # two rows of its shard, in an order that differs between workers.
        for n, item in enumerate(items[k::2] + items[1 - k % 2 :: 2]):
            label = "a" if (n + k) % 2 else "b"
            r = c.post(
                "/api/labels", json={"item_id": item.id, "label": label, "key": f"c{next(_keys)}"}
            )
            if r.status_code != 201:
                errors.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert kept(project.id) == truth(project.id)
    assert sum(n for (_, label), n in kept(project.id).items() if label) == len(items)


def test_core_sets_and_evaluations_read_the_labelled_counts(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    pool = factory.items(project, 3)
    test = factory.items(project, 2, split="test")
    c = factory.client(eng)
    _label(c, pool[0].id, "cat")
    _label(c, test[0].id, "dog")  # the test split's labels never count for a core-set
    r = c.post(f"/api/projects/{project.id}/coresets", json={"fraction": 0.5, "strategy": "random"})
    assert r.status_code == 422
    assert "the project has 1" in r.json()["detail"]
    undone = _label(c, test[0].id, "cat")
    assert c.delete(f"/api/labels/{undone}").status_code == 204
    first = c.get(f"/api/items/{test[0].id}").json()["labels"][0]["id"]
    assert c.delete(f"/api/labels/{first}").status_code == 204
    r = c.post(f"/api/projects/{project.id}/evaluations", json={})
    assert r.status_code == 422
    assert "labelled items in the test split" in r.json()["detail"]
