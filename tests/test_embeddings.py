"""Embedding jobs and the linear proxy on the server's side (DESIGN 4b), without a worker.

The API that starts embedding jobs, the validation of backbones, strategies and settings when
they are written, chunk claims between workers, superseding a batch, and the suggestion accuracy
a completed round records. tests/test_round_runner.py and tests/test_e2e.py run the workers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.db import unit_of_work, utcnow
from app.embeddings import service as embeddings
from app.embeddings.models import EmbedChunk
from app.embeddings.schemas import BUILTIN_BACKBONES, DEFAULT_BACKBONE, known_backbones
from app.jobs import dispatch
from app.jobs.models import Job
from app.rounds.schemas import ROUND_STRATEGIES, SCRATCH_ARCHS
from tests.factories import Factory


@pytest.fixture
def sent(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Jobs that would reach a worker, in order; nothing runs."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: calls.append((job_id, kind)))
    return calls


def test_the_default_backbone_ships_with_the_package() -> None:
    assert DEFAULT_BACKBONE in known_backbones()
    assert known_backbones()[DEFAULT_BACKBONE] == BUILTIN_BACKBONES[DEFAULT_BACKBONE].image_size


def test_new_projects_default_to_the_linear_proxy_and_auto(factory: Factory, sent: Any) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    settings = factory.client(eng).get(f"/api/projects/{project.id}").json()["settings"]
    assert (settings["default_proxy"], settings["strategy"]) == ("linear", "auto")
    assert (settings["backbone"], settings["cold_start"]) == (DEFAULT_BACKBONE, "auto")


def test_an_engineer_starts_an_embedding_job_once(factory: Factory, sent: Any) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    r = c.post(f"/api/projects/{project.id}/embeddings", json={})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["status"], job["project_id"]) == ("embed", "queued", project.id)
    # The same backbone and size again while it is queued: the same job, nothing new sent.
    again = c.post(f"/api/projects/{project.id}/embeddings", json={"backbone": DEFAULT_BACKBONE})
    assert again.status_code == 202
    assert again.json()["id"] == job["id"]
    assert sent == [(job["id"], "embed")]
    with unit_of_work(write=False) as db:
        params = db.get(Job, job["id"]).params  # type: ignore[union-attr]  # it exists
    assert params == {"backbone": DEFAULT_BACKBONE, "image_size": 128}
    listed = c.get(f"/api/projects/{project.id}/embeddings").json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_embedding_jobs_check_backbone_and_role(factory: Factory, sent: Any) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    url = f"/api/projects/{project.id}/embeddings"
    r = factory.client(eng).post(url, json={"backbone": "resnet9000"})
    assert r.status_code == 422
    assert "unknown backbone" in r.text
    assert factory.client(ann).post(url, json={}).status_code == 403
    assert factory.anonymous().post(url, json={}).status_code == 401
    assert factory.client(factory.user("engineer")).post(url, json={}).status_code == 404
    assert sent == []


@pytest.mark.parametrize(
    "given",
    [
        {"default_proxy": "resnet", "auto_next_round": True},
        {"strategy": "most_confusing"},
        {"backbone": "vit_giant"},
        {"cold_start": "kmeans"},
        {"default_target": "linear"},
    ],
)
def test_unknown_names_in_settings_are_refused_when_written(
    factory: Factory, given: dict[str, Any]
) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    r = c.post("/api/projects", json={"name": "typo", "classes": ["a", "b"], "settings": given})
    assert r.status_code == 422, r.text
    assert c.get("/api/projects").json() == []


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


def _plan(factory: Factory, n_keys: int, chunk: int) -> int:
    job = factory.job(kind="embed", status="running")
    with unit_of_work() as db:
        total = embeddings.plan_chunks(
            db, job_id=job.id, keys=[f"{i:064x}" for i in range(n_keys)], chunk_size=chunk
        )
    assert total == -(-n_keys // chunk)
    return job.id


def test_chunks_are_planned_once_and_claimed_once(factory: Factory) -> None:
    job_id = _plan(factory, 10, 4)
    with unit_of_work() as db:
        # A redelivered job keeps the first plan.
        assert embeddings.plan_chunks(db, job_id=job_id, keys=["x"], chunk_size=1) == 3
    claims = []
    for worker in ("a", "b", "a", "b"):
        with unit_of_work() as db:
            claims.append(
                embeddings.claim_chunk(
                    db, job_id=job_id, worker=worker, stale_before=utcnow() - timedelta(seconds=60)
                )
            )
    assert claims[3] is None
    got = [c for c in claims if c is not None]
    assert len({c[0] for c in got}) == 3
    assert sorted(k for c in got for k in c[1]) == [f"{i:064x}" for i in range(10)]
    for chunk_id, _ in got:
        with unit_of_work() as db:
            embeddings.finish_chunk(db, chunk_id=chunk_id)
    with unit_of_work(write=False) as db:
        assert embeddings.chunk_progress(db, job_id=job_id) == (3, 3)
        assert embeddings.chunk_workers(db, job_id=job_id) == {"a": 2, "b": 1}


def test_a_dead_workers_chunk_is_taken_over_and_a_live_ones_is_not(factory: Factory) -> None:
    job_id = _plan(factory, 3, 3)
    with unit_of_work() as db:
        first = embeddings.claim_chunk(db, job_id=job_id, worker="a", stale_before=utcnow())
    assert first is not None
    with unit_of_work() as db:
        # Claimed just now: not stale for a 60 s timeout.
        live = embeddings.claim_chunk(
            db, job_id=job_id, worker="b", stale_before=utcnow() - timedelta(seconds=60)
        )
        assert live is None
    with unit_of_work() as db:
        # Its claim is older than the timeout now: b takes it over.
        later = embeddings.claim_chunk(
            db, job_id=job_id, worker="b", stale_before=utcnow() + timedelta(seconds=1)
        )
    assert later is not None
    assert later[0] == first[0]
    with unit_of_work(write=False) as db:
        chunk = db.scalar(select(EmbedChunk).where(EmbedChunk.id == first[0]))
        assert chunk is not None
        assert chunk.worker == "b"


def test_chunks_go_with_their_job(factory: Factory) -> None:
    job_id = _plan(factory, 5, 2)
    with unit_of_work() as db:
        embeddings.drop_chunks(db, job_id=job_id)
        assert embeddings.chunk_progress(db, job_id=job_id) == (0, 0)
