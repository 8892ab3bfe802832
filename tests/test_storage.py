"""The object store interface (DESIGN 4d): a folder and an S3 bucket behave the same, errors say
what went wrong, and each process's read-through cache stays within its bound.

The bucket is a real S3 API over HTTP (moto in server mode, ``tests/s3server.py``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from app import storage
from app.settings import Settings
from app.storage.cache import ReadThroughCache
from app.storage.objects import (
    FolderStore,
    ObjectMissing,
    ObjectStore,
    S3Store,
    StoreUnavailable,
    open_store,
    parse_s3_url,
)
from tests.procs import free_port
from tests.s3server import S3Server


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "objects")
    s3: S3Server = request.getfixturevalue("s3")
    os.environ.update(s3.env())
    return open_store(f"s3://{s3.bucket()}/some/prefix", endpoint_url=s3.endpoint)


def test_put_get_head_list_delete(store: ObjectStore) -> None:
    store.put("a/one.png", b"1111")
    store.put("a/two.png", b"22")
    store.put("b/three.txt", b"3")
    assert store.get("a/one.png") == b"1111"
    assert store.head("a/two.png").size == 2
    assert store.exists("b/three.txt")
    assert not store.exists("b/none")
    assert [o.key for o in store.list("a/")] == ["a/one.png", "a/two.png"]
    assert [o.key for o in store.list()] == ["a/one.png", "a/two.png", "b/three.txt"]
    # A prefix may end inside a name, as S3's does.
    assert [o.key for o in store.list("a/t")] == ["a/two.png"]
    store.put("a/one.png", b"replaced")
    assert store.get("a/one.png") == b"replaced"
    store.delete("a/one.png")
    store.delete("a/one.png")  # deleting what is gone is no error
    with pytest.raises(ObjectMissing, match=r"one\.png"):
        store.get("a/one.png")
    with pytest.raises(ObjectMissing):
        store.head("a/one.png")


def test_put_new_writes_only_where_nothing_is(store: ObjectStore) -> None:
    assert store.put_new("h/1", b"first") is True
    assert store.put_new("h/1", b"second") is False
    assert store.get("h/1") == b"first"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a\x00"])
def test_keys_that_could_escape_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="not an object key"):
        store.put(key, b"x")


def test_s3_prefix_keeps_stores_apart(s3: S3Server) -> None:
    os.environ.update(s3.env())
    bucket = s3.bucket()
    one = open_store(f"s3://{bucket}/one", endpoint_url=s3.endpoint)
    two = open_store(f"s3://{bucket}/two", endpoint_url=s3.endpoint)
    one.put("k", b"1")
    assert not two.exists("k")
    assert [o.key for o in one.list()] == ["k"]
    assert s3.client().get_object(Bucket=bucket, Key="one/k")["Body"].read() == b"1"  # type: ignore[attr-defined]


def test_a_missing_bucket_and_a_dead_endpoint_are_unavailable_with_a_reason(
    s3: S3Server,
) -> None:
    os.environ.update(s3.env())
    with pytest.raises(StoreUnavailable, match="no bucket 'never-made'"):
        S3Store("never-made", endpoint_url=s3.endpoint).get("k")
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="could not read s3://b/k") as caught:
        S3Store("b", endpoint_url=dead).get("k")
    assert "testing" not in str(caught.value)  # no credentials in the message
    # Refused connections are retried a few times with back-off, never for long.
    assert time.monotonic() - started < 30
    assert f"no answer from {dead}" in str(caught.value)


def test_a_store_that_hangs_up_mid_request_is_unavailable_with_a_reason(s3: S3Server) -> None:
    """A store going away while a request is in flight raises a different botocore error than
    one refusing connections; a user sees the same cause for both."""
    os.environ.update(s3.env())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = 0

    def hang_up() -> None:
        nonlocal accepted
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted += 1
            conn.recv(65536)  # the request arrives; the answer never does
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(StoreUnavailable, match="could not read s3://b/k") as caught:
            S3Store("b", endpoint_url=endpoint).get("k")
    finally:
        listener.close()
    assert accepted >= 1
    assert f"no answer from {endpoint}" in str(caught.value)
    assert "testing" not in str(caught.value)


def test_files_stream_in_and_out_whole(store: ObjectStore, tmp_path: Path) -> None:
    if isinstance(store, S3Store):
        # Small parts, so this file of a few MB goes as a multipart upload and ranged reads.
        store.transfer_threshold = store.transfer_chunk = 5 << 20
    data = os.urandom(11 << 20)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    store.put_file("uploads/u1/00000", source)
    assert store.head("uploads/u1/00000").size == len(data)
    if isinstance(store, S3Store):
        assert store.head("uploads/u1/00000").etag.endswith("-3")  # three parts
    out = tmp_path / "back" / "copy.bin"
    out.parent.mkdir()
    store.get_file("uploads/u1/00000", out)
    assert out.read_bytes() == data
    assert os.listdir(out.parent) == ["copy.bin"]  # no temp file left beside it
    # A missing object is ObjectMissing, and no file appears.
    with pytest.raises(ObjectMissing, match="00001"):
        store.get_file("uploads/u1/00001", out.parent / "none")
    assert os.listdir(out.parent) == ["copy.bin"]
    # A local file that is not there is the caller's error, not the store's.
    with pytest.raises(FileNotFoundError):
        store.put_file("uploads/u1/00002", tmp_path / "absent")
    assert not store.exists("uploads/u1/00002")


def test_file_transfers_to_a_store_that_is_away_are_unavailable(
    s3: S3Server, tmp_path: Path
) -> None:
    os.environ.update(s3.env())
    source = tmp_path / "f"
    source.write_bytes(b"x" * 1000)
    with pytest.raises(StoreUnavailable, match="no bucket 'never-made'"):
        S3Store("never-made", endpoint_url=s3.endpoint).put_file("k", source)
    dead = S3Store("b", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="could not write s3://b/k"):
        dead.put_file("k", source)
    with pytest.raises(StoreUnavailable, match="could not read s3://b/k"):
        dead.get_file("k", tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ["http://x/y", "s3:///key", "s3://b/k?x=1", "bucket/key"]:
        with pytest.raises(ValueError, match="s3://"):
            parse_s3_url(bad)


def test_storage_url_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVP_STORAGE_URL", "gs://bucket")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Settings()
    monkeypatch.setenv("SVP_STORAGE_URL", "s3://bucket/prefix/")
    assert Settings().storage_url == "s3://bucket/prefix"


def test_cache_reads_through_once_and_stays_bounded(tmp_path: Path) -> None:
    cache = ReadThroughCache(tmp_path / "cache", max_bytes=10_000)
    fetched: list[str] = []

    def fetch(key: str) -> bytes:
        fetched.append(key)
        return key.encode() * (1000 // len(key))

    first = cache.get("k/0001", fetch)
    assert cache.get("k/0001", fetch) == first
    assert fetched == ["k/0001"]
    for i in range(2, 40):
        cache.get(f"k/{i:04d}", fetch)
        old = tmp_path / "cache" / "k" / "0001"
        if old.exists():
            # The first key is read again and again: the most recently used, never evicted.
            cache.get("k/0001", fetch)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert on_disk <= 10_000
    assert (tmp_path / "cache" / "k" / "0001").exists()
    assert fetched.count("k/0001") == 1
    assert cache.hits >= 1
    assert cache.misses == 39


def test_cache_does_not_keep_an_object_larger_than_its_bound(tmp_path: Path) -> None:
    cache = ReadThroughCache(tmp_path / "cache", max_bytes=10)
    assert cache.get("big", lambda _: b"x" * 11) == b"x" * 11
    assert not (tmp_path / "cache" / "big").exists()


def test_images_round_trip_through_a_bucket_and_the_cache(s3_settings: Settings) -> None:
    data = b"\x89PNG not really"
    digest = hashlib.sha256(data).hexdigest()
    assert storage.write_image(digest, data) is True
    assert storage.write_image(digest, data) is False  # stored once per content
    assert storage.read_image(digest) == data
    bucket, prefix = parse_s3_url(s3_settings.storage_url)
    assert storage.item_store().exists(storage.image_key(digest))
    # Read through: the second read comes from this machine's disk.
    assert (s3_settings.object_cache_dir / storage.image_key(digest)).read_bytes() == data
    assert bucket
    assert prefix == "svp"


def test_a_referenced_object_is_checked_against_its_hash(
    s3_settings: Settings, s3: S3Server
) -> None:
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="cats/1.png", Body=b"first")  # type: ignore[attr-defined]
    digest = hashlib.sha256(b"first").hexdigest()
    source = f"s3://{bucket}/cats/1.png"
    assert storage.read_image(digest, source, fresh=True) == b"first"
    s3.client().put_object(Bucket=bucket, Key="cats/1.png", Body=b"second")  # type: ignore[attr-defined]
    with pytest.raises(storage.ObjectChanged, match="changed after it was imported"):
        storage.read_image(digest, source, fresh=True)
    s3.client().delete_object(Bucket=bucket, Key="cats/1.png")  # type: ignore[attr-defined]
    with pytest.raises(ObjectMissing, match=r"cats/1\.png"):
        storage.read_image(digest, source, fresh=True)
