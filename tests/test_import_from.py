"""Import by reference (DESIGN 4d): objects of a bucket become items without their bytes passing
through the server.

The bucket is a real S3 API over HTTP (moto in server mode, ``tests/s3server.py``). The first
tests run the job in the server's own pool (``SVP_INLINE_JOBS``, as every in-process import
test does); the fault tests at the end run ``svplabel serve`` and two ``svplabel worker``
processes, stop the store mid-import, and delete an object a round's batch holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from app.db import reset_caches, unit_of_work
from app.items.models import ImportChunk, Item
from app.labeling.models import Label
from app.settings import Settings, get_settings
from tests.factories import Factory, png_bytes
from tests.procs import free_port
from tests.s3server import S3Server

IMPORT_FROM = "/api/projects/{pid}/items/import-from"


@pytest.fixture
def ref_settings(
    settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``settings`` that reach the test S3 server (item bytes stay in the data dir)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SVP_IMPORT_CHUNK_SIZE", "3")
    reset_caches()
    yield get_settings()
    reset_caches()


def distinct_png(i: int) -> bytes:
    """A tiny PNG whose first pixel spells ``i``: distinct for every i below 2**24."""
    image = Image.new("RGB", (4, 4), (90, 90, 90))
    image.putpixel((0, 0), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    image = Image.new("RGB", (12, 10), ((seed * 11) % 256, 40, 200))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


def put_objects(s3: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    """Store objects with the tests' own client, a few at once."""
    client: Any = s3.client()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )


def start(c: TestClient, pid: int, **body: Any) -> tuple[int, dict[str, Any]]:
    r = c.post(IMPORT_FROM.format(pid=pid), json=body)
    return r.status_code, r.json()


def run_import(factory: Factory, c: TestClient, pid: int, **body: Any) -> dict[str, Any]:
    """Start an import by reference and wait for it; the finished job's JSON."""
    status, job = start(c, pid, **body)
    assert status == 202, job
    assert job["kind"] == "import"
    factory.wait_job(job["id"])
    return dict(c.get(f"/api/jobs/{job['id']}").json())


def items_of(pid: int) -> dict[str, Item]:
    with unit_of_work(write=False) as db:
        return {i.name: i for i in db.scalars(select(Item).where(Item.project_id == pid))}


def reasons(result: dict[str, Any]) -> dict[str, str]:
    return {r["name"]: r["reason"] for r in result["rejected"]}


# ---- the request's checks ------------------------------------------------------------------


def test_the_request_is_checked_before_a_job_is_written(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    bucket = s3.bucket()
    put_objects(s3, bucket, {"cats/a.png": png_bytes(1), "list.txt": b"key\ncats/a.png\n"})
    pid = project.id

    def refused(body: dict[str, Any], needle: str) -> None:
        r = c.post(IMPORT_FROM.format(pid=pid), json=body)
        assert r.status_code == 422, (body, r.text)
        assert needle in r.text, (needle, r.text)

    refused({}, "exactly one of 'source'")
    refused({"source": f"s3://{bucket}/", "manifest": f"s3://{bucket}/l.csv"}, "exactly one")
    refused({"source": f"s3://{bucket}/", "splt": "pool"}, "splt")  # unknown field
    refused({"source": f"s3://{bucket}/", "split": "train"}, "split")
    refused({"source": "http://example.com/x"}, "expected s3://bucket/prefix")
    refused({"source": "s3:///nobucket"}, "expected s3://bucket/prefix")
    refused({"source": "s3://never-made-bucket/x"}, "no bucket 'never-made-bucket'")
    refused({"source": f"s3://{bucket}/dogs/"}, f"no object under s3://{bucket}/dogs/")
    refused({"manifest": f"s3://{bucket}/missing.csv"}, f"no manifest at s3://{bucket}/missing")
    refused({"manifest": f"s3://{bucket}/list.txt"}, "a manifest is a .csv or .jsonl object")
    refused({"manifest": f"s3://{bucket}"}, "a manifest is a .csv or .jsonl object")
    refused({"source": "s3://b/\x00"}, "NUL")
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Item)) == 0
        from app.jobs.models import Job

        assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_an_unreachable_store_is_named_at_once(
    factory: Factory, ref_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVP_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    reset_caches()
    eng = factory.user("engineer")
    project = factory.project(eng)
    status, body = start(factory.client(eng), project.id, source="s3://somewhere/images/")
    assert status == 422
    assert "cannot read the source s3://somewhere/images/" in body["detail"]
    assert "Could not connect to the endpoint URL" in body["detail"]
    assert "testing" not in body["detail"]  # never a credential


def test_only_engineers_of_the_project_may_import(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    annotator = factory.user("annotator")
    stranger = factory.user("engineer")
    project = factory.project(eng, members={annotator: "annotator"})
    bucket = s3.bucket()
    put_objects(s3, bucket, {"a.png": png_bytes(1)})
    body = {"source": f"s3://{bucket}/"}
    assert start(factory.client(annotator), project.id, **body)[0] == 403
    assert start(factory.client(stranger), project.id, **body)[0] == 404
    assert (
        factory.anonymous().post(IMPORT_FROM.format(pid=project.id), json=body).status_code == 401
    )


# ---- images --------------------------------------------------------------------------------


def test_images_under_a_prefix_become_items_that_read_from_the_bucket(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    c = factory.client(eng)
    bucket = s3.bucket()
    objects = {
        "set/cat/1.png": png_bytes(1),
        "set/cat/2.jpg": jpeg_bytes(2),
        "set/dog/3.png": png_bytes(3),
        "set/dog/3-again.png": png_bytes(3),  # same bytes: one item
        "set/dog/broken.png": png_bytes(4)[:-20],
        "set/dog/notes.txt": b"hello",
        "set/dog/empty.png": b"",
        "set/bird/5.png": png_bytes(5),  # not a class
        "set/6.png": png_bytes(6),  # no folder
        "other/7.png": png_bytes(7),  # outside the prefix
    }
    put_objects(s3, bucket, objects)
    job = run_import(factory, c, project.id, source=f"s3://{bucket}/set/", labels_from_folders=True)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["added"], result["duplicates"], result["rejected_count"]) == (3, 1, 5)
    assert result["total"] == result["processed"] == 9
    assert result["labeled"] == 3
    assert result["source"] == f"s3://{bucket}/set/"
    why = reasons(result)
    assert why["dog/broken.png"].startswith("truncated or corrupt image")
    assert "text file" in why["dog/notes.txt"]
    assert why["dog/empty.png"] == "empty file"
    assert why["bird/5.png"] == "folder 'bird' is not a class of the project"
    assert why["6.png"] == "no folder to take the class from"
    items = items_of(project.id)
    assert set(items) == {"cat/1.png", "cat/2.jpg", "dog/3.png"} or set(items) == {
        "cat/1.png",
        "cat/2.jpg",
        "dog/3-again.png",
    }
    first = items["cat/1.png"]
    assert first.source == f"s3://{bucket}/set/cat/1.png"
    assert first.content_hash == hashlib.sha256(png_bytes(1)).hexdigest()
    assert (first.width, first.height, first.label) == (16, 16, "cat")
    assert items["cat/2.jpg"].media_type == "image/jpeg"
    # The bytes were never copied into the item store: the image comes from the bucket.
    assert not list((ref_settings.data_dir / "images").rglob("*"))
    r = c.get(f"/api/items/{first.id}/image")
    assert r.status_code == 200
    assert r.content == png_bytes(1)
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(ImportChunk)) == 0  # summed, dropped
        assert db.scalar(select(func.count()).select_from(Label)) == 3

    # A second import of the same prefix: every object is already there.
    again = run_import(factory, c, project.id, source=f"s3://{bucket}/set/cat")
    assert again["status"] == "succeeded"
    assert (again["result"]["added"], again["result"]["duplicates"]) == (0, 2)


def test_item_names_are_keys_below_the_prefix_never_cut_mid_name() -> None:
    from app.items.reference_import import Source

    def names(prefix: str, *keys: str) -> list[str]:
        return [Source("b", prefix, None).name_of(k) for k in keys]

    assert names("", "a.png", "cat/b.png") == ["a.png", "cat/b.png"]
    assert names("set/", "set/cat/1.png") == ["cat/1.png"]
    assert names("set", "set/cat/1.png", "settings/x.png", "set.png") == [
        "cat/1.png",
        "settings/x.png",
        "set.png",
    ]
    assert names("d/set", "d/set/1.png", "d/settings/2.png") == ["1.png", "settings/2.png"]
    assert names("d/one.png", "d/one.png") == ["one.png"]


def test_a_source_naming_one_object_imports_it_under_its_file_name(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    bucket = s3.bucket()
    put_objects(s3, bucket, {"deep/down/photo.png": png_bytes(9)})
    c = factory.client(eng)
    job = run_import(factory, c, project.id, source=f"s3://{bucket}/deep/down/photo.png")
    assert job["result"]["added"] == 1
    assert set(items_of(project.id)) == {"photo.png"}


def test_archives_and_oversized_objects_are_refused_unread(
    factory: Factory,
    ref_settings: Settings,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1,000 pixels: no image needs more than 8 bytes a pixel and 1 MiB of headers.
    monkeypatch.setenv("SVP_MAX_IMAGE_PIXELS", "1000")
    reset_caches()
    eng = factory.user("engineer")
    project = factory.project(eng)
    bucket = s3.bucket()
    big = b"\x89PNG" + b"\0" * (2 << 20)
    put_objects(
        s3,
        bucket,
        {"ok.png": png_bytes(1), "big.png": big, "all.zip": b"PK\x03\x04rest", "\\odd.png": b"x"},
    )
    job = run_import(factory, factory.client(eng), project.id, source=f"s3://{bucket}")
    why = reasons(job["result"])
    assert job["result"]["added"] == 1
    assert why["big.png"] == (
        f"too large: s3://{bucket}/big.png is {len(big)} bytes, more than the "
        f"{1000 * 8 + (1 << 20)} accepted"
    )
    assert why["all.zip"].startswith("a zip archive: an import by reference reads objects")
    assert why["/odd.png"] == "absolute path"


def test_a_manifest_lists_keys_names_and_labels(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat", "dog"])
    c = factory.client(eng)
    bucket = s3.bucket()
    put_objects(s3, bucket, {f"raw/{i}.png": png_bytes(10 + i) for i in range(5)})
    csv_manifest = (
        "key,name,label\n"
        "raw/0.png,first,cat\n"
        f"s3://{bucket}/raw/1.png,,dog\n"
        "raw/2.png,third,\n"
        ",nokey,cat\n"
        "raw/3.png,fourth,horse\n"
        "raw/gone.png,gone,cat\n"
        "s3://another-bucket/raw/4.png,elsewhere,\n"
        "\n"
    )
    put_objects(s3, bucket, {"lists/m.csv": csv_manifest.encode()})
    job = run_import(factory, c, project.id, manifest=f"s3://{bucket}/lists/m.csv", split="test")
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["added"], result["labeled"], result["rejected_count"]) == (3, 2, 4)
    assert result["total"] == 7
    why = reasons(result)
    assert why["manifest:5"] == "no 'key'"
    assert why["fourth"] == "label 'horse' is not a class of the project"
    assert why["gone"].startswith(f"no object at s3://{bucket}/raw/gone.png")
    assert why["s3://another-bucket/raw/4.png"] == f"not in the manifest's bucket {bucket!r}"
    items = items_of(project.id)
    assert {n: (i.label, i.split) for n, i in items.items()} == {
        "first": ("cat", "test"),
        "raw/1.png": ("dog", "test"),
        "third": (None, "test"),
    }

    jsonl = "\n".join(
        [
            json.dumps({"key": "raw/4.png", "label": "cat"}),
            json.dumps({"key": "raw/0.png"}),  # already imported
            "not json",
            json.dumps(["a", "list"]),
            json.dumps({"key": 5}),
        ]
    )
    put_objects(s3, bucket, {"lists/m.jsonl": jsonl.encode()})
    job = run_import(factory, c, project.id, manifest=f"s3://{bucket}/lists/m.jsonl")
    result = job["result"]
    assert (result["added"], result["duplicates"], result["rejected_count"]) == (1, 1, 3)
    assert reasons(result)["manifest:4"] == "not a JSON object"
    assert items_of(project.id)["raw/4.png"].label == "cat"


def test_a_manifest_that_cannot_be_read_fails_its_job_with_the_reason(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    bucket = s3.bucket()
    put_objects(s3, bucket, {"m.csv": b"path,label\na.png,cat\n", "l.jsonl": b"\xff\xfe"})
    job = run_import(factory, c, project.id, manifest=f"s3://{bucket}/m.csv")
    assert job["status"] == "failed"
    assert "the manifest has no 'key' column" in job["error"]
    job = run_import(factory, c, project.id, manifest=f"s3://{bucket}/l.jsonl")
    assert job["status"] == "failed"
    assert "not UTF-8" in job["error"]


# ---- texts ---------------------------------------------------------------------------------


def test_a_text_project_reads_each_object_as_an_uploaded_file(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["pos", "neg"], kind="text")
    c = factory.client(eng)
    bucket = s3.bucket()
    put_objects(
        s3,
        bucket,
        {
            "t/pos/1.txt": b"a fine day",
            "t/neg/2.txt": b"a grey day",
            "t/neg/3.txt": b"a fine day",  # the same text as 1: a duplicate
            "t/rows.csv": b"text,label\nfirst row,pos\nsecond row,maybe\n,neg\n",
            "t/rows.jsonl": b'{"text": "third row", "name": "r3"}\n',
            "t/pos/latin1.txt": "caf\xe9".encode("latin-1"),
            "t/pic.png": png_bytes(1),
        },
    )
    job = run_import(factory, c, project.id, source=f"s3://{bucket}/t/", labels_from_folders=True)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    why = reasons(result)
    assert (result["added"], result["duplicates"]) == (4, 1), why
    assert why["rows.csv:3"] == "label 'maybe' is not a class of the project"
    assert why["rows.csv:4"] == "empty text"
    assert "not UTF-8" in why["pos/latin1.txt"]
    assert why["pic.png"].startswith("an image: this is a text project")
    items = items_of(project.id)
    # One text of two objects with the same bytes: the object read first keeps it.
    assert len({"pos/1.txt", "neg/3.txt"} & set(items)) == 1
    assert items["neg/2.txt"].label == "neg"
    # A .csv's rows carry their own labels (a .txt takes its folder's).
    assert items["rows.csv:2"].label == "pos"
    assert all(i.source is None for i in items.values())  # a text lives in its row
    with unit_of_work(write=False) as db:
        rows = db.execute(select(Item.name, Item.text).where(Item.project_id == project.id))
        texts = dict(rows.tuples().all())
    assert texts["r3"] == "third row"
    assert texts["neg/2.txt"] == "a grey day"


# ---- cancel, retry, and an object deleted after its import ---------------------------------


def test_a_canceled_import_keeps_whole_chunks_and_a_retry_finishes_it(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    bucket = s3.bucket()
    n = 150
    put_objects(s3, bucket, {f"p/{i:04d}.png": distinct_png(i) for i in range(n)})
    status, job = start(c, project.id, source=f"s3://{bucket}/p/")
    assert status == 202

    def registered() -> int:
        with unit_of_work(write=False) as db:
            return int(db.scalar(select(func.count()).select_from(Item)) or 0)

    deadline = time.monotonic() + 60
    while registered() == 0:
        assert time.monotonic() < deadline, "the import registered nothing"
        time.sleep(0.01)
    assert c.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    canceled = factory.wait_job(job["id"])
    assert canceled.status == "canceled"
    assert canceled.result is not None
    added = registered()
    # Whole chunks only (3 objects each), each counted in the checkpoint as registered.
    assert 0 < added < n
    assert added % 3 == 0
    with unit_of_work(write=False) as db:
        done = db.scalar(
            select(func.coalesce(func.sum(ImportChunk.added), 0)).where(
                ImportChunk.job_id == job["id"], ImportChunk.status == "done"
            )
        )
    assert done == added

    assert c.post(f"/api/jobs/{job['id']}/retry").status_code == 200
    finished = factory.wait_job(job["id"])
    assert finished.status == "succeeded", finished.error
    assert finished.result is not None
    assert (finished.result["added"], finished.result["duplicates"]) == (n, 0)
    assert finished.result["total"] == finished.result["processed"] == n
    assert registered() == n


def test_an_object_deleted_after_its_import_is_a_404_with_the_reason(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    bucket = s3.bucket()
    put_objects(s3, bucket, {"a.png": png_bytes(1), "b.png": png_bytes(2)})
    assert run_import(factory, c, project.id, source=f"s3://{bucket}")["result"]["added"] == 2
    items = items_of(project.id)
    client: Any = s3.client()
    client.delete_object(Bucket=bucket, Key="a.png")
    r = c.get(f"/api/items/{items['a.png'].id}/image")
    assert r.status_code == 404
    assert f"the image of item {items['a.png'].id} is gone" in r.json()["detail"]
    assert f"s3://{bucket}/a.png" in r.json()["detail"]
    # Replaced with other bytes: as gone, never the wrong picture.
    client.put_object(Bucket=bucket, Key="b.png", Body=png_bytes(3))
    r = c.get(f"/api/items/{items['b.png'].id}/image")
    assert r.status_code == 404
    assert "changed after it was imported" in r.json()["detail"]


# ---- a round whose items' objects are gone -------------------------------------------------

COLOURS = ["red", "green", "blue"]


def colour_png(cls: int, i: int) -> bytes:
    """A 16x16 image of its class's colour with a distinct dot."""
    image = Image.new("RGB", (16, 16), tuple(200 if c == cls else 30 for c in range(3)))
    image.putpixel((i % 16, i // 16), (i * 7 % 256, i * 13 % 256, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def round_world(
    factory: Factory, ref_settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """12 colour images imported by reference (4 per class), their rounds run by the test."""
    from app.jobs import dispatch
    from worker import runners

    runners.register()
    eng = factory.user("engineer")
    # A from-scratch default proxy: the import queues no embedding behind the test's back.
    project = factory.project(eng, classes=COLOURS, image_size=16, default_proxy="tiny_cnn")
    c = factory.client(eng)
    bucket = s3.bucket()
    keys = {f"{COLOURS[cls]}/{i}.png": colour_png(cls, i) for cls in range(3) for i in range(4)}
    put_objects(s3, bucket, keys)
    assert run_import(factory, c, project.id, source=f"s3://{bucket}")["result"]["added"] == 12
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: None)
    return {"project": project, "bucket": bucket, "items": items_of(project.id)}


def run_round(world: dict[str, Any], batch: int, **proxy: Any) -> tuple[Any, list[int]]:
    """Start a round as the API does and run its job here; the round and its batch's ids."""
    from app.jobs.runtime import run_job
    from app.projects.models import Project
    from app.rounds import service as rounds
    from app.rounds.models import Round, Selection
    from app.rounds.schemas import ProxyConfig

    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        rnd = rounds.start_round(
            db,
            project=project,
            strategy="random",
            batch_size=batch,
            proxy=ProxyConfig(**proxy) if proxy else ProxyConfig(arch="tiny_cnn", epochs=1),
            seed=3,
            created_by=None,
            supersede=False,
        )
        rid, jid = rnd.id, rnd.job_id
    assert jid is not None
    assert run_job(jid, worker="test") == "succeeded"
    with unit_of_work(write=False) as db:
        done = db.get(Round, rid)
        ids = db.scalars(select(Selection.item_id).where(Selection.round_id == rid))
        return done, list(ids)


def delete_objects(s3: S3Server, world: dict[str, Any], names: list[str]) -> set[int]:
    client: Any = s3.client()
    for name in names:
        client.delete_object(Bucket=world["bucket"], Key=name)
    return {world["items"][n].id for n in names}


GONE = ["red/0.png", "green/1.png", "blue/2.png"]


def test_a_round_replaces_batch_items_whose_objects_are_gone(
    round_world: dict[str, Any], s3: S3Server
) -> None:
    # The worker read every image at import (its cache has them): only the HEAD before the
    # batch is saved can tell these three are gone.
    gone = delete_objects(s3, round_world, GONE)
    rnd, batch = run_round(round_world, batch=12)
    assert rnd.status == "labeling", rnd.error
    assert len(batch) == 9
    assert not set(batch) & gone
    skipped = rnd.metrics["skipped"]
    assert {s["item_id"] for s in skipped} == gone
    assert {s["name"] for s in skipped} == set(GONE)
    assert all("no object at" in s["reason"] for s in skipped)


def test_a_round_loading_pixels_leaves_out_items_it_cannot_read(
    round_world: dict[str, Any], ref_settings: Settings, s3: S3Server
) -> None:
    import shutil

    # A worker on another machine: nothing of the bucket on its disk.
    shutil.rmtree(ref_settings.object_cache_dir)
    gone = delete_objects(s3, round_world, GONE)
    with unit_of_work() as db:
        from app.projects.models import Project

        project = db.get(Project, round_world["project"].id)
        assert project is not None
        project.settings = {**project.settings, "cold_start": "kcenter"}
    rnd, batch = run_round(round_world, batch=6)
    assert rnd.status == "labeling", rnd.error
    assert rnd.metrics["cold_start"] == "kcenter"
    assert len(batch) == 6
    assert not set(batch) & gone
    assert rnd.metrics["pool"] == 9
    assert {s["item_id"] for s in rnd.metrics["skipped"]} == gone


def test_a_linear_round_embeds_the_rest_and_leaves_out_what_is_gone(
    round_world: dict[str, Any],
    ref_settings: Settings,
    s3: S3Server,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import shutil

    shutil.rmtree(ref_settings.object_cache_dir)
    gone = delete_objects(s3, round_world, GONE)
    with unit_of_work() as db:
        from app.projects.models import Project

        project = db.get(Project, round_world["project"].id)
        assert project is not None
        project.settings = {**project.settings, "cold_start": "typiclust"}
    rnd, batch = run_round(round_world, batch=6, arch="linear")
    assert rnd.status == "labeling", rnd.error
    # The embedding chunk embedded the nine it could read and went on.
    assert sum("event=object-gone" in r.getMessage() for r in caplog.records) == 3
    assert rnd.metrics["cold_start"] == "typiclust"
    assert len(batch) == 6
    assert not set(batch) & gone
    assert {s["item_id"] for s in rnd.metrics["skipped"]} == gone


# ---- real processes: a server and two workers, the store stopped mid-import ----------------


def wait_items(c: Any, job_id: int, at_least: int, timeout: float = 120) -> dict[str, Any]:
    """Poll a running import until its checkpoint counts ``at_least`` registered items."""
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/api/jobs/{job_id}").json()
        if (job["result"] or {}).get("added", 0) >= at_least:
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"import {job_id} is too slow: {job}"
        time.sleep(0.05)


def chunk_sums(database_url: str, job_id: int) -> tuple[int, int, int]:
    """(items in the database, items its done chunks registered, chunks still running)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            items = conn.execute(text("SELECT count(*) FROM items")).scalar_one()
            done = conn.execute(
                text(
                    "SELECT coalesce(sum(added), 0) FROM import_chunks "
                    "WHERE job_id = :j AND status = 'done'"
                ),
                {"j": job_id},
            ).scalar_one()
            running = conn.execute(
                text("SELECT count(*) FROM import_chunks WHERE job_id = :j AND status = 'running'"),
                {"j": job_id},
            ).scalar_one()
    finally:
        engine.dispose()
    return int(items), int(done), int(running)


@pytest.mark.slow
def test_two_workers_share_an_import_and_a_store_outage_fails_it_whole_chunks_only(
    tmp_path: Any, database_url: str, broker_url: str
) -> None:
    from tests.procs import stack, wait_for
    from tests.s3server import restart, s3_server
    from tests.test_e2e import admin_client, wait_job

    n, chunk = 600, 5
    objects = {f"img/{i:05d}.png": distinct_png(i) for i in range(n)}
    with s3_server(tmp_path) as store:
        env = {
            **store.env(),
            "SVP_IMPORT_CHUNK_SIZE": str(chunk),
            "SVP_WORKER_HEARTBEAT_SECONDS": "0.5",
            "SVP_WORKER_DEAD_AFTER_SECONDS": "3",
        }
        bucket = store.bucket("outage")
        put_objects(store, bucket, objects)
        with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
            s.serve()
            s.worker("worker-1")
            s.worker("worker-2")
            c = admin_client(s)
            r = c.post(
                "/api/projects",
                json={
                    "name": "by-reference",
                    "classes": ["a", "b"],
                    "settings": {"default_proxy": "tiny_cnn"},
                },
            )
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            r = c.post(IMPORT_FROM.format(pid=pid), json={"source": f"s3://{bucket}/img/"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            # Partway through, the store goes away.
            wait_items(c, job_id, at_least=100)
            store.stop()
            failed = wait_job(c, job_id)
            assert failed["status"] == "failed", failed
            assert "the object store stopped answering while importing from " in failed["error"]
            assert f"s3://{bucket}/img/" in failed["error"]
            # Which of botocore's connection errors the outage raises depends on the moment
            # (refused, or a request cut off mid-way); the error names the endpoint either way.
            assert f"no answer from {store.endpoint}" in failed["error"]
            # Helpers let go of what they held (their chunks fail too).
            wait_for(lambda: chunk_sums(database_url, job_id)[2] == 0, 60, "chunks still held")
            items, registered, _ = chunk_sums(database_url, job_id)
            # Nothing registered outside a done chunk, and every done chunk whole.
            assert items == registered
            assert 0 < items < n
            assert items % chunk == 0

            # The store comes back empty (moto keeps buckets in memory): the objects are put
            # back, and a retry resumes.
            restart(store)
            store.bucket(bucket)
            put_objects(store, bucket, objects)
            assert c.post(f"/api/jobs/{job_id}/retry").status_code == 200
            done = wait_job(c, job_id, timeout=300)
            assert done["status"] == "succeeded", done
            result = done["result"]
            assert (result["added"], result["duplicates"], result["rejected_count"]) == (n, 0, 0)
            assert result["total"] == result["processed"] == n
            assert chunk_sums(database_url, job_id)[0] == n
            # Every chunk was registered once, by one worker or the other.
            assert sum(result["workers"].values()) == result["chunks"] == n // chunk
            first = c.get(f"/api/projects/{pid}/items").json()["items"][0]
            image = c.get(f"/api/items/{first['id']}/image")
            assert image.status_code == 200
            assert image.content == objects[f"img/{first['name']}"]


def test_a_manifest_of_texts_labels_one_text_objects_only(
    factory: Factory, ref_settings: Settings, s3: S3Server
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["pos", "neg"], kind="text")
    bucket = s3.bucket()
    manifest = "\n".join(
        json.dumps(row)
        for row in [
            {"key": "a.txt", "label": "pos"},
            {"key": "b.csv", "label": "neg"},
            {"key": "c.txt", "name": "third", "label": "maybe"},
            {"key": "d.csv"},
        ]
    )
    put_objects(
        s3,
        bucket,
        {
            "a.txt": b"alpha",
            "b.csv": b"text\nbeta\n",
            "c.txt": b"gamma",
            "d.csv": b"text,label\ndelta,neg\n",
            "m.jsonl": manifest.encode(),
        },
    )
    job = run_import(factory, factory.client(eng), project.id, manifest=f"s3://{bucket}/m.jsonl")
    assert job["status"] == "succeeded", job["error"]
    why = reasons(job["result"])
    assert why["b.csv"].startswith("a manifest's label is for an image or a .txt object")
    assert why["third"] == "label 'maybe' is not a class of the project"
    assert {n: i.label for n, i in items_of(project.id).items()} == {
        "a.txt": "pos",
        "d.csv:2": "neg",
    }
