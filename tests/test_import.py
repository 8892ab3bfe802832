"""Uploads and the import job: happy paths, every bad input, limits, roles and re-runs."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, update

from app.db import unit_of_work, utcnow
from app.items import archive, importer
from app.items.models import Item
from app.jobs import reconcile
from app.jobs.models import Job
from app.jobs.runtime import JobContext, run_job
from app.labeling.models import Label
from app.settings import Settings, get_settings
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.factories import Factory, png_bytes


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding these entries under exactly these names (no normalisation)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def noisy(fmt: str, seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """An image of random pixels, so a cut anywhere lands inside the compressed data."""
    rng = __import__("random").Random(seed)
    image = Image.frombytes(
        "RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    )
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def upload(
    client: TestClient,
    project_id: int,
    files: list[tuple[str, bytes]],
    **fields: str,
) -> tuple[int, dict]:
    """POST files as repeated ``file`` fields; returns (status, body)."""
    r = client.post(
        f"/api/projects/{project_id}/items",
        files=[("file", (name, data, "application/octet-stream")) for name, data in files],
        data=fields,
    )
    return r.status_code, r.json()


def files_under(root: Path, exclude: Path | None = None) -> set[Path]:
    """Every file below root (outside ``exclude``)."""
    found = set()
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if exclude is None or not p.is_relative_to(exclude):
                found.add(p)
    return found


def item_rows(project_id: int) -> list[Item]:
    with unit_of_work(write=False) as db:
        return list(db.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)))


def test_upload_of_files_imports_them_as_a_job(factory: Factory, settings: Settings) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    status, job = upload(c, project.id, [("a.png", png_bytes(1)), ("b.jpg", noisy("JPEG", 2))])
    assert status == 202
    assert job["kind"] == "import"
    assert job["project_id"] == project.id
    assert job["status"] in ("queued", "running", "succeeded")
    assert set(job) >= {
        "id",
        "stage",
        "progress",
        "error",
        "result",
        "created_at",
        "started_at",
        "finished_at",
    }
    done = factory.wait_job(job["id"])
    assert done.status == "succeeded", done.error
    assert done.result is not None
    assert done.result["added"] == 2
    assert done.result["duplicates"] == 0
    assert done.result["rejected"] == []
    assert done.progress == 1.0
    assert done.stage == "importing"
    rows = item_rows(project.id)
    assert [(r.name, r.width, r.height, r.media_type, r.split, r.label) for r in rows] == [
        ("a.png", 16, 16, "image/png", "pool", None),
        ("b.jpg", 64, 64, "image/jpeg", "pool", None),
    ]
    stored = settings.images_dir / rows[0].content_hash[:2] / rows[0].content_hash
    assert stored.read_bytes() == png_bytes(1)
    assert rows[0].content_hash == hashlib.sha256(png_bytes(1)).hexdigest()
    # The upload is deleted once the job succeeded.
    assert files_under(settings.uploads_dir) == set()
    # The monitor shows the same job.
    r = c.get(f"/api/jobs/{job['id']}")
    assert r.status_code == 200
    assert r.json()["result"]["added"] == 2


def test_zip_with_folder_labels_and_every_bad_entry(
    factory: Factory, settings: Settings, tmp_path: Path
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    inner = zip_bytes({"cat/x.png": png_bytes(50)})
    archive = zip_bytes(
        {
            "set/cat/": b"",
            "set/cat/1.png": png_bytes(1),
            "set/cat/2.jpg": noisy("JPEG", 2),
            "set/dog/3.png": png_bytes(3),
            "set/dog/copy-of-1.png": png_bytes(1),  # same bytes as cat/1.png: a duplicate
            "set/fish/4.png": png_bytes(4),  # not a class of the project
            "../evil.png": png_bytes(5),
            "/abs.png": png_bytes(6),
            "cat/../../evil2.png": png_bytes(7),
            "set/cat/nested.zip": inner,
            "set/cat/notes.txt": b"just some words, not an image",
            "set/cat/empty.png": b"",
            "set/cat/cut.png": noisy("PNG", 8)[:-200],
            "set/cat/cut.jpg": noisy("JPEG", 9)[:-300],
            "set/dog/bomb.png": huge_png_header(100_000, 100_000),
            "loose.png": png_bytes(10),  # no folder to take a class from
            "__MACOSX/set/cat/._1.png": b"resource fork",
        }
    )
    before = files_under(tmp_path, exclude=settings.data_dir)
    c = factory.client(eng)
    status, job = upload(c, project.id, [("set.zip", archive)], labels_from_folders="true")
    assert status == 202
    done = factory.wait_job(job["id"])
    assert done.status == "succeeded", done.error
    result = done.result
    assert result is not None
    reasons = {r["name"]: r["reason"] for r in result["rejected"]}
    assert result["added"] == 3
    assert result["duplicates"] == 1
    assert result["labeled"] == 3
    assert set(reasons) == {
        "set/fish/4.png",
        "../evil.png",
        "/abs.png",
        "cat/../../evil2.png",
        "set/cat/nested.zip",
        "set/cat/notes.txt",
        "set/cat/empty.png",
        "set/cat/cut.png",
        "set/cat/cut.jpg",
        "set/dog/bomb.png",
        "loose.png",
    }
    assert "not a class" in reasons["set/fish/4.png"]
    assert ".." in reasons["../evil.png"]
    assert "absolute" in reasons["/abs.png"]
    assert ".." in reasons["cat/../../evil2.png"]
    assert "nested" in reasons["set/cat/nested.zip"]
    assert "not an image" in reasons["set/cat/notes.txt"]
    assert reasons["set/cat/empty.png"] == "empty file"
    assert "truncated or corrupt" in reasons["set/cat/cut.png"]
    assert "truncated or corrupt" in reasons["set/cat/cut.jpg"]
    assert "bomb" in reasons["set/dog/bomb.png"]
    assert "no folder" in reasons["loose.png"]
    assert result["rejected_count"] == len(reasons)

    rows = item_rows(project.id)
    assert [(r.name, r.label) for r in rows] == [
        ("set/cat/1.png", "cat"),
        ("set/cat/2.jpg", "cat"),
        ("set/dog/3.png", "dog"),
    ]
    with unit_of_work(write=False) as db:
        labels = list(db.scalars(select(Label).order_by(Label.id)))
    assert [(lb.item_id, lb.label, lb.source, lb.user_id, lb.project_id) for lb in labels] == [
        (r.id, r.label, "import", eng.id, project.id) for r in rows
    ]
    # Nothing was written outside the data dir, and inside it only images by hash.
    assert files_under(tmp_path, exclude=settings.data_dir) == before
    assert not any(p.name.startswith("evil") for p in files_under(tmp_path))
    image_files = files_under(settings.images_dir)
    assert {p.name for p in image_files} == {r.content_hash for r in rows}


def test_duplicates_across_uploads_are_counted_not_stored(
    factory: Factory, settings: Settings
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    other = factory.project(eng)
    c = factory.client(eng)
    first = factory.wait_job(upload(c, project.id, [("a.png", png_bytes(1))])[1]["id"])
    assert first.result is not None
    assert first.result["added"] == 1
    _, job = upload(c, project.id, [("again.png", png_bytes(1)), ("b.png", png_bytes(2))])
    second = factory.wait_job(job["id"])
    assert second.result is not None
    assert (second.result["added"], second.result["duplicates"]) == (1, 1)
    # Another project may hold the same image; the file on disk is shared.
    third = factory.wait_job(upload(c, other.id, [("a.png", png_bytes(1))])[1]["id"])
    assert third.result is not None
    assert third.result["added"] == 1
    assert len(item_rows(project.id)) == 2
    assert len(files_under(settings.images_dir)) == 2


def test_test_split_and_bad_fields(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    status, job = upload(c, project.id, [("t.png", png_bytes(3))], split="test")
    assert status == 202
    assert factory.wait_job(job["id"]).status == "succeeded"
    assert [r.split for r in item_rows(project.id)] == ["test"]
    assert upload(c, project.id, [("t.png", png_bytes(4))], split="train")[0] == 422
    assert upload(c, project.id, [("t.png", png_bytes(4))], labels_from_folders="maybe")[0] == 422
    assert upload(c, project.id, [], split="pool")[0] == 422
    r = c.post(f"/api/projects/{project.id}/items", files=[("image", ("x.png", png_bytes(5)))])
    assert r.status_code == 422
    r = c.post(f"/api/projects/{project.id}/items", json={"file": "x"})
    assert r.status_code == 422


def test_image_bomb_by_pixel_setting(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVP_MAX_IMAGE_PIXELS", "10000")
    get_settings.cache_clear()
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    files = [("big.png", png_bytes(1, size=(200, 200))), ("small.png", png_bytes(2, size=(50, 50)))]
    done = factory.wait_job(upload(c, project.id, files)[1]["id"])
    assert done.result is not None
    assert done.result["added"] == 1
    assert [r["name"] for r in done.result["rejected"]] == ["big.png"]
    assert "bomb" in done.result["rejected"][0]["reason"]


def test_zip_bombs_by_declared_and_actual_size(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10,000 pixels allow entries of about 1 MiB: a 5 MiB entry is refused unread.
    monkeypatch.setenv("SVP_MAX_IMAGE_PIXELS", "10000")
    get_settings.cache_clear()
    honest = zip_bytes({"bomb.bmp": b"\0" * (5 << 20), "ok.png": png_bytes(1)})
    # A liar: declares 100 bytes for an entry that inflates to 3 MiB.
    liar = bytearray(zip_bytes({"liar.png": b"\0" * (3 << 20)}))
    assert liar[:4] == b"PK\x03\x04"
    struct.pack_into("<I", liar, 22, 100)
    central = liar.index(b"PK\x01\x02")
    struct.pack_into("<I", liar, central + 24, 100)
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    monkeypatch.setattr(archive, "MAX_ARCHIVE_ENTRIES", 3)
    crowded = zip_bytes({f"{i}.png": png_bytes(i) for i in range(10, 14)})
    files = [
        ("honest.zip", honest),
        ("liar.zip", bytes(liar)),
        ("crowded.zip", crowded),
        ("plain.bmp", b"BM" + b"\0" * (2 << 20)),
    ]
    done = factory.wait_job(upload(c, project.id, files)[1]["id"])
    assert done.result is not None
    reasons = {r["name"]: r["reason"] for r in done.result["rejected"]}
    assert done.result["added"] == 1
    assert "too large" in reasons["bomb.bmp"]
    assert "corrupt archive entry" in reasons["liar.png"]
    assert "more than 3 entries" in reasons["crowded.zip"]
    assert "too large" in reasons["plain.bmp"]
    assert len(reasons) == 4


def under_declared(zip_data: bytes, declared: int) -> bytes:
    """The archive with its end record declaring ``declared`` entries, whatever it holds."""
    data = bytearray(zip_data)
    end = data.rindex(b"PK\x05\x06")
    # Entries on this disk, then in total: both lie alike, as a crafted archive's would.
    struct.pack_into("<HH", data, end + 8, declared, declared)
    return bytes(data)


def test_an_archive_that_under_declares_its_entries_is_refused_whole(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "MAX_ARCHIVE_ENTRIES", 3)
    liar = under_declared(zip_bytes({f"{i}.png": png_bytes(i) for i in range(20, 25)}), 1)
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    files = [("liar.zip", liar), ("ok.png", png_bytes(1))]
    done = factory.wait_job(upload(c, project.id, files)[1]["id"])
    assert done.result is not None
    assert done.result["added"] == 1
    assert done.result["rejected"] == [
        {"name": "liar.zip", "reason": "more than 3 entries in one archive"}
    ]


def crowded_directory(records: int) -> bytes:
    """An archive of one stored file listed ``records`` times, its end record declaring one.

    Each central record costs 51 bytes of upload and, once zipfile parses it, an object of a few
    hundred bytes: the shape of a small upload that would fill a worker's memory.
    """
    name, data = b"a.png", png_bytes(1)
    crc = zlib.crc32(data)
    local = (
        struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0
        )
        + name
        + data
    )
    record = (
        struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            len(data),
            len(data),
            len(name),
            0,
            0,
            0,
            0,
            0,
            0,
        )
        + name
    )
    directory = record * records
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(local), 0)
    return local + directory + end


@pytest.mark.database_free
def test_the_entry_limit_holds_before_the_directory_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "MAX_ARCHIVE_ENTRIES", 1000)
    path = tmp_path / "crowded.zip"
    path.write_bytes(crowded_directory(200_000))
    tracemalloc.start()
    try:
        counted = archive.count_entries(path)
        entries = list(archive.entries(path, "crowded.zip", entry_limit=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counted == 1
    assert [(e.name, e.problem) for e in entries] == [
        ("crowded.zip", "more than 1000 entries in one archive")
    ]
    # zipfile would have read the 10 MB directory and made 200,000 objects of it.
    assert peak < 1 << 20, f"{peak} bytes allocated refusing the archive"
    # Within the limit, the same shape opens and reads as zipfile reads it.
    path.write_bytes(crowded_directory(1000))
    assert archive.count_entries(path) == 1000
    reading = archive.entries(path, "crowded.zip", entry_limit=1 << 20)
    assert next(reading).content() == png_bytes(1)  # read while the archive is open
    reading.close()


def test_a_broken_zip_is_refused_and_the_rest_imports(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    broken = zip_bytes({"a.png": png_bytes(1)})[:-30]
    done = factory.wait_job(
        upload(c, project.id, [("broken.zip", broken), ("b.png", png_bytes(2))])[1]["id"]
    )
    assert done.result is not None
    assert done.result["added"] == 1
    assert done.result["rejected"][0]["name"] == "broken.zip"
    assert "not a valid zip" in done.result["rejected"][0]["reason"]


def _multipart(name: str, data: bytes, boundary: str = "svpboundary") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_oversized_upload_gets_413_and_leaves_nothing(
    factory: Factory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVP_MAX_UPLOAD_MB", "1")
    get_settings.cache_clear()
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    big = os.urandom(1_200_000)
    # Honest Content-Length: refused before the body is read.
    status, body = upload(c, project.id, [("big.png", big)])
    assert status == 413
    assert "1 MiB" in body["detail"]
    # No Content-Length (chunked): cut off while streaming, the partial file removed.
    body_bytes = _multipart("big.png", big)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body_bytes), 64 * 1024):
            yield body_bytes[i : i + 64 * 1024]

    r = c.post(
        f"/api/projects/{project.id}/items",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=svpboundary"},
    )
    assert r.status_code == 413
    # A lying Content-Length: small declared, more sent.
    r = c.post(
        f"/api/projects/{project.id}/items",
        content=chunks(),
        headers={
            "Content-Type": "multipart/form-data; boundary=svpboundary",
            "Content-Length": "1000",
        },
    )
    # (The test client delivers every byte sent; a real server's HTTP parser would stop at the
    # declared length and the cut-short body would get 422.)
    assert r.status_code == 413
    assert files_under(settings.uploads_dir) == set()
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 0
    # Just under the limit is fine.
    status, _ = upload(c, project.id, [("ok.png", png_bytes(1))])
    assert status == 202


def test_only_engineers_of_the_project_upload(factory: Factory, settings: Settings) -> None:
    eng, ann, stranger = (
        factory.user("engineer"),
        factory.user("annotator"),
        factory.user("engineer"),
    )
    project = factory.project(eng, members={ann: "annotator"})
    files = [("a.png", png_bytes(1))]
    assert upload(factory.client(ann), project.id, files)[0] == 403
    assert upload(factory.client(stranger), project.id, files)[0] == 404
    assert upload(factory.anonymous(), project.id, files)[0] == 401
    assert upload(factory.client(eng), 999_999, files)[0] == 404
    no_csrf = factory.client(eng)
    del no_csrf.headers["X-CSRF-Token"]
    assert upload(no_csrf, project.id, files)[0] == 403
    # A bearer token needs no CSRF header; an admin may upload anywhere.
    assert upload(factory.token_client(eng), project.id, files)[0] == 202
    assert (
        upload(factory.client(factory.user("admin")), project.id, [("b.png", png_bytes(2))])[0]
        == 202
    )
    # Refusals left no upload behind: two import jobs (each import that adds images may also
    # queue the embedding of what it added, a job of another kind, on its own time).
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Job).where(Job.kind == "import")) == 2


def _make_job(
    factory: Factory, settings: Settings, project_id: int, user_id: int, data: bytes
) -> int:
    """A queued import job over a zip placed in the uploads dir, not sent anywhere."""
    folder = settings.uploads_dir / "manual"
    folder.mkdir(parents=True)
    (folder / "00000").write_bytes(data)
    with unit_of_work() as db:
        job = Job(
            kind="import",
            project_id=project_id,
            created_by=user_id,
            params={
                "upload_dir": "manual",
                "files": [{"path": "manual/00000", "name": "set.zip", "size": len(data)}],
                "split": "pool",
                "labels_from_folders": True,
            },
        )
        db.add(job)
        db.flush()
        return job.id


def test_import_is_idempotent_when_run_twice(factory: Factory, settings: Settings) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    archive = zip_bytes({f"{'cat' if i % 2 else 'dog'}/{i}.png": png_bytes(i) for i in range(6)})
    job_id = _make_job(factory, settings, project.id, eng.id, archive)
    assert run_job(job_id) == "succeeded"
    first = factory.wait_job(job_id).result
    assert first is not None
    assert first["added"] == 6
    # Redelivered after it finished (the upload is gone by now): same result, nothing added.
    with unit_of_work() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="queued", finished_at=None))
    assert run_job(job_id) == "succeeded"
    assert factory.wait_job(job_id).result == first
    assert len(item_rows(project.id)) == 6
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Label)) == 6


class _DiesAfterFirstBatch(JobContext):
    """A worker that dies right after its first batch committed."""

    def progress(self, stage: str, fraction: float) -> None:
        raise SystemExit("worker killed")


def test_import_resumes_after_a_crash_without_double_counting(
    factory: Factory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BATCH_SIZE", 3)
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    entries = {f"cat/{i}.png": png_bytes(i) for i in range(7)}
    entries["cat/again.png"] = png_bytes(0)
    entries["fish/x.png"] = png_bytes(99)
    job_id = _make_job(factory, settings, project.id, eng.id, zip_bytes(entries))
    with unit_of_work() as db:
        job = db.get(Job, job_id)
        assert job is not None
        ctx = _DiesAfterFirstBatch(
            job_id=job_id, kind="import", project_id=project.id, params=job.params
        )
    with pytest.raises(SystemExit):
        importer.run_import(ctx)
    # The first batch is in, with its checkpoint; the upload is still there.
    assert len(item_rows(project.id)) == 3
    assert files_under(settings.uploads_dir) != set()
    assert run_job(job_id) == "succeeded"
    result = factory.wait_job(job_id).result
    assert result is not None
    assert (result["added"], result["duplicates"], result["rejected_count"]) == (7, 1, 1)
    assert result["processed"] == result["total"] == 9
    assert len(item_rows(project.id)) == 7
    assert files_under(settings.uploads_dir) == set()


@pytest.mark.slow
@pytest.mark.cifar
@needs_shared_data()
def test_cifar10_train_zip_imports_fast(factory: Factory, settings: Settings) -> None:
    """50,000 JPEGs in class folders: all imported and labelled; prints the rate."""
    eng = factory.user("engineer")
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    project = factory.project(eng, classes=classes)
    data = (SHARED_DATA / "cifar10" / "train.zip").read_bytes()
    job_id = _make_job(factory, settings, project.id, eng.id, data)
    started = time.perf_counter()
    assert run_job(job_id) == "succeeded"
    elapsed = time.perf_counter() - started
    result = factory.wait_job(job_id).result
    assert result is not None
    assert (result["added"], result["labeled"], result["rejected_count"]) == (50_000, 50_000, 0)
    print(
        f"\nCIFAR-10 train.zip: 50,000 images in {elapsed:.1f}s = {50_000 / elapsed:.0f} images/s"
    )
    # Loose on purpose (a shared CI box): an order of magnitude below what it does alone.
    assert 50_000 / elapsed > 300


def test_the_reconciler_sweeps_uploads_no_import_will_read(
    factory: Factory, settings: Settings
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    now = utcnow()
    long_ago, lately = now - timedelta(days=2), now - timedelta(hours=1)
    cases = {
        "failed-long-ago": ("failed", long_ago, False),
        "failed-lately": ("failed", lately, True),
        "canceled-long-ago": ("canceled", long_ago, False),
        "queued": ("queued", None, True),
        "running": ("running", None, True),
        "succeeded": ("succeeded", lately, False),
        "orphan-stale": (None, None, False),
        "orphan-fresh": (None, None, True),
    }
    with unit_of_work() as db:
        for name, (status, finished, _) in cases.items():
            folder = settings.uploads_dir / name
            folder.mkdir(parents=True)
            (folder / "00000").write_bytes(b"x")
            if status is not None:
                db.add(
                    Job(
                        kind="import",
                        project_id=project.id,
                        params={"upload_dir": name, "files": []},
                        status=status,
                        finished_at=finished,
                    )
                )
    stale = (now - timedelta(hours=3)).timestamp()
    for path in (
        settings.uploads_dir / "orphan-stale",
        settings.uploads_dir / "orphan-stale" / "00000",
    ):
        os.utime(path, (stale, stale))
    deleted = reconcile.sweep_uploads(now, force=True)
    assert sorted(deleted) == sorted(n for n, (_, _, keep) in cases.items() if not keep)
    left = sorted(p.name for p in settings.uploads_dir.iterdir())
    assert left == sorted(n for n, (_, _, keep) in cases.items() if keep)
