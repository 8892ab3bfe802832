"""Embeddings in the object store (DESIGN 4d): workers with separate data dirs see each other's
vectors only through shards in the bucket, damaged shards are refused by name, and a store that
stops answering fails the job with the store's reason, leaving whole shards only.

The bucket is a real S3 API over HTTP (moto in server mode). "Workers" in this process are the
same code with another data dir (``as_worker``); the last test runs real ``svplabel worker``
processes with separate data dirs, one database, one broker and the bucket.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from app.db import reset_caches, unit_of_work
from app.embeddings.models import EmbeddingShard
from app.embeddings.service import start_embedding
from app.items.models import Item
from app.jobs import dispatch
from app.jobs.models import Job
from app.jobs.runtime import run_job
from app.projects.models import Project
from app.rounds import service as rounds
from app.rounds.models import Round, Selection
from app.rounds.schemas import ProxyConfig
from app.settings import Settings, get_settings
from app.storage import item_store, write_image
from svp.embeddings import EmbeddingStore
from tests.factories import Factory
from tests.procs import Stack, stack
from tests.s3server import S3Server, s3_server
from worker import runners
from worker import shards as worker_shards

CLASSES = ["red", "green", "blue"]
BACKBONE = "efficientnet_lite0"
SIZE = 64  # small: the vectors, not the backbone's accuracy, are under test
DIM = 1280
LINEAR = ProxyConfig(arch="linear", image_size=SIZE)


@pytest.fixture(autouse=True, scope="module")
def worker_runners() -> None:
    """Jobs run here as a worker runs them."""
    runners.register()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Jobs are run by the test itself, never by the server's pool in the background."""
    calls: list[int] = []
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: calls.append(job_id))
    return calls


def colour_png(cls: int, i: int) -> bytes:
    """A 16x16 image mostly of its class's colour, with noise so each one is distinct."""
    rng = np.random.default_rng(1000 * cls + i)
    base = np.zeros((16, 16, 3), dtype=np.int16)
    base[..., cls] = 200
    pixels = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def seed_items(
    project_id: int, per_class: int, split: str = "pool", offset: int = 0
) -> list[dict[str, Any]]:
    """Images written to the configured item store (the bucket) and registered as items;
    ``offset`` gives other pixels."""
    out = []
    with unit_of_work() as db:
        for cls, name in enumerate(CLASSES):
            for i in range(per_class):
                data = colour_png(cls, offset + i + (0 if split == "pool" else 500))
                digest = hashlib.sha256(data).hexdigest()
                write_image(digest, data)
                item = Item(
                    project_id=project_id,
                    content_hash=digest,
                    name=f"{split}/{name}_{i}.png",
                    media_type="image/png",
                    width=16,
                    height=16,
                    split=split,
                )
                db.add(item)
                db.flush()
                out.append({"id": item.id, "cls": name, "hash": digest})
    return out


def as_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Settings:
    """This process becomes a worker with a data dir of its own (nothing shared on disk)."""
    monkeypatch.setenv("SVP_DATA_DIR", str(tmp_path / name))
    reset_caches()
    return get_settings()


def embed(project_id: int, worker: str) -> dict[str, Any]:
    """Run an embedding job of the project here; its result."""
    with unit_of_work() as db:
        project = db.get(Project, project_id)
        assert project is not None
        job = start_embedding(
            db, project=project, backbone=BACKBONE, image_size=SIZE, created_by=None
        )
        job_id = job.id
    assert run_job(job_id, worker=worker) == "succeeded", job_error(job_id)
    with unit_of_work(write=False) as db:
        result = db.get(Job, job_id).result  # type: ignore[union-attr]
    assert result is not None
    return result


def job_error(job_id: int) -> str | None:
    with unit_of_work(write=False) as db:
        return db.get(Job, job_id).error  # type: ignore[union-attr]


def local_store(settings: Settings) -> EmbeddingStore:
    return EmbeddingStore(settings.cache_dir, BACKBONE, SIZE, DIM)


def registered() -> list[tuple[str, int]]:
    with unit_of_work(write=False) as db:
        rows = db.execute(
            select(EmbeddingShard.key, EmbeddingShard.rows).order_by(EmbeddingShard.id)
        )
        return [(str(k), int(n)) for k, n in rows.tuples()]


@pytest.fixture
def world(
    s3_settings: Settings,
    factory: Factory,
    sent: list[int],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> dict[str, Any]:
    """A project of 24 pool and 6 test images in the bucket, embedded by worker A in chunks of 8
    (4 shards); then this process is worker B, with an empty data dir of its own."""
    monkeypatch.setenv("SVP_EMBED_CHUNK_SIZE", "8")
    monkeypatch.setenv("SVP_TORCH_THREADS", "1")
    a = as_worker(monkeypatch, tmp_path, "worker-a")
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    pool = seed_items(project.id, 8)
    test = seed_items(project.id, 2, split="test")
    first = embed(project.id, "worker-a")
    assert (first["images"], first["chunks"]) == (30, 4)
    keys = [it["hash"] for it in pool + test]
    vectors = local_store(a).load(keys)
    b = as_worker(monkeypatch, tmp_path, "worker-b")
    return {"project": project, "pool": pool, "test": test, "keys": keys, "vectors": vectors,
            "a": a, "b": b}  # fmt: skip


def test_worker_b_sees_worker_as_embeddings_only_through_shards(world: dict[str, Any]) -> None:
    shards = registered()
    assert [n for _, n in shards] == [8, 8, 8, 6]
    stored = sorted(o.key for o in item_store().list("embeddings/"))
    assert stored == sorted(k for k, _ in shards)
    assert all(k.startswith(f"embeddings/{BACKBONE}-{SIZE}/") for k in stored)
    b = world["b"]
    assert not (b.cache_dir / f"embeddings-{BACKBONE}-{SIZE}").exists()
    # A chunk embedded twice after a takeover: a second shard with the same keys.
    twice = shards[1][0].replace(".svpe", "-again.svpe")
    item_store().put(twice, item_store().get(shards[1][0]))
    with unit_of_work() as db:
        db.add(EmbeddingShard(project_id=world["project"].id, backbone=BACKBONE,
                              image_size=SIZE, key=twice, rows=8))  # fmt: skip
    # B embeds nothing: it takes A's shards into its own store, each once, each key once.
    again = embed(world["project"].id, "worker-b")
    assert (again["images"], again["total"]) == (0, 30)
    store = local_store(b)
    assert store.shards_taken() == {k for k, _ in shards} | {twice}
    assert len(store) == 30
    assert torch.equal(store.load(world["keys"]), world["vectors"])
    assert store.disk_bytes() == 30 * DIM * 2 + 30 * 65
    # Nothing new to take in: a second pull reads no shard.
    report = worker_shards.pull(store, world["project"].id)
    assert report is not None
    assert (report.shards, report.rows) == (0, 0)


def test_a_round_on_worker_b_pulls_the_shards_and_selects(world: dict[str, Any]) -> None:
    rid, jid = start_round(world["project"].id, "auto", 6)
    assert run_job(jid, worker="worker-b") == "succeeded", job_error(jid)
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, rid)
        assert rnd is not None
        assert rnd.status == "labeling", rnd.error
        assert rnd.metrics["embedding"] is None  # warm from A's shards: nothing embedded
        assert rnd.metrics["cold_start"] == "typiclust"
    assert local_store(world["b"]).missing(world["keys"]) == []


def start_round(project_id: int, strategy: str, batch_size: int) -> tuple[int, int]:
    with unit_of_work() as db:
        project = db.get(Project, project_id)
        assert project is not None
        rnd = rounds.start_round(
            db,
            project=project,
            strategy=strategy,
            batch_size=batch_size,
            proxy=LINEAR,
            seed=3,
            created_by=None,
            supersede=False,
        )
        assert rnd.job_id is not None
        return rnd.id, rnd.job_id


def test_damaged_shards_are_refused_by_name_and_their_vectors_embedded_again(
    world: dict[str, Any], s3: S3Server
) -> None:
    shards = registered()
    truncated, flipped = shards[0][0], shards[2][0]
    store = item_store()
    whole = store.get(truncated)
    store.put(truncated, whole[: len(whole) - 100])
    damaged = bytearray(store.get(flipped))
    damaged[-5] ^= 0x10
    store.put(flipped, bytes(damaged))
    result = embed(world["project"].id, "worker-b")
    refused = {r["shard"]: r["reason"] for r in result["refused_shards"]}
    assert set(refused) == {truncated, flipped}
    assert "truncated" in refused[truncated]
    assert truncated in refused[truncated]
    assert "checksum" in refused[flipped]
    assert flipped in refused[flipped]
    # Their 16 vectors were embedded again, as one new shard each chunk; the bad ones are gone
    # from the registry (the objects stay for inspection), so no worker reads them again.
    assert (result["images"], result["chunks"]) == (16, 2)
    now = dict(registered())
    assert truncated not in now
    assert flipped not in now
    assert len(now) == 4
    b = local_store(world["b"])
    assert not b.shards_taken() & {truncated, flipped}
    # Never garbage: every vector equals what A embedded from the same pixels.
    assert torch.allclose(b.load(world["keys"]), world["vectors"], atol=1e-2)


def test_a_store_that_stops_answering_mid_pull_fails_the_round_with_its_reason(
    world: dict[str, Any],
    tmp_path: Path,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bucket's objects move to a private S3 server this test can stop mid-pull.
    with s3_server(tmp_path) as private:
        bucket = private.bucket()
        source = item_store()
        target = private.client()
        for obj in source.list():
            target.put_object(Bucket=bucket, Key=f"svp/{obj.key}", Body=source.get(obj.key))  # type: ignore[attr-defined]
        monkeypatch.setenv("SVP_S3_ENDPOINT_URL", private.endpoint)
        monkeypatch.setenv("SVP_STORAGE_URL", f"s3://{bucket}/svp")
        reset_caches()
        # One shard an append, and the store dies after the second read.
        monkeypatch.setattr(worker_shards, "BATCH_BYTES", 1)
        monkeypatch.setattr(worker_shards, "FETCH_THREADS", 1)
        monkeypatch.setattr(worker_shards, "FETCH_AHEAD", 1)
        reads = {"n": 0}
        real_read = worker_shards._read

        def read_then_die(key: str) -> bytes:
            reads["n"] += 1
            if reads["n"] == 3:
                private.stop()
            return real_read(key)

        monkeypatch.setattr(worker_shards, "_read", read_then_die)
        rid, jid = start_round(world["project"].id, "auto", 6)
        assert run_job(jid, worker="worker-b") == "failed"
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, rid)
        assert rnd is not None
        assert rnd.status == "failed"
        error = rnd.error or ""
        assert not db.scalar(select(func.count()).where(Selection.round_id == rid))
    # The reason names the store; no botocore traceback.
    assert error.startswith("StoreUnavailable: could not read"), error
    assert f"s3://{bucket}/svp/embeddings/" in error
    assert "Traceback" not in error
    # Nothing half-written: the two shards read before the store died are whole in B's store,
    # recorded as taken, and nothing else is.
    b = local_store(world["b"])
    taken = b.shards_taken()
    assert len(taken) == 2
    rows = dict(registered())
    assert len(b) == sum(rows[k] for k in taken)
    assert b.disk_bytes() == len(b) * (DIM * 2 + 65)


def test_without_a_bucket_no_shard_is_written(
    settings: Settings, factory: Factory, sent: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVP_EMBED_CHUNK_SIZE", "8")
    monkeypatch.setenv("SVP_TORCH_THREADS", "1")
    reset_caches()
    project = factory.project(factory.user("engineer"), classes=CLASSES)
    seed_items(project.id, 4)
    assert embed(project.id, "w")["images"] == 12
    assert registered() == []
    assert not (get_settings().data_dir / "embeddings").exists()
    assert len(local_store(get_settings())) == 12


def test_a_fresh_generation_takes_in_only_the_projects_shards_it_needs(
    world: dict[str, Any], factory: Factory
) -> None:
    b = world["b"]
    embed(world["project"].id, "worker-b")
    store = local_store(b)
    ours = store.disk_bytes()
    # Another project's images, embedded by B: its shards are registered under that project.
    other = factory.project(factory.user("engineer"), classes=CLASSES)
    other_keys = [it["hash"] for it in seed_items(other.id, 1, offset=900)]
    embed(other.id, "worker-b")
    assert store.missing(other_keys) == []
    assert store.disk_bytes() > ours
    # Past its bound, the store starts afresh (what ``pull(bound=True)`` does at a job's start
    # past ``SVP_TENSOR_CACHE_MB``); the next job of the first project takes in its shards only.
    assert store.restart_if_over(1)
    assert embed(world["project"].id, "worker-b")["images"] == 0
    assert store.disk_bytes() == ours
    assert store.missing(other_keys) == other_keys
    assert torch.equal(store.load(world["keys"]), world["vectors"])


# ---- real processes: two workers, separate data dirs, one database, broker and bucket ----


@pytest.mark.slow
def test_two_real_workers_with_separate_data_dirs_share_embeddings_through_the_bucket(
    tmp_path: Path, database_url: str, broker_url: str, s3: S3Server, s3_settings: Settings
) -> None:
    from tests.test_e2e import admin_client, label_batch, wait_job, wait_round

    env = {
        **s3.env(),
        "SVP_STORAGE_URL": s3_settings.storage_url,
        "SVP_WORKER_HEARTBEAT_SECONDS": "1",
        "SVP_EMBED_CHUNK_SIZE": "2",
        "SVP_TORCH_THREADS": "1",
    }
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        c = admin_client(s)
        r = c.post("/api/projects", json={"name": "shards", "classes": CLASSES})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        pool = seed_items(pid, 24)
        test = seed_items(pid, 2, split="test")
        with unit_of_work() as db:
            for it in test:
                db.get(Item, it["id"]).label = it["cls"]  # type: ignore[union-attr]

        def worker(name: str) -> Any:
            own = Stack(
                data_dir=tmp_path / name, env={**s.env, "SVP_DATA_DIR": str(tmp_path / name)}
            )
            own.data_dir.mkdir()
            proc = own.worker(name)
            s.procs.append(proc)
            return proc

        first, second = worker("worker-1"), worker("worker-2")
        r = c.post(
            f"/api/projects/{pid}/embeddings", json={"backbone": BACKBONE, "image_size": SIZE}
        )
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert (result["images"], result["chunks"]) == (78, 39)
        # Fanned out: both workers embedded chunks, each writing its shards to the bucket.
        assert sum(result["workers"].values()) == 39
        assert len(result["workers"]) == 2, result
        shards = registered()
        assert len(shards) == 39
        assert sum(n for _, n in shards) == 78
        # The worker that planned the job took in the other's shards before it finished: its
        # store names every shard, though it wrote only some.
        taken = [
            EmbeddingStore(tmp_path / w / "cache", BACKBONE, SIZE, DIM).shards_taken()
            for w in ("worker-1", "worker-2")
        ]
        assert {k for k, _ in shards} in taken
        first.stop()
        second.stop()
        # A third worker with an empty data dir runs the round: every vector from the bucket.
        third = worker("worker-3")
        r = c.post(f"/api/projects/{pid}/rounds", json={
            "strategy": "auto", "batch_size": 6, "seed": 1,
            "proxy": {"arch": "linear", "backbone": BACKBONE, "image_size": SIZE}})  # fmt: skip
        assert r.status_code == 202, r.text
        rnd = wait_round(c, r.json()["id"])
        assert rnd["status"] == "labeling", (rnd, s.logs())
        assert rnd["metrics"]["embedding"] is None  # nothing embedded again
        store = EmbeddingStore(tmp_path / "worker-3" / "cache", BACKBONE, SIZE, DIM)
        assert store.shards_taken() == {k for k, _ in shards}
        assert store.missing([it["hash"] for it in pool + test]) == []
        label_batch(c, pid, 6)
        done = c.get(f"/api/rounds/{rnd['id']}").json()
        assert done["status"] == "completed", done
        assert third.alive()
        assert not (tmp_path / "stack" / "cache").exists()  # the server embedded nothing


def test_the_sweep_deletes_shards_nothing_names_and_keeps_the_rest(world: dict[str, Any]) -> None:
    """A worker that dies between a shard's put and its registration leaves an object no row
    names: the reconciler's sweep deletes it once its job is over (or gone), never sooner."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.db import utcnow
    from app.embeddings.service import ORPHAN_SHARD_GRACE
    from app.jobs import reconcile

    store = item_store()
    pid = world["project"].id
    with unit_of_work() as db:
        (done_id,) = db.scalars(select(Job.id).where(Job.project_id == pid)).all()
        running = Job(kind="embed", status="running", project_id=pid, params={})
        ended_now = Job(kind="embed", status="failed", project_id=pid, params={})
        db.add_all([running, ended_now])
        db.flush()
        running_id, ended_now_id = running.id, ended_now.id
        now = utcnow()
        db.execute(update(Job).where(Job.id == ended_now_id).values(finished_at=now))
        db.execute(
            update(Job)
            .where(Job.id == done_id)
            .values(finished_at=now - ORPHAN_SHARD_GRACE - timedelta(minutes=1))
        )
    folder = f"embeddings/{BACKBONE}-{SIZE}"
    orphans = {
        "done": f"{folder}/j{done_id}-c999-0a0b0c0d.svpe",  # its job ended over an hour ago
        "gone": f"{folder}/j987654-c1-00000000.svpe",  # no such job row any more
    }
    kept = {
        "running": f"{folder}/j{running_id}-c1-11111111.svpe",  # a helper may register it yet
        "ended now": f"{folder}/j{ended_now_id}-c1-22222222.svpe",  # within the grace
        "not a shard": f"{folder}/notes.txt",
    }
    for key in [*orphans.values(), *kept.values()]:
        store.put(key, b"bytes")
    shards = [key for key, _ in registered()]
    assert len(shards) == 4

    swept = reconcile.sweep_uploads(now, force=True)
    assert sorted(swept) == sorted(orphans.values())
    left = {info.key for info in store.list("embeddings/")}
    assert left == {*shards, *kept.values()}
    # What is registered still reads: worker B takes every vector in from the shards.
    b_store = local_store(world["b"])
    report = worker_shards.pull(b_store, pid)
    assert report is not None
    assert torch.equal(b_store.load(world["keys"]), world["vectors"])
