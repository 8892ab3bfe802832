"""No collisions: annotators leasing at the same moment, from threads and from processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app import db as app_db
from app.auth.models import User
from app.db import unit_of_work
from app.items.models import Item
from app.labeling import service as labeling
from app.labeling.models import Label
from app.projects.models import Project
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus, Selection
from app.settings import get_settings
from tests.conftest import BACKEND
from tests.factories import PASSWORD, Factory
from tests.procs import stack
from tests.test_labeling import unit_of_work_at


def _drain(client: object, pid: int, who: str, barrier: threading.Barrier | None) -> list[int]:
    """Lease and label until the queue is empty; the items this annotator was given."""
    got: list[int] = []
    if barrier is not None:
        barrier.wait()
    while True:
        r = client.post(f"/api/projects/{pid}/queue/next", params={"n": 3})  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text
        batch = r.json()
        if not batch:
            return got
        for entry in batch:
            got.append(entry["item_id"])
            body = {"item_id": entry["item_id"], "label": "cat", "key": f"{who}-{entry['item_id']}"}
            r = client.post("/api/labels", json=body)  # type: ignore[attr-defined]
            assert r.status_code == 201, r.text


def test_threads_never_share_an_item(factory: Factory) -> None:
    eng = factory.user("engineer")
    annotators = [factory.user("annotator") for _ in range(4)]
    project = factory.project(eng, members=dict.fromkeys(annotators, "annotator"))
    items = factory.items(project, 60)
    rnd = factory.round_with_selection(project, items)
    clients = [factory.client(a) for a in annotators]
    barrier = threading.Barrier(len(clients))
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = _drain(clients[k], project.id, f"t{k}", barrier)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    given = Counter(i for got in results.values() for i in got)
    assert sorted(given) == sorted(i.id for i in items)
    assert max(given.values()) == 1  # no item went to two annotators
    with unit_of_work(write=False) as db:
        per_item = db.execute(select(Label.item_id, func.count()).group_by(Label.item_id)).all()
        status = db.scalar(select(Round.status).where(Round.id == rnd.id))
    assert len(per_item) == len(items)
    assert {n for _, n in per_item} == {1}
    assert status == RoundStatus.completed


def test_concurrent_replays_of_one_key_store_one_label(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    item = factory.items(project, 1)[0]
    # In an open batch: what an annotator may label (DESIGN 5).
    factory.round_with_selection(project, [item])
    clients = [factory.client(ann) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    answers: list[tuple[int, int]] = []

    def post(c: object) -> None:
        barrier.wait()
        r = c.post("/api/labels", json={"item_id": item.id, "label": "dog", "key": "same"})  # type: ignore[attr-defined]
        answers.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=post, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(code for code, _ in answers) == [200, 200, 200, 201]
    assert len({lid for _, lid in answers}) == 1
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Label)) == 1


def _annotator_process(url: str, username: str, pid: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One annotator in its own process, against the real server."""
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/api/auth/login", json={"username": username, "password": PASSWORD})
            r.raise_for_status()
            c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            out.put((username, _drain(c, pid, username, None)))
    except BaseException as exc:
        out.put((username, repr(exc)))


@pytest.mark.slow
def test_processes_never_share_an_item(tmp_path: Path, database_url: str) -> None:
    url = f"sqlite:///{tmp_path / 'procs.sqlite3'}" if BACKEND == "sqlite" else database_url
    names = [f"ann{k}" for k in range(4)]
    with stack(tmp_path, database_url=url) as s:
        # One process first: it makes the first admin (two would race to create it).
        first = s.serve()
        with httpx.Client(base_url=s.url, timeout=30) as admin:
            r = admin.post(
                "/api/auth/login", json={"username": "admin", "password": "admin-password"}
            )
            admin.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            for name in names:
                body = {"username": name, "password": PASSWORD, "role": "annotator"}
                assert admin.post("/api/users", json=body).status_code == 201
            r = admin.post("/api/projects", json={"name": "race", "classes": ["cat", "dog"]})
            pid = r.json()["id"]
            for name in names:
                body = {"username": name, "role": "annotator"}
                assert admin.put(f"/api/projects/{pid}/members", json=body).status_code == 200
        with unit_of_work_at(url) as db:
            ids = list(
                db.scalars(
                    insert(Item).returning(Item.id),
                    [
                        {
                            "project_id": pid,
                            "content_hash": f"{i:064x}",
                            "name": f"p{i}.png",
                            "media_type": "image/png",
                            "width": 8,
                            "height": 8,
                        }
                        for i in range(120)
                    ],
                )
            )
            rnd = Round(
                project_id=pid,
                number=1,
                status=RoundStatus.labeling,
                strategy="random",
                batch_size=len(ids),
                proxy={},
                seed=1,
                metrics={},
            )
            db.add(rnd)
            db.flush()
            round_id = rnd.id
            db.execute(
                insert(Selection),
                [
                    {"round_id": round_id, "item_id": iid, "rank": k, "score": 0.0}
                    for k, iid in enumerate(ids)
                ],
            )
        first.stop()
        # Two server processes, so the race is between database sessions, not one event loop.
        s.serve("--workers", "2")
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_annotator_process, args=(s.url, name, pid, out)) for name in names
        ]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=180) for _ in procs)
        for p in procs:
            p.join(30)
        failures = {k: v for k, v in results.items() if isinstance(v, str)}
        assert not failures, failures
        given = Counter(i for got in results.values() for i in got)
        assert sorted(given) == sorted(ids)
        assert max(given.values()) == 1  # no item went to two annotators
        with unit_of_work_at(url) as db:
            labels = db.scalar(select(func.count()).select_from(Label))
            status = db.scalar(select(Round.status).where(Round.id == round_id))
        assert labels == len(ids)
        assert status == RoundStatus.completed


# More requests at once than the pool's connections (30 or 40) plus the thread pool's 40.
BURST = 150


@pytest.mark.slow
def test_more_requests_than_pooled_connections_do_not_stall(
    tmp_path: Path, database_url: str
) -> None:
    """Regression: a burst beyond pool plus thread pool deadlocked until the 30 s pool timeout."""
    url = f"sqlite:///{tmp_path / 'burst.sqlite3'}" if BACKEND == "sqlite" else database_url
    with stack(tmp_path, database_url=url) as s:
        s.serve()
        with httpx.Client(base_url=s.url, timeout=30) as admin:
            r = admin.post(
                "/api/auth/login", json={"username": "admin", "password": "admin-password"}
            )
            admin.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            pid = admin.post("/api/projects", json={"name": "burst", "classes": ["a"]}).json()["id"]
            csrf = admin.headers["X-CSRF-Token"]
            cookies = dict(admin.cookies)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(
                base_url=s.url,
                timeout=60,
                cookies=cookies,
                headers={"X-CSRF-Token": csrf},
                limits=httpx.Limits(max_connections=BURST),
            ) as c:
                answers = await asyncio.gather(
                    *(c.post(f"/api/projects/{pid}/queue/next") for _ in range(BURST))
                )
            return [a.status_code for a in answers]

        started = time.monotonic()
        codes = asyncio.run(burst())
        assert codes == [200] * BURST
        assert time.monotonic() - started < 25


@pytest.mark.parametrize(("wanted", "expected"), [("2", 2), ("1000", None), ("0", "auto")])
def test_db_concurrency_bounds_the_request_slots(
    settings: object, monkeypatch: pytest.MonkeyPatch, wanted: str, expected: object
) -> None:
    size, overflow = app_db.SQLITE_POOL if BACKEND == "sqlite" else app_db.POSTGRES_POOL
    room = size + overflow - app_db.UNSLOTTED_CONNECTIONS
    monkeypatch.setenv("SVP_DB_CONCURRENCY", wanted)
    get_settings.cache_clear()
    if expected == "auto":
        expected = min(room, 3 * (os.cpu_count() or 1))
    elif expected is None:
        expected = room  # never more than the pool can serve: a slot is a connection
    assert app_db.request_slot_count() == expected


def _label_at_once(
    c: object, item_id: int, key: str, barrier: threading.Barrier, codes: list[int]
) -> None:
    barrier.wait()
    body = {"item_id": item_id, "label": "cat", "key": f"{key}-{item_id}"}
    codes.append(c.post("/api/labels", json=body).status_code)  # type: ignore[attr-defined]


def test_the_last_items_labelled_at_once_complete_their_round(factory: Factory) -> None:
    # Each annotator holds one of the batch's last items; all label at the same moment, so
    # each label's transaction may see the others' items still open. Exactly the round's
    # completion must come out of it, every time (on PostgreSQL: after the labels commit).
    eng = factory.user("engineer")
    annotators = [factory.user("annotator") for _ in range(6)]
    project = factory.project(eng, members=dict.fromkeys(annotators, "annotator"))
    clients = [factory.client(a) for a in annotators]
    for trial in range(5):
        items = factory.items(project, len(clients))
        rnd = factory.round_with_selection(project, items)
        held = []
        for c in clients:
            r = c.post(f"/api/projects/{project.id}/queue/next", params={"n": 1})
            assert r.status_code == 200, r.text
            held.append(r.json()[0]["item_id"])
        assert sorted(held) == sorted(i.id for i in items)
        barrier = threading.Barrier(len(clients))
        codes: list[int] = []
        threads = [
            threading.Thread(target=_label_at_once, args=(c, i, f"last-{trial}", barrier, codes))
            for c, i in zip(clients, held, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert codes == [201] * len(clients)
        with unit_of_work(write=False) as db:
            done = db.get(Round, rnd.id)
            assert done is not None
            assert (trial, done.status) == (trial, RoundStatus.completed)
            assert done.finished_at is not None


def test_a_round_whose_completion_never_ran_completes_at_the_next_empty_queue(
    factory: Factory,
) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    items = factory.items(project, 3)
    rnd = factory.round_with_selection(project, items)
    # As if the server died between the last label's commit and its round's completion.
    with unit_of_work() as db:
        db.execute(update(Selection).where(Selection.round_id == rnd.id).values(labeled=True))
    c = factory.client(ann)
    r = c.post(f"/api/projects/{project.id}/queue/next")
    assert (r.status_code, r.json()) == (200, [])
    with unit_of_work(write=False) as db:
        assert db.scalar(select(Round.status).where(Round.id == rnd.id)) == RoundStatus.completed


def test_an_undo_while_its_round_completes_reopens_the_round(factory: Factory) -> None:
    last = _label_last_without_completion(factory)

    def complete(db: Session) -> None:
        assert rounds.complete_round(db, round_id=last.round.id)

    seen = _while_held(
        complete, lambda: last.client.delete(f"/api/labels/{last.label_id}").status_code
    )
    # The undo waits for the completion's round lock instead of missing the round it completes.
    assert seen == [-1, 204]
    with unit_of_work(write=False) as db:
        status = db.scalar(select(Round.status).where(Round.id == last.round.id))
        assert status == RoundStatus.labeling
        assert db.scalar(select(Item.label).where(Item.id == last.item_id)) is None


class LastLabel(NamedTuple):
    """A round whose last label has committed but whose completion has not run."""

    round: Round
    engineer: User
    client: Any
    label_id: int
    item_id: int


def _label_last_without_completion(factory: Factory) -> LastLabel:
    """A round of two items whose last label has committed but whose completion has not run,
    and one pool item outside it; labelled by an engineer through their client."""
    eng = factory.user("engineer")
    project = factory.project(eng)
    first, last, _ = factory.items(project, 3)
    rnd = factory.round_with_selection(project, [first, last])
    c = factory.client(eng)
    r = c.post("/api/labels", json={"item_id": first.id, "label": "cat", "key": "first"})
    assert r.status_code == 201, r.text
    with unit_of_work() as db:
        read, created, maybe_done = labeling.store_label(
            db, user=eng, item_id=last.id, label="cat", key="last"
        )
    assert (created, maybe_done) == (True, [rnd.id])
    return LastLabel(rnd, eng, c, read.id, last.id)


def _while_held(hold: Callable[[Session], None], act: Callable[[], int]) -> list[int]:
    """``act`` (a request) started while ``hold``'s transaction is open; its status codes: none
    while the transaction stays open half a second, one once it has committed."""
    holding, release = threading.Event(), threading.Event()

    def run_hold() -> None:
        with unit_of_work() as db:
            hold(db)
            holding.set()
            release.wait(30)  # commits when this block ends

    held = threading.Thread(target=run_hold)
    held.start()
    assert holding.wait(30)
    codes: list[int] = []
    acting = threading.Thread(target=lambda: codes.append(act()))
    acting.start()
    time.sleep(0.5)
    waited = list(codes)
    release.set()
    held.join(30)
    acting.join(30)
    return [*waited, -1, *codes]


def test_a_cancel_racing_its_rounds_completion_never_overwrites_completed(
    factory: Factory,
) -> None:
    last = _label_last_without_completion(factory)
    rnd = last.round

    def complete(db: Session) -> None:
        assert rounds.complete_round(db, round_id=rnd.id)

    seen = _while_held(
        complete, lambda: last.client.post(f"/api/rounds/{rnd.id}/cancel").status_code
    )
    # The cancel waits for the completion's lock, then finds the round completed.
    assert seen == [-1, 409]
    with unit_of_work(write=False) as db:
        assert db.scalar(select(Round.status).where(Round.id == rnd.id)) == RoundStatus.completed


def test_an_undo_racing_a_new_round_never_leaves_two_rounds_labelling(factory: Factory) -> None:
    last = _label_last_without_completion(factory)
    rnd, eng = last.round, last.engineer
    with unit_of_work() as db:
        assert rounds.complete_round(db, round_id=rnd.id)
    new_round: list[int] = []

    def start(db: Session) -> None:
        project = db.get(Project, rnd.project_id)
        assert project is not None
        started = rounds.start_round(
            db,
            project=project,
            strategy="random",
            batch_size=1,
            proxy=None,
            seed=1,
            created_by=eng.id,
        )
        new_round.append(started.id)

    seen = _while_held(
        start, lambda: last.client.delete(f"/api/labels/{last.label_id}").status_code
    )
    # The undo waits for the round start (the project's lock), then sees the newer round and
    # leaves the older batch closed: its item goes back to the pool, not to a second queue.
    assert seen == [-1, 204]
    with unit_of_work(write=False) as db:
        assert db.scalar(select(Round.status).where(Round.id == rnd.id)) == RoundStatus.completed
        (started,) = new_round
        assert db.get(Round, started) is not None
