"""End to end past one machine (DESIGN 4d): a server and two workers with no shared volume.

Each process has its own data dir; they share only the database, the broker and an S3 store (a
real S3 API over HTTP: moto in server mode). The pool arrives by reference from a bucket, the
embedding fans out over both workers and reaches the round runner through shards in the store,
a round selects, an annotator labels through the queue, and both exports read the bytes back
from the bucket. Then an object is deleted from the bucket: its image answers 404 with a
reason, and the next round leaves it out and says so.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Stack, stack
from tests.s3server import S3Server
from tests.test_e2e import (
    CLASSES,
    admin_client,
    colour_png,
    embed_jobs,
    label_batch,
    run_round,
    true_class,
    wait_job,
    wait_round,
)

pytestmark = pytest.mark.slow

POOL_PER_CLASS = 60
TEST_PER_CLASS = 5


def files_under(folder: Path) -> list[Path]:
    """Every file below a folder (none when it does not exist)."""
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def put_pool(s3: S3Server, bucket: str) -> dict[str, bytes]:
    """The source objects: ``pool/<class>_<i>.png`` and ``test/<class>/<class>_<i>.png``."""
    objects: dict[str, bytes] = {}
    for cls, name in enumerate(CLASSES):
        for i in range(POOL_PER_CLASS):
            objects[f"pool/{name}_{i}.png"] = colour_png(cls, i)
        for i in range(TEST_PER_CLASS):
            objects[f"test/{name}/{name}_{500 + i}.png"] = colour_png(cls, 500 + i)
    client: Any = s3.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return objects


def import_from(c: httpx.Client, pid: int, body: dict[str, Any]) -> dict[str, Any]:
    """Start an import by reference and wait for it to succeed; the job."""
    r = c.post(f"/api/projects/{pid}/items/import-from", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def apart(
    tmp_path: Path, database_url: str, broker_url: str, s3: S3Server
) -> Iterator[tuple[Stack, list[Stack], str]]:
    """A server and two workers, each with its own data dir; the bucket they keep items in."""
    store = s3.bucket()
    env = {
        **s3.env(),
        "SVP_STORAGE_URL": f"s3://{store}/svp",
        "SVP_WORKER_HEARTBEAT_SECONDS": "1",
        # Small chunks, one thread a worker and torch (ONNX Runtime is ~2.5x faster: the worker
        # that embedded the test split would finish the pool alone before the other had
        # exported its model), so both workers get a share.
        "SVP_EMBED_CHUNK_SIZE": "2",
        "SVP_TORCH_THREADS": "1",
        "SVP_EMBED_RUNTIME": "torch",
    }
    with ExitStack() as stacks:
        server, *workers = (
            stacks.enter_context(
                stack(
                    tmp_path / name, database_url=database_url, broker_url=broker_url, extra_env=env
                )
            )
            for name in ("server", "worker-1", "worker-2")
        )
        assert len({server.data_dir, *(w.data_dir for w in workers)}) == 3
        server.serve()
        for i, w in enumerate(workers, 1):
            w.worker(f"worker-{i}")
        yield server, workers, store


def test_a_pool_imported_by_reference_is_labelled_with_no_shared_volume(
    apart: tuple[Stack, list[Stack], str], s3: S3Server
) -> None:
    server, workers, store = apart
    source = s3.bucket()
    objects = put_pool(s3, source)
    c = admin_client(server)
    r = c.post("/api/projects", json={"name": "by-reference", "classes": CLASSES})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]

    job = import_from(
        c,
        pid,
        {"source": f"s3://{source}/test/", "split": "test", "labels_from_folders": True},
    )
    assert job["result"]["added"] == 3 * TEST_PER_CLASS
    # The test split's embedding first: a second job running beside it would embed those too.
    (first,) = embed_jobs(c, pid)
    assert wait_job(c, first["id"], timeout=300)["status"] == "succeeded"
    job = import_from(c, pid, {"source": f"s3://{source}/pool/"})
    assert (job["result"]["added"], job["result"]["duplicates"]) == (3 * POOL_PER_CLASS, 0), job
    assert job["result"]["rejected"] == []

    # Each import queued the embedding of what it added; the pool's fanned out over both.
    jobs = embed_jobs(c, pid)
    assert len(jobs) == 2
    pool_embed = wait_job(c, jobs[0]["id"], timeout=600)
    assert pool_embed["status"] == "succeeded", pool_embed
    assert pool_embed["result"]["images"] == 3 * POOL_PER_CLASS
    assert len(pool_embed["result"]["workers"]) == 2, pool_embed["result"]

    cold, selection, _ = run_round(c, pid, "auto", 6, {})
    assert cold["proxy"]["arch"] == "linear"
    assert cold["metrics"]["cold_start"] == "typiclust"
    label_batch(c, pid, 6)
    rnd, selection, _ = run_round(c, pid, "auto", 9, {})
    assert rnd["metrics"]["proxy_test_accuracy"] >= 0.8
    assert all(s["suggestion"]["label"] in CLASSES for s in selection)
    label_batch(c, pid, 9)

    # The exports read the bytes back from the source bucket, through the server.
    r = c.get(f"/api/projects/{pid}/export", params={"format": "csv"})
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 15 + 3 * TEST_PER_CLASS
    assert all(true_class(row["name"]) == row["label"] for row in rows)
    r = c.get(f"/api/projects/{pid}/export", params={"format": "imagefolder"})
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        assert len(names) == len(rows)
        for name in names:
            cls, file_name = name.split("/", 1)
            key = next(k for k in objects if k.endswith("/" + file_name.split("_", 1)[-1]))
            assert key.rsplit("/", 1)[-1] in file_name
            assert zf.read(name) == objects[key]
            assert cls in CLASSES

    # No process kept an item's bytes on its disk: they stay in the source bucket, and the
    # embeddings reached the round runner as shards in the store.
    for s in (server, *workers):
        assert files_under(s.data_dir / "images") == []
    store_keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=store)["Contents"]]  # type: ignore[attr-defined]
    assert any(k.startswith("svp/embeddings/") for k in store_keys)
    assert not any(k.startswith("svp/images/") for k in store_keys)

    # Objects deleted from their bucket after the import: an image is a 404 with the reason,
    # and the next round leaves them out and says so. All but ten unlabelled items go, so the
    # batch of ten must be exactly the ten left.
    unlabelled = c.get(
        f"/api/projects/{pid}/items", params={"status": "unlabeled", "split": "pool", "limit": 500}
    ).json()["items"]
    gone, kept = unlabelled[:-10], unlabelled[-10:]
    client: Any = s3.client()
    for item in gone:
        client.delete_object(Bucket=source, Key=f"pool/{item['name']}")
    r = c.get(f"/api/items/{gone[0]['id']}/image")
    assert r.status_code == 404
    assert "gone" in r.json()["detail"]
    r = c.post(
        f"/api/projects/{pid}/rounds",
        json={"strategy": "least_confidence", "batch_size": 10, "seed": 3},
    )
    assert r.status_code == 202, r.text
    last = wait_round(c, r.json()["id"])
    assert last["status"] == "labeling", last["error"]
    batch = {s["item_id"] for s in c.get(f"/api/rounds/{last['id']}/selection").json()}
    assert batch == {item["id"] for item in kept}
    skipped = last["metrics"]["skipped"]
    assert skipped
    assert {s["item_id"] for s in skipped} <= {item["id"] for item in gone}
    assert all(s["reason"] for s in skipped)
