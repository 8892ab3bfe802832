"""The service with item bytes in a bucket (DESIGN 4d), in-process against a real S3 API.

An upload into a project whose store is ``s3://bucket/svp`` lands in the bucket under the prefix
and nowhere under the data dir's ``images/``; the image route and the imagefolder export read
it back; a store that stops answering fails the import with its reason and leaves no item
without its bytes, and the retried job finishes once the store is back. ``/api/health`` reports
the store (moto in server mode over HTTP: ``tests/s3server.py``).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app import storage
from app.db import reset_caches, unit_of_work
from app.items.models import Item
from app.jobs.models import JobKind
from app.jobs.service import create_job
from app.settings import Settings, get_settings
from app.system import health
from tests.factories import Factory, png_bytes
from tests.s3server import S3Server, restart, s3_server

CLASSES = ["cat", "dog"]


def folder_zip(n: int) -> tuple[bytes, dict[str, tuple[str, bytes]]]:
    """A zip of ``n`` PNGs in ``<class>/`` folders; and by content hash, each one's class and
    bytes."""
    buf = io.BytesIO()
    images: dict[str, tuple[str, bytes]] = {}
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            cls, data = CLASSES[i % 2], png_bytes(100 + i)
            zf.writestr(f"{cls}/img{i:03d}.png", data)
            images[hashlib.sha256(data).hexdigest()] = (cls, data)
    return buf.getvalue(), images


def bucket_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` in the bucket, by key (the tests' own client)."""
    client = s3.client()
    out: dict[str, bytes] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    for page in pages:
        for entry in page.get("Contents", ()):
            key = entry["Key"]
            out[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    return out


def files_under(root: Path) -> list[Path]:
    """Every file below ``root`` (none when it does not exist)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_into_a_bucket_end_to_end(
    factory: Factory, s3_settings: Settings, s3: S3Server
) -> None:
    bucket, prefix = storage.parse_s3_url(s3_settings.storage_url)
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    c = factory.client(eng)
    archive, images = folder_zip(40)  # more than the import's write threads, in one batch

    r = c.post(
        f"/api/projects/{project.id}/items",
        files=[("file", ("pets.zip", archive, "application/zip"))],
        data={"labels_from_folders": "true"},
    )
    assert r.status_code == 202, r.text
    job = factory.wait_job(r.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.result is not None
    assert job.result["added"] == 40

    # Every image is in the bucket under the prefix, at images/<h[:2]>/<h>, and only there.
    stored = bucket_objects(s3, bucket, f"{prefix}/")
    assert stored == {f"{prefix}/images/{h[:2]}/{h}": data for h, (_, data) in images.items()}
    assert files_under(s3_settings.data_dir / "images") == []

    with unit_of_work(write=False) as db:
        items = list(db.scalars(select(Item).where(Item.project_id == project.id)))
    assert {i.content_hash for i in items} == set(images)

    # The image route reads the bucket through this process's cache, with the content's ETag.
    item = items[0]
    cache = storage.object_cache()
    # The import's embedding job (in this process's pool) may have read the images through the
    # same cache already: start it empty.
    shutil.rmtree(s3_settings.object_cache_dir, ignore_errors=True)
    misses = cache.misses
    r = c.get(f"/api/items/{item.id}/image")
    assert r.status_code == 200
    assert r.content == images[item.content_hash][1]
    assert r.headers["content-type"] == "image/png"
    etag = f'"{item.content_hash}"'
    assert r.headers["etag"] == etag
    assert cache.misses == misses + 1
    again = c.get(f"/api/items/{item.id}/image")
    assert again.content == r.content
    assert cache.misses == misses + 1  # from the cache
    r = c.get(f"/api/items/{item.id}/image", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""

    # The imagefolder export holds every labelled image, read back from the bucket.
    r = c.get(f"/api/projects/{project.id}/export", params={"format": "imagefolder"})
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        exported = sorted((name.split("/")[0], zf.read(name)) for name in zf.namelist())
    assert exported == sorted(images.values())
    assert files_under(s3_settings.data_dir / "images") == []


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of this test's own, to stop and start (the session's serves other tests)."""
    with s3_server(tmp_path) as server:
        yield server


@pytest.fixture
def own_s3_settings(
    settings: Settings, own_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``settings`` with item bytes in a bucket of ``own_s3``."""
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SVP_STORAGE_URL", f"s3://{own_s3.bucket('svp-own')}/data")
    reset_caches()
    yield get_settings()
    reset_caches()


def test_an_import_into_a_store_that_stopped_fails_with_its_reason_then_resumes(
    factory: Factory, own_s3_settings: Settings, own_s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    c = factory.client(eng)
    archive, images = folder_zip(12)
    own_s3.stop()
    # An upload into a store that is away is refused at once (tests/test_upload_staging.py);
    # this one's files are on the worker's disk already (a job queued before uploads were
    # staged in the store), so the store fails under the import's writes.
    (own_s3_settings.uploads_dir / "local").mkdir(parents=True)
    (own_s3_settings.uploads_dir / "local" / "00000").write_bytes(archive)
    with unit_of_work() as db:
        job_id = create_job(
            db,
            kind=JobKind.import_,
            project_id=project.id,
            params={
                "upload_dir": "local",
                "files": [{"path": "local/00000", "name": "pets.zip", "size": len(archive)}],
                "split": "pool",
                "labels_from_folders": True,
            },
            created_by=eng.id,
        ).id
    job = factory.wait_job(job_id, timeout=120)
    assert job.status == "failed"
    assert job.error is not None
    # The store's URL and what went wrong (the conditional write that stores an image).
    assert "could not write s3://svp-own/data/images/" in job.error
    assert "Could not connect to the endpoint URL" in job.error
    with unit_of_work(write=False) as db:
        # Rows commit only after their bytes are stored: none is visible without them.
        assert db.scalars(select(Item).where(Item.project_id == project.id)).all() == []

    restart(own_s3)  # moto keeps buckets in memory: the restarted one has none
    own_s3.bucket("svp-own")
    r = c.post(f"/api/jobs/{job.id}/retry")
    assert r.status_code == 200, r.text
    job = factory.wait_job(job.id, timeout=120)
    assert job.status == "succeeded", job.error
    assert job.result is not None
    assert job.result["added"] == 12
    assert set(bucket_objects(own_s3, "svp-own", "data/images/")) == {
        f"data/images/{h[:2]}/{h}" for h in images
    }


def test_health_without_a_bucket_has_no_storage(factory: Factory) -> None:
    body = factory.anonymous().get("/api/health").json()
    assert "storage" not in body
    assert set(body) >= {"database", "broker", "workers"}


def test_health_reports_the_store(
    factory: Factory,
    own_s3_settings: Settings,
    own_s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    anonymous, admin = factory.anonymous(), factory.client(factory.user("admin"))
    monkeypatch.setattr(health, "CACHE_SECONDS", 60.0)
    monkeypatch.setattr(health, "_store_last", None)
    r = anonymous.get("/api/health")
    assert r.status_code == 200
    assert r.json()["storage"] == "ok"
    assert set(r.json()) >= {"database", "broker", "workers", "storage"}

    own_s3.stop()
    # Within the cache's life the store is not asked again: still the last answer.
    assert anonymous.get("/api/health").json()["storage"] == "ok"
    monkeypatch.setattr(health, "CACHE_SECONDS", 0.0)
    r = anonymous.get("/api/health")
    # The store is down, the database is not: still 200 (DESIGN 5), with the store's state.
    assert r.status_code == 200
    assert r.json()["database"] == "ok"
    assert r.json()["storage"].startswith("error: ")
    port = own_s3.endpoint.rsplit(":", 1)[1]
    assert port not in r.text  # where the store is, is for admins
    detail = admin.get("/api/health").json()["storage"]
    assert detail.startswith("error: ")
    assert port in detail

    restart(own_s3)  # up again, without the bucket
    assert anonymous.get("/api/health").json()["storage"] == "error: NoSuchBucket"
    own_s3.bucket("svp-own")
    assert anonymous.get("/api/health").json()["storage"] == "ok"


def test_health_does_not_wait_through_a_store_that_never_answers(
    factory: Factory, settings: Settings, monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    # A socket that accepts connections (the kernel's backlog) and never answers a byte.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("SVP_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("SVP_STORAGE_URL", "s3://silent/data")
        reset_caches()
        started = time.monotonic()
        r = factory.anonymous().get("/api/health")
        waited = time.monotonic() - started
    assert r.status_code == 200
    assert r.json()["storage"].startswith("error: ")
    # One attempt with a short read timeout, not the product client's retries (minutes).
    budget = health.STORE_CONNECT_TIMEOUT_SECONDS + health.STORE_READ_TIMEOUT_SECONDS
    assert waited < budget + 5, f"health waited {waited:.1f} s for a silent store"
