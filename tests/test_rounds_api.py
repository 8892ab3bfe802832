"""The rounds API (DESIGN 5): start, 409 and 422 rules, reads, the batch, cancel, events, roles.

Jobs are not run here: ``send`` is replaced by a recorder, so each test sees exactly what would
reach a worker, and when. tests/test_round_runner.py runs the runners themselves.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import select

from app.db import unit_of_work, utcnow
from app.embeddings.schemas import DEFAULT_BACKBONE
from app.items.models import Item
from app.jobs import dispatch
from app.jobs.models import Job, JobStatus
from app.labeling.models import Lease
from app.projects.models import Project
from app.rounds import router as rounds_router
from app.rounds import service as rounds_service
from app.rounds.models import Round, Selection
from app.rounds.schemas import ROUND_STRATEGIES, SCRATCH_ARCHS
from tests.factories import Factory


@pytest.fixture
def sent(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Jobs handed to the broker, each with whether its row was committed when it was sent."""
    calls: list[dict[str, Any]] = []

    def record(*, job_id: int, kind: str) -> None:
        # A fresh session sees only committed rows: the job must be there already.
        with unit_of_work(write=False) as db:
            committed = db.get(Job, job_id) is not None
        calls.append({"job_id": job_id, "kind": kind, "committed": committed})

    monkeypatch.setattr(dispatch, "send", record)
    return calls


@pytest.fixture
def setup(factory: Factory, sent: list[dict[str, Any]]) -> dict[str, Any]:
    """A project with an engineer, an annotator, a stranger and 30 pool items (5 labelled)."""
    eng, ann, stranger = factory.user("engineer"), factory.user("annotator"), factory.user()
    # A from-scratch proxy by name: these tests read its epochs and sizes back.
    project = factory.project(
        eng, members={ann: "annotator"}, proxy_epochs=3, default_proxy="tiny_cnn"
    )
    items = factory.items(project, 30)
    factory.items(project, 4, split="test")
    label(items[:5], "cat")
    return {
        "project": project,
        "items": items,
        "eng": factory.client(eng),
        "ann": factory.client(ann),
        "stranger": factory.client(stranger),
        "anon": factory.anonymous(),
    }


def label(items: list[Any], cls: str) -> None:
    """Give items a current label directly (the labelling API is tested elsewhere)."""
    with unit_of_work() as db:
        for it in items:
            db.get(type(it), it.id).label = cls


def start(c: Any, pid: int, **body: Any) -> Any:
    """POST a round with defaults for what the test does not care about."""
    return c.post(
        f"/api/projects/{pid}/rounds", json={"strategy": "random", "batch_size": 5, **body}
    )


def set_status(round_id: int, status: str) -> None:
    """Put a round (and its job) into a state, as a worker would."""
    with unit_of_work() as db:
        rnd = db.get(Round, round_id)
        assert rnd is not None
        rnd.status = status
        job = db.get(Job, rnd.job_id)
        assert job is not None
        if status == "running":
            job.status, job.stage, job.progress = JobStatus.running, "training", 0.25
        if status == "labeling":
            job.status, job.stage, job.progress = JobStatus.succeeded, "saving", 1.0


def test_engineer_starts_a_round_202_queued_and_sent_after_commit(
    setup: dict[str, Any], sent: list[dict[str, Any]]
) -> None:
    pid = setup["project"].id
    r = start(setup["eng"], pid, strategy="least_confidence", batch_size=7, seed=42)
    assert r.status_code == 202, r.text
    body = r.json()
    expected_keys = {
        "id", "project_id", "number", "status", "stage", "progress", "strategy", "batch_size",
        "proxy", "seed", "labeled", "metrics", "error", "job_id", "created_at", "started_at",
        "finished_at",
    }  # fmt: skip
    assert expected_keys <= set(body)
    assert (body["status"], body["number"], body["seed"], body["labeled"]) == ("queued", 1, 42, 0)
    assert (body["strategy"], body["batch_size"], body["progress"]) == ("least_confidence", 7, 0.0)
    # The proxy's defaults come from the project's settings.
    assert body["proxy"] == {
        "arch": "tiny_cnn",
        "epochs": 3,
        "batch_size": 128,
        "lr": None,
        "image_size": 32,
        "backbone": "efficientnet_lite0",
    }
    assert sent == [{"job_id": body["job_id"], "kind": "round", "committed": True}]
    with unit_of_work(write=False) as db:
        job = db.get(Job, body["job_id"])
        assert job is not None
        assert (job.kind, job.status, job.params) == ("round", "queued", {"round_id": body["id"]})


def test_proxy_overrides_and_a_drawn_seed(setup: dict[str, Any]) -> None:
    proxy = {"arch": "small_cnn", "epochs": 2, "lr": 0.01}
    r = start(setup["eng"], setup["project"].id, proxy=proxy)
    assert r.status_code == 202, r.text
    assert r.json()["proxy"] == {
        "arch": "small_cnn",
        "epochs": 2,
        "batch_size": 128,
        "lr": 0.01,
        "image_size": 32,
        "backbone": "efficientnet_lite0",
    }
    assert isinstance(r.json()["seed"], int)


def test_409_while_a_round_is_queued_or_running(setup: dict[str, Any]) -> None:
    c, pid = setup["eng"], setup["project"].id
    first = start(c, pid).json()
    assert start(c, pid).status_code == 409
    set_status(first["id"], "running")
    r = start(c, pid)
    assert r.status_code == 409
    assert "still queued or running" in r.json()["detail"]
    # DESIGN 5: a batch still being labelled blocks the next round too, unless superseded.
    set_status(first["id"], "labeling")
    r = start(c, pid)
    assert r.status_code == 409
    assert "still being labelled" in r.json()["detail"]
    second = start(c, pid, supersede=True)
    assert second.status_code == 202
    assert second.json()["number"] == 2


def test_concurrent_starts_give_one_round(setup: dict[str, Any], factory: Factory) -> None:
    pid = setup["project"].id
    with unit_of_work(write=False) as db:
        project = db.get(Project, pid)
        assert project is not None
        owner = project.created_by
    from app.auth.models import User

    with unit_of_work(write=False) as db:
        user = db.get(User, owner)
        assert user is not None
    clients = [factory.client(user) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    codes: list[int] = []

    def go(c: Any) -> None:
        barrier.wait()
        codes.append(start(c, pid).status_code)

    threads = [threading.Thread(target=go, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [202, 409, 409, 409]
    with unit_of_work(write=False) as db:
        assert len(db.scalars(select(Round).where(Round.project_id == pid)).all()) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"strategy": "bogus", "batch_size": 5},
        {"strategy": "random", "batch_size": 0},
        {"strategy": "random", "batch_size": -3},
        {"strategy": "random", "batch_size": 5, "proxy": {"arch": "resnet9000"}},
        {"strategy": "random", "batch_size": 5, "proxy": {"epochs": 0}},
        {"strategy": "random", "batch_size": 5, "proxy": {"nope": 1}},
        {"batch_size": 5},
    ],
)
def test_422_for_bad_requests(setup: dict[str, Any], body: dict[str, Any]) -> None:
    r = setup["eng"].post(f"/api/projects/{setup['project'].id}/rounds", json=body)
    assert r.status_code == 422, r.text


def test_422_when_the_batch_is_larger_than_the_unlabelled_pool(setup: dict[str, Any]) -> None:
    c, pid = setup["eng"], setup["project"].id
    r = start(c, pid, batch_size=26)  # 30 pool items, 5 labelled: 25 left; test items don't count
    assert r.status_code == 422
    assert "larger than the 25 unlabelled pool items" in r.json()["detail"]
    assert start(c, pid, batch_size=25).status_code == 202


def test_items_in_an_open_batch_are_not_offered_twice(setup: dict[str, Any]) -> None:
    c, pid, items = setup["eng"], setup["project"].id, setup["items"]
    first = start(c, pid, batch_size=10).json()
    with unit_of_work() as db:
        for rank, it in enumerate(items[5:15]):
            db.add(Selection(round_id=first["id"], item_id=it.id, rank=rank, score=0.5))
    set_status(first["id"], "labeling")
    # While the batch is open its items are someone's work: no second round takes them.
    assert start(c, pid, batch_size=16).status_code == 409
    # Superseding closes the batch: its unlabelled items are back in the pool for the new one.
    r = start(c, pid, batch_size=26, supersede=True)
    assert r.status_code == 422
    assert "larger than the 25" in r.json()["detail"]
    assert start(c, pid, batch_size=25, supersede=True).status_code == 202


def test_422_when_the_pool_is_exhausted(setup: dict[str, Any]) -> None:
    label(setup["items"], "dog")
    r = start(setup["eng"], setup["project"].id, batch_size=1)
    assert r.status_code == 422
    assert "no unlabelled items" in r.json()["detail"]


def test_list_and_get(setup: dict[str, Any]) -> None:
    c, pid = setup["eng"], setup["project"].id
    first = start(c, pid).json()
    set_status(first["id"], "running")
    r = setup["ann"].get(f"/api/rounds/{first['id']}")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["stage"], r.json()["progress"]) == (
        "running",
        "training",
        0.25,
    )
    set_status(first["id"], "labeling")
    second = start(c, pid, supersede=True).json()
    listed = setup["ann"].get(f"/api/projects/{pid}/rounds")
    assert listed.status_code == 200
    assert [x["id"] for x in listed.json()] == [second["id"], first["id"]]


def test_selection_in_rank_order_with_suggestions(setup: dict[str, Any]) -> None:
    rid = start(setup["eng"], setup["project"].id).json()["id"]
    items = setup["items"]
    with unit_of_work() as db:
        # Inserted out of rank order on purpose.
        db.add(Selection(round_id=rid, item_id=items[9].id, rank=1, score=0.4))
        db.add(
            Selection(
                round_id=rid,
                item_id=items[7].id,
                rank=0,
                score=0.9,
                suggested_label="dog",
                suggested_prob=0.6,
            )
        )
    r = setup["ann"].get(f"/api/rounds/{rid}/selection")
    assert r.status_code == 200
    assert r.json() == [
        {
            "item_id": items[7].id,
            "name": items[7].name,
            "rank": 0,
            "score": 0.9,
            "image_url": f"/api/items/{items[7].id}/image",
            "suggestion": {"label": "dog", "confidence": 0.6},
        },
        {
            "item_id": items[9].id,
            "name": items[9].name,
            "rank": 1,
            "score": 0.4,
            "image_url": f"/api/items/{items[9].id}/image",
            "suggestion": {"label": None, "confidence": None},
        },
    ]


def test_cancel_a_queued_round_at_once(setup: dict[str, Any]) -> None:
    c, pid = setup["eng"], setup["project"].id
    rnd = start(c, pid).json()
    r = c.post(f"/api/rounds/{rnd['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    assert r.json()["finished_at"] is not None
    with unit_of_work(write=False) as db:
        job = db.get(Job, rnd["job_id"])
        assert job is not None
        assert (job.status, job.cancel_requested) == ("canceled", True)
    assert c.post(f"/api/rounds/{rnd['id']}/cancel").status_code == 409
    assert start(c, pid).status_code == 202


def test_cancel_a_running_round_asks_its_job_to_stop(setup: dict[str, Any]) -> None:
    c = setup["eng"]
    rnd = start(c, setup["project"].id).json()
    set_status(rnd["id"], "running")
    r = c.post(f"/api/rounds/{rnd['id']}/cancel")
    assert r.status_code == 200
    # The runner stops at its next epoch and cancels the round then.
    assert r.json()["status"] == "running"
    with unit_of_work(write=False) as db:
        job = db.get(Job, rnd["job_id"])
        assert job is not None
        assert (job.status, job.cancel_requested) == ("running", True)


def test_cancel_a_labelling_round_drops_its_leases(setup: dict[str, Any], factory: Factory) -> None:
    c, items = setup["eng"], setup["items"]
    rnd = start(c, setup["project"].id).json()
    annotator = factory.user("annotator")
    with unit_of_work() as db:
        db.add(Selection(round_id=rnd["id"], item_id=items[6].id, rank=0, score=1.0))
        db.add(
            Lease(
                item_id=items[6].id, round_id=rnd["id"], user_id=annotator.id, expires_at=utcnow()
            )
        )
    set_status(rnd["id"], "labeling")
    r = c.post(f"/api/rounds/{rnd['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    with unit_of_work(write=False) as db:
        assert db.scalars(select(Lease).where(Lease.round_id == rnd["id"])).all() == []


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_cancel_a_finished_round_is_409(setup: dict[str, Any], final: str) -> None:
    rnd = start(setup["eng"], setup["project"].id).json()
    with unit_of_work() as db:
        db.get(Round, rnd["id"]).status = final  # type: ignore[union-attr]
    assert setup["eng"].post(f"/api/rounds/{rnd['id']}/cancel").status_code == 409


def test_a_round_follows_a_job_that_ended_without_it(setup: dict[str, Any]) -> None:
    """A job canceled from the job monitor (or failed by the reconciler) frees the project."""
    c, pid = setup["eng"], setup["project"].id
    rnd = start(c, pid).json()
    with unit_of_work() as db:
        job = db.get(Job, rnd["job_id"])
        assert job is not None
        job.status, job.error = JobStatus.failed, "worker lost: no heartbeat for 60 s"
    assert start(c, pid).status_code == 202
    old = c.get(f"/api/rounds/{rnd['id']}").json()
    assert (old["status"], old["error"]) == ("failed", "worker lost: no heartbeat for 60 s")


def test_roles(setup: dict[str, Any]) -> None:
    pid = setup["project"].id
    rid = start(setup["eng"], pid).json()["id"]
    ann, stranger, anon = setup["ann"], setup["stranger"], setup["anon"]
    assert start(ann, pid).status_code == 403
    assert ann.post(f"/api/rounds/{rid}/cancel").status_code == 403
    for path in ("rounds", "coresets", "evaluations"):
        assert ann.get(f"/api/projects/{pid}/{path}").status_code == 200
    assert ann.get(f"/api/rounds/{rid}").status_code == 200
    assert ann.get(f"/api/rounds/{rid}/selection").status_code == 200
    for c, code in ((stranger, 404), (anon, 401)):
        assert start(c, pid).status_code == code
        assert c.get(f"/api/projects/{pid}/rounds").status_code == code
        assert c.get(f"/api/rounds/{rid}").status_code == code
        assert c.get(f"/api/rounds/{rid}/selection").status_code == code
        assert c.get(f"/api/rounds/{rid}/events").status_code == code
        assert c.post(f"/api/rounds/{rid}/cancel").status_code == code
        # Access is checked before the body: the caller learns nothing of the project.
        assert c.post(f"/api/projects/{pid}/coresets", json={}).status_code == code
    assert setup["eng"].get("/api/rounds/999999").status_code == 404
    # The round exists, but the stranger cannot tell it from one that does not.
    assert stranger.get(f"/api/rounds/{rid}").json() == {"detail": "no such round"}


def events(c: Any, rid: int) -> list[dict[str, Any]]:
    """Read the whole SSE stream of a round: the JSON of each ``data:`` line."""
    out = []
    with c.stream("GET", f"/api/rounds/{rid}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:].strip()))
    return out


def test_events_send_the_state_then_each_change_then_close(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = start(setup["eng"], setup["project"].id).json()["id"]
    set_status(rid, "running")

    def set_stage(stage: str, progress: float) -> None:
        with unit_of_work() as db:
            rnd = db.get(Round, rid)
            assert rnd is not None
            job = db.get(Job, rnd.job_id)
            assert job is not None
            job.stage, job.progress = stage, progress

    # The worker's writes, one per look the stream takes at the round (after the first), so the
    # test steps by the stream's own polls instead of racing it with sleeps. None: a look that
    # finds nothing new, which must send nothing.
    changes = iter(
        [
            lambda: set_stage("training", 0.5),
            None,
            lambda: set_stage("scoring", 0.1),
            lambda: set_status(rid, "labeling"),
        ]
    )
    looks = 0
    real_state = rounds_router._state

    def stepping_state(request: Any, round_id: int, db: Any, *, reauth: bool) -> Any:
        nonlocal looks
        looks += 1
        if looks > 1:
            change = next(changes)
            if change is not None:
                change()
        return real_state(request, round_id, db, reauth=reauth)

    monkeypatch.setattr(rounds_router, "_state", stepping_state)
    monkeypatch.setattr(rounds_router, "EVENTS_POLL_SECONDS", 0)
    assert events(setup["ann"], rid) == [
        {"status": "running", "stage": "training", "progress": 0.25},
        {"status": "running", "stage": "training", "progress": 0.5},
        {"status": "running", "stage": "scoring", "progress": 0.1},
        {"status": "labeling", "stage": "saving", "progress": 1.0},
    ]
    # It closed right after the round left running: every change was used, no look was extra.
    assert (looks, next(changes, "none left")) == (5, "none left")


def test_events_of_a_settled_round_send_once_and_close(setup: dict[str, Any]) -> None:
    rid = start(setup["eng"], setup["project"].id).json()["id"]
    setup["eng"].post(f"/api/rounds/{rid}/cancel")
    assert events(setup["ann"], rid) == [{"status": "canceled", "stage": None, "progress": 0.0}]


def test_coreset_and_evaluation_jobs(setup: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    c, pid = setup["eng"], setup["project"].id
    r = c.post(f"/api/projects/{pid}/coresets", json={"fraction": 0.5, "strategy": "forgetting"})
    assert r.status_code == 202, r.text
    assert (r.json()["kind"], r.json()["status"]) == ("coreset", "queued")
    bad = c.post(f"/api/projects/{pid}/coresets", json={"fraction": 0.5, "strategy": "nope"})
    assert bad.status_code == 422
    # Forgetting events need a proxy that trains from scratch: a linear head has none.
    body = {"fraction": 0.5, "strategy": "forgetting", "proxy": {"arch": "linear"}}
    bad = c.post(f"/api/projects/{pid}/coresets", json=body)
    assert bad.status_code == 422
    assert "from scratch" in bad.json()["detail"]
    assert (
        c.post(
            f"/api/projects/{pid}/coresets", json={"fraction": 0, "strategy": "random"}
        ).status_code
        == 422
    )
    # No labelled test items yet: an evaluation has nothing to measure on.
    r = c.post(f"/api/projects/{pid}/evaluations", json={})
    assert r.status_code == 422
    assert "test split" in r.json()["detail"]
    with unit_of_work() as db:
        from app.items.models import Item

        for it in db.scalars(select(Item).where(Item.project_id == pid, Item.split == "test")):
            it.label = "cat"
    r = c.post(f"/api/projects/{pid}/evaluations", json={"target": "preact20", "epochs": 2})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "evaluate"
    assert c.post(f"/api/projects/{pid}/evaluations", json={"target": "vgg"}).status_code == 422
    listed = c.get(f"/api/projects/{pid}/evaluations").json()
    assert [j["id"] for j in listed] == [r.json()["id"]]
    assert [s["kind"] for s in sent] == ["coreset", "evaluate"]


def test_coreset_needs_labels(factory: Factory, sent: list[dict[str, Any]]) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 10)
    r = factory.client(eng).post(
        f"/api/projects/{project.id}/coresets", json={"fraction": 0.5, "strategy": "random"}
    )
    assert r.status_code == 422
    assert sent == []


@pytest.mark.parametrize("auto", [True, False])
def test_a_completed_batch_starts_the_next_round_when_asked(
    factory: Factory, sent: list[dict[str, Any]], auto: bool
) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"}, auto_next_round=auto)
    items = factory.items(project, 10)
    done = factory.round_with_selection(project, items[:3])
    c = factory.client(ann)
    for i, it in enumerate(items[:3]):
        r = c.post("/api/labels", json={"item_id": it.id, "label": "cat", "key": f"k{auto}{i}"})
        assert r.status_code == 201, r.text
    listed = c.get(f"/api/projects/{project.id}/rounds").json()
    assert listed[-1]["status"] == "completed"
    if not auto:
        assert [x["id"] for x in listed] == [done.id]
        assert sent == []
        return
    nxt = listed[0]
    assert (nxt["number"], nxt["status"], nxt["strategy"]) == (2, "queued", done.strategy)
    assert nxt["batch_size"] == 3
    assert nxt["seed"] == done.seed + 1
    # Sent once the label's transaction committed.
    assert sent == [{"job_id": nxt["job_id"], "kind": "round", "committed": True}]


@pytest.mark.parametrize("fault", ["broken_settings", "start_raises"])
def test_the_automatic_next_round_never_fails_the_label_that_completed_a_batch(
    factory: Factory,
    sent: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"}, auto_next_round=True)
    items = factory.items(project, 6)
    done = factory.round_with_selection(project, items[:2])
    if fault == "broken_settings":
        # Settings stored before they were validated (or by an older version) no longer parse.
        with unit_of_work() as db:
            row = db.get(Project, project.id)
            assert row is not None
            row.settings = {"default_proxy": "resnet", "auto_next_round": True}
    else:
        real_start = rounds_service.start_round

        def half_then_raise(db: Any, **kwargs: Any) -> Any:
            # Writes the round and its job first: the savepoint must take both back.
            real_start(db, **kwargs)
            raise RuntimeError("the next round cannot start")

        monkeypatch.setattr(rounds_service, "start_round", half_then_raise)
    c = factory.client(ann)
    for i, it in enumerate(items[:2]):
        lease = c.post(f"/api/projects/{project.id}/queue/next", params={"n": 1})
        assert lease.status_code == 200, lease.text
        r = c.post("/api/labels", json={"item_id": it.id, "label": "cat", "key": f"{fault}{i}"})
        assert r.status_code == 201, r.text
    with unit_of_work(write=False) as db:
        assert db.get(Item, items[1].id).label == "cat"  # type: ignore[union-attr]
        listed = list(
            db.scalars(select(Round).where(Round.project_id == project.id).order_by(Round.id))
        )
    assert (listed[0].id, listed[0].status) == (done.id, "completed")
    if fault == "start_raises":
        # Nothing half-written survives, and no job is sent for a round that does not exist.
        assert len(listed) == 1
        assert sent == []
    else:
        # The stale key falls back to its default; the rest of the settings still hold.
        assert [(x.number, x.status) for x in listed[1:]] == [(2, "queued")]
        assert sent == [{"job_id": listed[1].job_id, "kind": "round", "committed": True}]
        r = factory.client(eng).get(f"/api/projects/{project.id}")
        assert r.status_code == 200, r.text
        assert r.json()["settings"]["default_proxy"] == "linear"


@pytest.mark.parametrize(
    "body",
    [
        {"strategy": "typiclust_v2"},
        {"strategy": "auto", "proxy": {"arch": "linear", "backbone": "vit_giant"}},
        {"strategy": "auto", "proxy": {"arch": "resnet"}},
    ],
)
def test_unknown_names_in_rounds_are_refused(
    factory: Factory, sent: Any, body: dict[str, Any]
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 10)
    r = factory.client(eng).post(
        f"/api/projects/{project.id}/rounds", json={"batch_size": 2, **body}
    )
    assert r.status_code == 422, r.text
    assert sent == []


def test_a_linear_round_stores_its_backbone_and_side(factory: Factory, sent: Any) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 10)
    r = factory.client(eng).post(
        f"/api/projects/{project.id}/rounds", json={"strategy": "auto", "batch_size": 3}
    )
    assert r.status_code == 202, r.text
    assert r.json()["proxy"] == {"arch": "linear", "backbone": DEFAULT_BACKBONE, "image_size": 128}
    assert r.json()["strategy"] == "auto"


def test_openapi_lists_the_names_clients_may_send(factory: Factory) -> None:
    schema = factory.anonymous().get("/openapi.json").json()["components"]["schemas"]
    strategy = schema["RoundCreate"]["properties"]["strategy"]
    assert set(strategy["enum"]) == set(ROUND_STRATEGIES)
    archs = schema["ProxyConfig"]["properties"]["arch"]["anyOf"][0]["enum"]
    assert set(archs) == {"linear", "fasttext", *SCRATCH_ARCHS}


def test_a_new_round_waits_for_the_open_batch_unless_it_supersedes(
    factory: Factory, sent: Any
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    items = factory.items(project, 12)
    open_round = factory.round_with_selection(project, items[:4])
    c = factory.client(eng)
    body = {"strategy": "random", "batch_size": 3}
    r = c.post(f"/api/projects/{project.id}/rounds", json=body)
    assert r.status_code == 409
    assert "supersede" in r.json()["detail"]
    r = c.post(f"/api/projects/{project.id}/rounds", json={**body, "supersede": True})
    assert r.status_code == 202, r.text
    old = c.get(f"/api/rounds/{open_round.id}").json()
    assert old["status"] == "completed"
    assert old["metrics"]["superseded"] is True


def test_a_completed_batch_records_how_often_the_suggestion_was_right(
    factory: Factory, sent: Any
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog", "bird"])
    items = factory.items(project, 3)
    # The factory suggests cat, dog, bird in rank order.
    rnd = factory.round_with_selection(project, items)
    c = factory.client(eng)
    for item, given in zip(items, ["cat", "dog", "cat"], strict=True):
        r = c.post("/api/labels", json={"item_id": item.id, "label": given, "key": f"k{item.id}"})
        assert r.status_code == 201, r.text
    done = c.get(f"/api/rounds/{rnd.id}").json()
    assert done["status"] == "completed"
    assert done["metrics"]["suggestion_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert done["metrics"]["suggestions_checked"] == 3
