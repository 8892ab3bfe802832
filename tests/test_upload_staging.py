"""Uploads staged in the item store (issue 18): with a bucket, an upload's files go from the
server into the store, and any worker, sharing no disk with the server, imports them from there.

Against a real S3 API over HTTP (moto in server mode, ``tests/s3server.py``): in-process for the
staging, the import, a retry and the sweep; with real processes (``svplabel serve`` and
``svplabel worker`` with different data dirs) for the whole path.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app import storage
from app.db import reset_caches, unit_of_work, utcnow
from app.items import staging
from app.items.models import Item
from app.items.storage import SpooledFile, SpooledUpload
from app.jobs import reconcile
from app.jobs.models import Job
from app.jobs.runtime import JobContext, run_job
from app.settings import Settings, get_settings
from tests.factories import Factory, png_bytes
from tests.procs import stack, wait_for
from tests.s3server import S3Server, s3_server
from tests.test_storage_service import CLASSES, bucket_objects, files_under, folder_zip

ADMIN = {"username": "admin", "password": "admin-password"}


@pytest.fixture
def queued_jobs(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``s3_settings`` with jobs left on the (embedded) broker: the test runs each as a worker
    would, when it chooses."""
    monkeypatch.setenv("SVP_INLINE_JOBS", "false")
    reset_caches()
    return get_settings()


def staged(s3: S3Server, settings: Settings) -> dict[str, bytes]:
    """The staged upload objects in the item store's bucket, by key below its prefix."""
    bucket, prefix = storage.parse_s3_url(settings.storage_url)
    found = bucket_objects(s3, bucket, f"{prefix}/uploads/")
    return {key[len(prefix) + 1 :]: data for key, data in found.items()}


def images_in_bucket(s3: S3Server, settings: Settings) -> set[str]:
    """The content hashes stored under ``images/`` in the item store's bucket."""
    bucket, prefix = storage.parse_s3_url(settings.storage_url)
    return {key.rsplit("/", 1)[1] for key in bucket_objects(s3, bucket, f"{prefix}/images/")}


def job_row(job_id: int) -> Job:
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        assert job is not None
        db.expunge(job)
        return job


def item_hashes(project_id: int) -> list[str]:
    with unit_of_work(write=False) as db:
        return list(db.scalars(select(Item.content_hash).where(Item.project_id == project_id)))


def post_zip(c: Any, project_id: int, archive: bytes) -> httpx.Response:
    response: httpx.Response = c.post(
        f"/api/projects/{project_id}/items",
        files=[("file", ("pets.zip", archive, "application/zip"))],
        data={"labels_from_folders": "true"},
    )
    return response


def test_an_upload_is_staged_in_the_store_and_imported_from_there(
    factory: Factory, queued_jobs: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    archive, images = folder_zip(12)
    r = post_zip(factory.client(eng), project.id, archive)
    assert r.status_code == 202, r.text
    job = job_row(r.json()["id"])
    assert job.status == "queued"
    assert job.params["staged"] is True
    # The files are in the store under uploads/<dir>/<n>; nothing is left on the server's disk.
    folder = job.params["upload_dir"]
    assert staged(s3, queued_jobs) == {f"uploads/{folder}/00000": archive}
    assert files_under(queued_jobs.uploads_dir) == []

    assert run_job(job.id, worker="elsewhere") == "succeeded"
    job = job_row(job.id)
    assert job.result is not None
    assert job.result["added"] == 12
    assert sorted(item_hashes(project.id)) == sorted(images)
    assert images_in_bucket(s3, queued_jobs) == set(images)
    # The staged objects and the worker's own copy are gone once the import succeeded.
    assert staged(s3, queued_jobs) == {}
    assert files_under(staging.local_root()) == []
    # A redelivery after that finds the work done, and adds nothing.
    with unit_of_work() as db:
        db.execute(update(Job).where(Job.id == job.id).values(status="queued", finished_at=None))
    assert run_job(job.id, worker="elsewhere") == "succeeded"
    assert job_row(job.id).result == job.result
    assert len(item_hashes(project.id)) == 12


class _DiesAfterFirstBatch(JobContext):
    """A worker that dies once its first batch committed (after it fetched the upload)."""

    def progress(self, stage: str, fraction: float) -> None:
        super().progress(stage, fraction)
        if stage != "fetching":
            raise SystemExit("worker killed")


def test_a_failed_import_is_retried_from_the_staged_files(
    factory: Factory, queued_jobs: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.items import importer

    monkeypatch.setattr(importer, "BATCH_SIZE", 5)
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    c = factory.client(eng)
    archive, images = folder_zip(12)
    r = post_zip(c, project.id, archive)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    # This worker's disk refuses the fetch: the job fails with the reason, nothing is imported,
    # and the staged files stay for a retry.
    blocker = staging.local_root()
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a folder")
    assert run_job(job_id, worker="w1") == "failed"
    job = job_row(job_id)
    assert job.error is not None
    assert "imports" in job.error
    assert item_hashes(project.id) == []
    assert len(staged(s3, queued_jobs)) == 1
    blocker.unlink()

    # Retried: fetched again; a worker that dies after the first batch leaves it committed...
    assert c.post(f"/api/jobs/{job_id}/retry").status_code == 200
    with unit_of_work() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="running"))
    ctx = _DiesAfterFirstBatch(
        job_id=job_id, kind="import", project_id=project.id, params=job_row(job_id).params
    )
    with pytest.raises(SystemExit):
        importer.run_import(ctx)
    assert len(item_hashes(project.id)) == 5
    assert files_under(staging.local_root()) == []  # its copy went with it
    assert len(staged(s3, queued_jobs)) == 1
    # ...and its redelivery fetches the files once more and resumes where the batch ended.
    with unit_of_work() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="queued"))
    assert run_job(job_id, worker="w2") == "succeeded"
    job = job_row(job_id)
    assert job.result is not None
    assert (job.result["added"], job.result["processed"], job.result["total"]) == (12, 12, 12)
    assert sorted(item_hashes(project.id)) == sorted(images)
    assert staged(s3, queued_jobs) == {}


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of this test's own, to stop (the session's serves other tests)."""
    with s3_server(tmp_path) as server:
        yield server


def test_a_store_down_at_upload_is_a_503_that_leaves_nothing(
    factory: Factory, settings: Settings, own_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SVP_STORAGE_URL", f"s3://{own_s3.bucket('svp-down')}/data")
    reset_caches()
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    archive, _ = folder_zip(4)
    own_s3.stop()
    r = post_zip(factory.client(eng), project.id, archive)
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "the upload could not be stored" in detail
    assert "could not write s3://svp-down/data/uploads/" in detail
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert files_under(get_settings().uploads_dir) == []


def test_a_half_staged_upload_is_taken_back(queued_jobs: Settings, s3: S3Server) -> None:
    # Three files spooled, the last gone from the disk before it is sent: the two sent are
    # deleted again, and the error says why.
    folder = queued_jobs.uploads_dir / "20250101T000000Z-half"
    folder.mkdir(parents=True)
    upload = SpooledUpload(dir=folder)
    for n in range(3):
        path = f"{folder.name}/{n:05d}"
        if n < 2:
            (queued_jobs.uploads_dir / path).write_bytes(png_bytes(n))
        upload.files.append(SpooledFile(path=path, name=f"{n}.png", size=1))
    with pytest.raises(FileNotFoundError):
        staging.stage_upload(upload, queued_jobs.uploads_dir)
    assert staged(s3, queued_jobs) == {}


def test_the_sweep_deletes_staged_uploads_no_import_will_read(
    factory: Factory, queued_jobs: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES)
    c = factory.client(eng)
    failed_long_ago = post_zip(c, project.id, folder_zip(2)[0]).json()["id"]
    failed_now = post_zip(c, project.id, folder_zip(3)[0]).json()["id"]
    queued = post_zip(c, project.id, folder_zip(4)[0]).json()["id"]
    now = utcnow()
    retention = timedelta(hours=queued_jobs.upload_retention_hours)
    with unit_of_work() as db:
        for job_id, finished in ((failed_long_ago, now - 2 * retention), (failed_now, now)):
            db.execute(
                update(Job).where(Job.id == job_id).values(status="failed", finished_at=finished)
            )
    store = storage.item_store()
    # Staged by requests that died before their job was written: an old one and a fresh one.
    old, fresh = "20000101T000000Z-orphan", now.strftime("%Y%m%dT%H%M%SZ") + "-fresh"
    for name in (old, fresh):
        store.put(f"uploads/{name}/00000", b"x")
    dirs = {
        job_id: job_row(job_id).params["upload_dir"]
        for job_id in (failed_long_ago, failed_now, queued)
    }

    swept = reconcile.sweep_uploads(now, force=True)
    assert sorted(swept) == sorted([dirs[failed_long_ago], old])
    left = {key.split("/")[1] for key in staged(s3, queued_jobs)}
    assert left == {dirs[failed_now], dirs[queued], fresh}


def admin_client(url: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=60)
    r = c.post("/api/auth/login", json=ADMIN)
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def test_a_worker_sharing_no_disk_with_the_server_imports_an_upload(
    tmp_path: Path, database_url: str, broker_url: str, s3: S3Server
) -> None:
    bucket = s3.bucket()
    env = {**s3.env(), "SVP_STORAGE_URL": f"s3://{bucket}/svp", "SVP_WORKER_HEARTBEAT_SECONDS": "1"}
    archive, images = folder_zip(10)
    with (
        stack(
            tmp_path / "server", database_url=database_url, broker_url=broker_url, extra_env=env
        ) as server,
        stack(
            tmp_path / "worker", database_url=database_url, broker_url=broker_url, extra_env=env
        ) as elsewhere,
    ):
        assert server.data_dir != elsewhere.data_dir
        server.serve()
        worker = elsewhere.worker()
        c = admin_client(server.url)
        r = c.post("/api/projects", json={"name": "pets", "classes": CLASSES})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        r = post_zip(c, pid, archive)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        box: dict[str, Any] = {}

        def done() -> bool:
            box["job"] = c.get(f"/api/jobs/{job_id}").json()
            return box["job"]["status"] in ("succeeded", "failed", "canceled")

        wait_for(done, 120, f"import did not finish: {box}", worker, interval=0.5)
        assert box["job"]["status"] == "succeeded", box["job"]
        assert box["job"]["result"]["added"] == 10
        items = c.get(f"/api/projects/{pid}/items", params={"limit": 50}).json()["items"]
        assert len(items) == 10
        r = c.get(f"/api/items/{items[0]['id']}/image")
        assert r.status_code == 200
        assert r.content in {data for _, data in images.values()}
        # The server's disk held the upload only while it arrived; the worker read it from the
        # store, and neither disk holds an image.
        assert files_under(server.data_dir / "uploads") == []
        assert files_under(elsewhere.data_dir / "tmp" / "imports") == []
        for data_dir in (server.data_dir, elsewhere.data_dir):
            assert files_under(data_dir / "images") == []
        assert bucket_objects(s3, bucket, "svp/uploads/") == {}
