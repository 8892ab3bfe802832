"""The labelling queue and labels: order, leases, idempotent labels, undo, refusals, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import make_engine, unit_of_work, utcnow
from app.items.models import Item
from app.labeling import service as labeling
from app.labeling.models import Label, Lease
from app.projects.models import Member, Project
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus
from tests.conftest import BACKEND, POSTGRES_URL
from tests.factories import PASSWORD, Factory
from tests.procs import stack


def _setup(
    factory: Factory, n_items: int = 6, batch: int | None = None
) -> tuple[Project, list[Item], User, User, User]:
    eng, ann1, ann2 = factory.user("engineer"), factory.user("annotator"), factory.user("annotator")
    project = factory.project(eng, members={ann1: "annotator", ann2: "annotator"})
    items = factory.items(project, n_items)
    if batch != 0:
        # batch=0: no labelling round yet (the test writes its own).
        factory.round_with_selection(project, items[: batch or n_items])
    return project, items, eng, ann1, ann2


def _next(c: object, pid: int, n: int = 10) -> list[dict[str, object]]:
    r = c.post(f"/api/projects/{pid}/queue/next", params={"n": n})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _ids(entries: list[dict[str, object]]) -> list[object]:
    return [e["item_id"] for e in entries]


@contextmanager
def unit_of_work_at(url: str) -> Iterator[Session]:
    """A transaction on the database a server subprocess uses, from the test's side."""
    engine = make_engine(url)
    try:
        with Session(engine) as db, db.begin():
            yield db
    finally:
        engine.dispose()


def _round_status(round_id: int) -> str:
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, round_id)
        assert rnd is not None
        return rnd.status


def test_queue_leases_in_rank_order_with_the_batch_entry_shape(factory: Factory) -> None:
    project, items, _, ann1, _ = _setup(factory)
    entries = _next(factory.client(ann1), project.id, n=3)
    assert _ids(entries) == [i.id for i in items[:3]]
    first = entries[0]
    assert set(first) == {
        "item_id",
        "name",
        "rank",
        "score",
        "image_url",
        "suggestion",
        "lease_expires_at",
    }
    assert first["image_url"] == f"/api/items/{items[0].id}/image"
    assert first["name"] == items[0].name
    assert first["rank"] == 0
    assert first["suggestion"] == {"label": "cat", "confidence": 0.5}


def test_rank_not_id_decides_the_order(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    items = factory.items(project, 5)
    ranked = list(reversed(items))
    factory.round_with_selection(project, ranked)
    assert _ids(_next(factory.client(ann), project.id, n=5)) == [i.id for i in ranked]


def test_two_annotators_get_disjoint_items(factory: Factory) -> None:
    project, items, _, ann1, ann2 = _setup(factory)
    a = _ids(_next(factory.client(ann1), project.id, n=3))
    b = _ids(_next(factory.client(ann2), project.id, n=3))
    assert a == [i.id for i in items[:3]]
    assert b == [i.id for i in items[3:6]]
    late = factory.user("annotator")
    with unit_of_work() as db:
        db.add(Member(project_id=project.id, user_id=late.id, role="annotator"))
    assert _next(factory.client(late), project.id) == []


def test_own_leases_come_first_and_are_renewed(factory: Factory) -> None:
    project, items, _, ann1, _ = _setup(factory)
    c = factory.client(ann1)
    first = _next(c, project.id, n=2)
    # Shorten the lease so renewal is visible.
    with unit_of_work() as db:
        db.execute(update(Lease).values(expires_at=utcnow() + timedelta(seconds=30)))
    again = _next(c, project.id, n=4)
    assert _ids(again) == [i.id for i in items[:4]]
    assert all(e["lease_expires_at"] > first[0]["lease_expires_at"] for e in again[:2])  # type: ignore[operator]
    with unit_of_work(write=False) as db:
        soonest = min(db.scalars(select(Lease.expires_at)))
    assert soonest > utcnow() + timedelta(seconds=500)
    # A reload with a smaller n answers from the caller's own leases, losing nothing.
    assert _ids(_next(c, project.id, n=2)) == [i.id for i in items[:2]]
    with unit_of_work(write=False) as db:
        held = set(db.scalars(select(Lease.item_id).where(Lease.user_id == ann1.id)))
    assert held == {i.id for i in items[:4]}


def test_expired_lease_returns_the_item_to_the_queue(factory: Factory) -> None:
    project, items, _, ann1, ann2 = _setup(factory, n_items=2)
    assert _ids(_next(factory.client(ann1), project.id)) == [items[0].id, items[1].id]
    other = factory.client(ann2)
    assert _next(other, project.id) == []
    with unit_of_work() as db:
        db.execute(
            update(Lease)
            .where(Lease.item_id == items[1].id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )
    assert _ids(_next(other, project.id)) == [items[1].id]
    with unit_of_work(write=False) as db:
        lease = db.scalar(select(Lease).where(Lease.item_id == items[1].id))
        assert lease is not None
        assert lease.user_id == ann2.id
        assert lease.expires_at > utcnow()


def test_a_lease_that_ran_out_returns_the_item_to_its_holder_too(factory: Factory) -> None:
    # A solo annotator who looked away past their lease: the item is back in everyone's queue,
    # theirs included, at once (only a skip keeps an item from its skipper for a while).
    project, items, _, ann1, _ = _setup(factory, n_items=2)
    c = factory.client(ann1)
    assert _ids(_next(c, project.id)) == [items[0].id, items[1].id]
    now = utcnow()
    with unit_of_work() as db:
        db.execute(
            update(Lease)
            .where(Lease.item_id == items[1].id)
            .values(created_at=now - timedelta(minutes=11), expires_at=now - timedelta(minutes=1))
        )
    assert _ids(_next(c, project.id)) == [items[0].id, items[1].id]
    with unit_of_work(write=False) as db:
        lease = db.scalar(select(Lease).where(Lease.item_id == items[1].id))
        assert lease is not None
        assert (lease.user_id, lease.expires_at > utcnow()) == (ann1.id, True)


def test_removing_or_disabling_an_annotator_frees_their_items_at_once(factory: Factory) -> None:
    project, items, eng, ann1, ann2 = _setup(factory, n_items=4)
    assert _ids(_next(factory.client(ann1), project.id, n=2)) == [items[0].id, items[1].id]
    assert _ids(_next(factory.client(ann2), project.id, n=2)) == [items[2].id, items[3].id]
    e = factory.client(eng)
    assert _next(e, project.id) == []
    # Removed from the project: what they held is everyone's again, not in a lease's time.
    assert e.delete(f"/api/projects/{project.id}/members/{ann1.id}").status_code == 204
    assert _ids(_next(e, project.id)) == [items[0].id, items[1].id]
    admin = factory.client(factory.user("admin"))
    r = admin.patch(f"/api/users/{ann2.id}", json={"active": False})
    assert r.status_code == 200, r.text
    assert _ids(_next(e, project.id)) == [i.id for i in items]
    with unit_of_work(write=False) as db:
        holders = set(db.scalars(select(Lease.user_id)))
    assert holders == {eng.id}


def test_skip_gives_the_item_to_others_not_back_to_the_skipper(factory: Factory) -> None:
    project, items, _, ann1, ann2 = _setup(factory, n_items=3)
    c = factory.client(ann1)
    assert _ids(_next(c, project.id, n=1)) == [items[0].id]
    r = c.post(f"/api/projects/{project.id}/queue/skip", json={"item_id": items[0].id})
    assert r.status_code == 204
    # The skipper moves on; someone else gets the skipped item first.
    assert _ids(_next(c, project.id, n=1)) == [items[1].id]
    assert _ids(_next(factory.client(ann2), project.id, n=1)) == [items[0].id]
    # Holding no lease (any more) is a conflict, an item of another project is not found.
    again = c.post(f"/api/projects/{project.id}/queue/skip", json={"item_id": items[0].id})
    assert again.status_code == 409
    foreign = factory.items(factory.project(factory.user("engineer")), 1)[0]
    r = c.post(f"/api/projects/{project.id}/queue/skip", json={"item_id": foreign.id})
    assert r.status_code == 404
    r = c.post(f"/api/projects/{project.id}/queue/skip", json={"item": 1})
    assert r.status_code == 422


def test_nothing_to_label_answers_an_empty_list(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    items = factory.items(project, 2)
    c = factory.client(ann)
    assert _next(c, project.id) == []  # no round at all
    factory.round_with_selection(project, items, status="running")
    assert _next(c, project.id) == []  # a round still selecting
    rnd = factory.round_with_selection(project, items)
    for i, entry in enumerate(_next(c, project.id)):
        r = c.post(
            "/api/labels", json={"item_id": entry["item_id"], "label": "dog", "key": f"k{i}"}
        )
        assert r.status_code == 201
    assert _next(c, project.id) == []  # batch done
    assert _round_status(rnd.id) == RoundStatus.completed


def test_n_is_bounded(factory: Factory) -> None:
    project, _, _, ann1, _ = _setup(factory)
    c = factory.client(ann1)
    for bad in (0, 101, "x"):
        r = c.post(f"/api/projects/{project.id}/queue/next", params={"n": bad})
        assert r.status_code == 422


def test_label_is_idempotent_by_key(factory: Factory) -> None:
    project, items, _, ann1, ann2 = _setup(factory)
    c = factory.client(ann1)
    _next(c, project.id, n=1)
    body = {"item_id": items[0].id, "label": "dog", "key": "abc-1"}
    r = c.post("/api/labels", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "item_id", "label", "user", "created_at"}
    assert (created["item_id"], created["label"], created["user"]) == (
        items[0].id,
        "dog",
        ann1.username,
    )
    replay = c.post("/api/labels", json={**body, "label": "cat"})
    assert replay.status_code == 200
    assert replay.json() == created
    assert factory.client(ann2).post("/api/labels", json=body).status_code == 409
    with unit_of_work(write=False) as db:
        assert len(db.scalars(select(Label)).all()) == 1
        item = db.get(Item, items[0].id)
        assert item is not None
        assert item.label == "dog"
        # The caller's lease on the item is released with the label.
        assert db.scalar(select(Lease).where(Lease.item_id == items[0].id)) is None


def test_bad_labels_are_refused_and_change_nothing(factory: Factory) -> None:
    _, items, _, ann1, _ = _setup(factory)
    c = factory.client(ann1)
    r = c.post("/api/labels", json={"item_id": items[0].id, "label": "horse", "key": "k1"})
    assert r.status_code == 422
    assert "horse" in r.json()["detail"]
    assert "cat" in r.json()["detail"]
    foreign = factory.items(factory.project(factory.user("engineer")), 1)[0]
    r = c.post("/api/labels", json={"item_id": foreign.id, "label": "cat", "key": "k2"})
    assert r.status_code == 404
    r = c.post("/api/labels", json={"item_id": 999_999, "label": "cat", "key": "k3"})
    assert r.status_code == 404
    for bad in (
        {"item_id": items[0].id, "label": "cat"},
        {"item_id": items[0].id, "label": "cat", "key": ""},
        {"item_id": items[0].id, "label": "cat", "key": "k" * 129},
        {"item_id": "x", "label": "cat", "key": "k4"},
        {"label": "cat", "key": "k5"},
    ):
        assert c.post("/api/labels", json=bad).status_code == 422, bad
    r = c.post("/api/labels", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422
    with unit_of_work(write=False) as db:
        assert db.scalars(select(Label)).all() == []
        assert db.scalars(select(Item.label).where(Item.label.is_not(None))).all() == []


def test_engineer_may_label_items_outside_the_batch(factory: Factory) -> None:
    project, items, eng, _, _ = _setup(factory, n_items=4, batch=2)
    c = factory.client(eng)
    r = c.post("/api/labels", json={"item_id": items[3].id, "label": "bird", "key": "e1"})
    assert r.status_code == 201
    test_item = factory.items(project, 1, split="test")[0]
    r = c.post("/api/labels", json={"item_id": test_item.id, "label": "bird", "key": "e2"})
    assert r.status_code == 201


def test_what_an_annotator_may_label(factory: Factory) -> None:
    project, items, eng, ann1, ann2 = _setup(factory, n_items=5, batch=3)
    test_item = factory.items(project, 1, split="test")[0]
    c1, c2, ce = factory.client(ann1), factory.client(ann2), factory.client(eng)

    def post(c: object, item: Item, key: str) -> int:
        body = {"item_id": item.id, "label": "cat", "key": key}
        return int(c.post("/api/labels", json=body).status_code)  # type: ignore[attr-defined]

    # The test split is the ground truth of every accuracy: engineers only.
    assert post(c1, test_item, "a1") == 403
    # A pool item outside the open batch: not the annotator's to label here.
    assert post(c1, items[4], "a2") == 403
    # An item another annotator holds: 409, a state that passes, not a missing right.
    held = _ids(_next(c2, project.id, n=1))
    assert held == [items[0].id]
    assert post(c1, items[0], "a3") == 409
    # Their own lease, and an item of the batch nobody holds, are fine.
    assert _ids(_next(c1, project.id, n=1)) == [items[1].id]
    assert post(c1, items[1], "a4") == 201
    assert post(c1, items[2], "a5") == 201
    # Once the holder skips it, the item is anyone's.
    assert c2.post(f"/api/projects/{project.id}/queue/skip", json={"item_id": items[0].id})
    assert post(c1, items[0], "a6") == 201
    with unit_of_work(write=False) as db:
        assert db.get(Item, test_item.id).label is None  # type: ignore[union-attr]
        assert db.get(Item, items[4].id).label is None  # type: ignore[union-attr]
    # Engineers keep labelling anything, over a lease too.
    assert post(ce, test_item, "e1") == 201
    assert post(ce, items[4], "e2") == 201


def test_a_project_may_let_annotators_label_any_pool_item(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"}, annotators_label_any_pool_item=True)
    pool = factory.items(project, 2)
    test_item = factory.items(project, 1, split="test")[0]
    c = factory.client(ann)
    r = c.post("/api/labels", json={"item_id": pool[0].id, "label": "dog", "key": "p1"})
    assert r.status_code == 201, r.text
    r = c.post("/api/labels", json={"item_id": test_item.id, "label": "dog", "key": "p2"})
    assert r.status_code == 403


def test_refusals_without_the_right(factory: Factory) -> None:
    project, items, _, ann1, _ = _setup(factory)
    anon = factory.anonymous()
    assert anon.post(f"/api/projects/{project.id}/queue/next").status_code == 401
    assert (
        anon.post(f"/api/projects/{project.id}/queue/skip", json={"item_id": 1}).status_code == 401
    )
    body = {"item_id": items[0].id, "label": "cat", "key": "r1"}
    assert anon.post("/api/labels", json=body).status_code == 401
    assert anon.delete("/api/labels/1").status_code == 401
    stranger = factory.client(factory.user("annotator"))
    assert stranger.post(f"/api/projects/{project.id}/queue/next").status_code == 404
    assert stranger.post("/api/labels", json=body).status_code == 404
    # A cookie session without its CSRF token may not write.
    c = factory.client(ann1)
    del c.headers["X-CSRF-Token"]
    assert c.post(f"/api/projects/{project.id}/queue/next").status_code == 403
    assert c.post("/api/labels", json=body).status_code == 403
    # A bearer token needs no CSRF token.
    t = factory.token_client(ann1)
    assert t.post("/api/labels", json=body).status_code == 201
    with unit_of_work(write=False) as db:
        assert len(db.scalars(select(Label)).all()) == 1


def test_undo_rules(factory: Factory) -> None:
    project, items, eng, ann1, ann2 = _setup(factory, n_items=3)
    c1, c2 = factory.client(ann1), factory.client(eng)
    first = c1.post("/api/labels", json={"item_id": items[0].id, "label": "cat", "key": "u1"})
    # An engineer labels over it (an annotator may not: tests/test_faults.py, the late label).
    second = c2.post("/api/labels", json={"item_id": items[0].id, "label": "dog", "key": "u2"})
    assert (first.status_code, second.status_code) == (201, 201)
    lid1, lid2 = first.json()["id"], second.json()["id"]
    # Another user, annotator of the project, may not undo it; a stranger does not see it.
    assert c1.delete(f"/api/labels/{lid2}").status_code == 403
    assert factory.client(ann2).delete(f"/api/labels/{lid1}").status_code == 403
    stranger = factory.client(factory.user("engineer"))
    assert stranger.delete(f"/api/labels/{lid2}").status_code == 404
    assert c1.delete("/api/labels/999999").status_code == 404
    # Its author undoes it: the item falls back to the newest live label.
    assert c2.delete(f"/api/labels/{lid2}").status_code == 204
    assert c2.delete(f"/api/labels/{lid2}").status_code == 204  # undo is idempotent
    with unit_of_work(write=False) as db:
        item = db.get(Item, items[0].id)
        assert item is not None
        assert item.label == "cat"
        undone = db.get(Label, lid2)
        assert undone is not None
        assert undone.undone_at is not None  # kept, marked: the history stays whole
    # An engineer of the project undoes anyone's: no live label left, the item is open again.
    assert factory.client(eng).delete(f"/api/labels/{lid1}").status_code == 204
    with unit_of_work(write=False) as db:
        item = db.get(Item, items[0].id)
        assert item is not None
        assert item.label is None
    assert items[0].id in _ids(_next(c1, project.id))
    # An admin may undo too.
    third = c1.post("/api/labels", json={"item_id": items[1].id, "label": "cat", "key": "u3"})
    admin = factory.client(factory.user("admin"))
    assert admin.delete(f"/api/labels/{third.json()['id']}").status_code == 204


def test_round_completes_with_its_batch_and_reopens_on_undo(factory: Factory) -> None:
    project, items, _, ann1, _ = _setup(factory, n_items=4, batch=3)
    with unit_of_work(write=False) as db:
        rnd = db.scalar(select(Round).where(Round.project_id == project.id))
        assert rnd is not None
    c = factory.client(ann1)

    def labeled() -> int:
        r = c.get(f"/api/rounds/{rnd.id}")
        assert r.status_code == 200, r.text
        assert (
            c.get(f"/api/projects/{project.id}/rounds").json()[0]["labeled"] == r.json()["labeled"]
        )
        return int(r.json()["labeled"])

    label_ids = []
    for i, item in enumerate(items[:3]):
        assert _round_status(rnd.id) == RoundStatus.labeling
        assert labeled() == i
        r = c.post("/api/labels", json={"item_id": item.id, "label": "cat", "key": f"c{i}"})
        assert r.status_code == 201
        label_ids.append(r.json()["id"])
    assert _round_status(rnd.id) == RoundStatus.completed
    assert labeled() == 3
    with unit_of_work(write=False) as db:
        done = db.get(Round, rnd.id)
        assert done is not None
        assert done.finished_at is not None
    assert c.delete(f"/api/labels/{label_ids[1]}").status_code == 204
    assert _round_status(rnd.id) == RoundStatus.labeling
    assert labeled() == 2
    with unit_of_work(write=False) as db:
        reopened = db.get(Round, rnd.id)
        assert reopened is not None
        assert reopened.finished_at is None
    assert _ids(_next(c, project.id)) == [items[1].id]
    r = c.post("/api/labels", json={"item_id": items[1].id, "label": "dog", "key": "c9"})
    assert r.status_code == 201
    assert _round_status(rnd.id) == RoundStatus.completed
    assert labeled() == 3


def test_older_round_stays_closed_after_an_undo(factory: Factory) -> None:
    project, items, _, ann1, _ = _setup(factory, n_items=3, batch=1)
    c = factory.client(ann1)
    r = c.post("/api/labels", json={"item_id": items[0].id, "label": "cat", "key": "o1"})
    first_round = factory.round_with_selection(project, items[1:2])
    with unit_of_work(write=False) as db:
        older = db.scalar(select(Round).where(Round.project_id == project.id, Round.number == 1))
        assert older is not None
        assert older.status == RoundStatus.completed
    assert c.delete(f"/api/labels/{r.json()['id']}").status_code == 204
    assert _round_status(older.id) == RoundStatus.completed
    assert _ids(_next(c, project.id)) == [items[1].id]
    assert first_round.number == 2


@pytest.mark.slow
def test_labels_survive_a_killed_server(tmp_path: Path, database_url: str) -> None:
    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path / 'restart.sqlite3'}"
    else:
        url = database_url
        assert url != POSTGRES_URL
    with stack(tmp_path, database_url=url) as s:
        server = s.serve()
        admin = httpx.Client(base_url=s.url, timeout=30)
        r = admin.post("/api/auth/login", json={"username": "admin", "password": "admin-password"})
        assert r.status_code == 200
        admin.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        for name in ("ann",):
            body = {"username": name, "password": PASSWORD, "role": "annotator"}
            assert admin.post("/api/users", json=body).status_code == 201
        # The annotator labels pool items with no round: the project lets them (DESIGN 5).
        body = {
            "name": "restart",
            "classes": ["cat", "dog"],
            "settings": {"annotators_label_any_pool_item": True},
        }
        r = admin.post("/api/projects", json=body)
        pid = r.json()["id"]
        r = admin.put(f"/api/projects/{pid}/members", json={"username": "ann", "role": "annotator"})
        assert r.status_code == 200
        with unit_of_work_at(url) as db:
            for i in range(20):
                db.add(
                    Item(
                        project_id=pid,
                        content_hash=f"{i:064x}",
                        name=f"r{i}.png",
                        media_type="image/png",
                        width=8,
                        height=8,
                    )
                )
        ann = httpx.Client(base_url=s.url, timeout=30)
        r = ann.post("/api/auth/login", json={"username": "ann", "password": PASSWORD})
        ann.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        with unit_of_work_at(url) as db:
            ids = list(db.scalars(select(Item.id).where(Item.project_id == pid).order_by(Item.id)))
        stored = {}
        for i, iid in enumerate(ids):
            r = ann.post("/api/labels", json={"item_id": iid, "label": "dog", "key": f"s{i}"})
            assert r.status_code == 201, r.text
            stored[r.json()["id"]] = iid
        server.kill()  # SIGKILL: no shutdown hook runs
        server.popen.wait(10)
        s.serve()
        r = ann.post("/api/auth/login", json={"username": "ann", "password": PASSWORD})
        ann.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        with unit_of_work_at(url) as db:
            rows = dict(db.execute(select(Label.id, Label.item_id)).tuples().all())
            labelled = db.scalars(select(Item.label).where(Item.project_id == pid)).all()
        assert rows == stored
        assert labelled == ["dog"] * 20
        # Replays after the restart still answer with the stored labels.
        r = ann.post("/api/labels", json={"item_id": ids[0], "label": "dog", "key": "s0"})
        assert r.status_code == 200
        admin.close()
        ann.close()


def _entries(items: list[Item]) -> list[dict[str, object]]:
    return [
        {
            "item_id": it.id,
            "rank": rank,
            "score": 1.0,
            "suggested_label": "cat",
            "suggested_prob": 0.9,
            "labeled": False,
        }
        for rank, it in enumerate(items)
    ]


def test_items_labelled_while_the_proxy_trained_are_saved_labelled(factory: Factory) -> None:
    project, items, eng, ann1, _ = _setup(factory, n_items=4, batch=0)
    rnd = factory.round_with_selection(project, [], status="running")
    # An engineer labels an item of the pool while the round's proxy trains.
    r = factory.client(eng).post(
        "/api/labels", json={"item_id": items[0].id, "label": "dog", "key": "t0"}
    )
    assert r.status_code == 201, r.text
    with unit_of_work() as db:
        assert rounds.save_batch(db, round_id=rnd.id, entries=_entries(items[:2]), metrics={})
    assert _round_status(rnd.id) == RoundStatus.labeling
    c = factory.client(ann1)
    assert c.get(f"/api/rounds/{rnd.id}").json()["labeled"] == 1
    assert _ids(_next(c, project.id)) == [items[1].id]
    r = c.post("/api/labels", json={"item_id": items[1].id, "label": "cat", "key": "t1"})
    assert r.status_code == 201, r.text
    assert _round_status(rnd.id) == RoundStatus.completed


def test_a_batch_labelled_before_it_was_saved_completes_its_round_at_once(
    factory: Factory,
) -> None:
    project, items, eng, _, _ = _setup(factory, n_items=3, batch=0)
    rnd = factory.round_with_selection(project, [], status="running")
    c = factory.client(eng)
    for i, it in enumerate(items[:2]):
        r = c.post("/api/labels", json={"item_id": it.id, "label": "bird", "key": f"b{i}"})
        assert r.status_code == 201, r.text
    with unit_of_work() as db:
        assert rounds.save_batch(db, round_id=rnd.id, entries=_entries(items[:2]), metrics={})
    assert _round_status(rnd.id) == RoundStatus.completed
    got = c.get(f"/api/rounds/{rnd.id}").json()
    assert got["labeled"] == 2
    assert got["metrics"]["suggestion_accuracy"] == 0.0


@pytest.mark.skipif(BACKEND != "postgres", reason="synchronous_commit is PostgreSQL's")
def test_only_the_lease_commits_without_waiting_for_the_disk(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    items = factory.items(project, 2)
    factory.round_with_selection(project, items)
    setting = "SELECT current_setting('synchronous_commit')"
    with unit_of_work() as db:
        assert len(labeling.next_batch(db, project_id=project.id, user=eng, n=1).entries) == 1
        assert db.scalar(text(setting)) == "off"  # leases: soft state
    # The pooled connection is back to the server's default for whatever runs next: a label.
    for k in range(3):
        with unit_of_work() as db:
            assert db.scalar(text(setting)) == "on"
            labeling.store_label(db, user=eng, item_id=items[0].id, label="cat", key=f"k{k}")
            assert db.scalar(text(setting)) == "on"
