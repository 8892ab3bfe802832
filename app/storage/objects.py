"""Object stores behind one small interface: a folder on this machine, or an S3-compatible bucket.

What the product keeps by key (an item's bytes, embedding shards) goes through ``ObjectStore``:
``get``, ``put``, ``head``, ``delete`` and ``list`` under a prefix, and ``put_file``/``get_file``
that stream a file of any size between a local disk and the store (an upload staged for a
worker on another machine). ``open_store`` turns a URL
into one: a path (or ``file://``) is a folder, ``s3://bucket/prefix`` a bucket through boto3
(credentials from the usual ``AWS_*`` variables, the endpoint from ``SVP_S3_ENDPOINT_URL`` for
MinIO, Ceph or a local S3 server). ``docs/storage.md`` says why boto3, with the figures.

Errors say what went wrong in words a user can act on: ``ObjectMissing`` (no such key: a 404 to
a browser), ``StoreUnavailable`` (the store did not answer, or refused us: a job fails with the
reason, a request gets 503). Neither ever carries credentials.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit


class StoreError(Exception):
    """Something about an object store; the message is safe to show to a user."""


class ObjectMissing(StoreError, KeyError):
    """No object under that key (deleted, or never there)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object missing"


class StoreUnavailable(StoreError):
    """The store could not be reached, refused the request, or failed; the reason says which."""


class ObjectTooLarge(StoreError):
    """An object larger than the reader accepts; it was not read."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the store's root, size in bytes, and version tag."""

    key: str
    size: int
    etag: str


class ObjectStore(Protocol):
    """Bytes by key. Keys are '/'-separated, relative to the store's root (its prefix)."""

    @property
    def url(self) -> str:
        """Where the store is, without credentials (for logs and errors)."""
        ...

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ObjectMissing when there is none, ObjectTooLarge (unread) when it
        holds more than ``max_bytes``."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store the bytes whole (readers see the old object, the new one, or none)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """The object's size and tag; ObjectMissing when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under the key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is not there."""
        ...

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, read page by page;
        with ``start_after``, only keys after it (a listing resumed where it stopped)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store a local file's bytes whole, streamed from disk (never all in memory)."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Write the object's bytes to ``path``, streamed to disk; the file appears whole or not
        at all. ObjectMissing when there is none."""
        ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Store the bytes unless an object is there already; True when written. For
        content-addressed keys, where an existing object already holds these bytes."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root or mean nothing (empty, '..', absolute)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"not an object key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"not an object key: {key!r}")
    return key


class FolderStore:
    """Objects as files under a folder: the embedded default, and what tests compare S3 with.

    A put writes a temp file and renames it, so a reader never sees half an object.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._count = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self.root / check_key(key)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        try:
            with self.path(key).open("rb") as fh:
                if max_bytes is not None:
                    size = os.fstat(fh.fileno()).st_size
                    if size > max_bytes:
                        raise ObjectTooLarge(_too_large(f"{self.url}/{key}", size, max_bytes))
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"no object {key!r} in {self.url}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._count += 1
            tmp = path.parent / f".{path.name}.{self._tag}-{self._count}.tmp"
        # os-level calls: imports write tens of thousands of small files, and io.open's
        # buffering and isatty probe cost more than the write itself.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def head(self, key: str) -> ObjectInfo:
        try:
            stat = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissing(f"no object {key!r} in {self.url}") from None
        if not self.path(key).is_file():
            raise ObjectMissing(f"no object {key!r} in {self.url}")
        return ObjectInfo(key, stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        # A prefix may end inside a name ("img" matches "img1.png"): walk from its folder.
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # temp files of a put in progress
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and key > start_after:
                    found.append(key)
        for key in sorted(found):
            try:
                yield self.head(key)
            except ObjectMissing:
                continue  # deleted while listing

    def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_whole(path, target, self._temp_name(target))

    def get_file(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise ObjectMissing(f"no object {key!r} in {self.url}")
        try:
            _copy_whole(source, path, self._temp_name(path))
        except FileNotFoundError:
            if not source.exists():  # deleted while copying
                raise ObjectMissing(f"no object {key!r} in {self.url}") from None
            raise

    def _temp_name(self, target: Path) -> Path:
        """A temp file's name beside ``target``, unique to this store object and call."""
        with self._lock:
            self._count += 1
            return target.parent / f".{target.name}.{self._tag}-{self._count}.tmp"

    def put_new(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        self.put(key, data)
        return True


def _copy_whole(source: Path, target: Path, tmp: Path) -> None:
    """Copy a file through ``tmp`` and a rename, so ``target`` appears whole or not at all."""
    try:
        shutil.copyfile(source, tmp)  # streams in chunks (or the kernel's copy)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _s3_client(endpoint_url: str | None) -> Any:
    """One boto3 client per process and endpoint: clients are thread-safe, sessions are not."""
    import boto3
    from botocore.config import Config

    config = Config(
        # Standard retries back off on throttling and 5xx; connect/read timeouts bound how long
        # a request waits for a store that stopped answering, so a job fails with a reason.
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=32,
        # Checksums only where S3 requires them: TLS and the content hash an item is checked
        # against already cover the bytes, and botocore's CRC costs ~15% of a small request's
        # CPU (bench/s3_clients.py).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Path-style addressing works with every S3-compatible store (MinIO, Ceph, moto).
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


_clients: dict[str | None, Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None) -> Any:
    """The process's boto3 S3 client for an endpoint (None: AWS)."""
    with _clients_lock:
        client = _clients.get(endpoint_url)
        if client is None:
            client = _clients[endpoint_url] = _s3_client(endpoint_url)
        return client


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Store:
    """Objects in an S3-compatible bucket under a prefix, through one shared boto3 client."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        if not bucket:
            raise ValueError("an s3:// URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.client = s3_client(endpoint_url)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def full_key(self, key: str) -> str:
        """The bucket's key for a key of this store."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, what: str, key: str | None = None) -> StoreError:
        """Turn a botocore error into ours, with a reason a user can act on."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as NoConnection

        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, (NoConnection, HTTPClientError)):
            # Refused, reset, closed or timed out: the same cause for a user, whichever of
            # botocore's errors the moment of the outage happened to raise.
            endpoint = self.client.meta.endpoint_url
            return StoreUnavailable(f"could not {what} {where}: no answer from {endpoint} ({exc})")
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectMissing(f"no object at {where}")
            if code == "NoSuchBucket":
                return StoreUnavailable(f"no bucket {self.bucket!r} at the store")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreUnavailable(f"the store refused to {what} {where}: {code}")
            return StoreUnavailable(f"could not {what} {where}: {code or exc}")
        if isinstance(exc, BotoCoreError):
            # Connection refused, timeouts, no credentials: botocore's message names the cause.
            return StoreUnavailable(f"could not {what} {where}: {exc}")
        return StoreUnavailable(f"could not {what} {where}: {type(exc).__name__}")

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        full = self.full_key(key)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=full)
            size = int(answer.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                # The length comes with the headers: the body is never read.
                answer["Body"].close()
                raise ObjectTooLarge(_too_large(f"{self.url}/{key}", size, max_bytes))
            return bytes(answer["Body"].read())
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail(exc, "read", key) from exc

    def put(self, key: str, data: bytes) -> None:
        full = self.full_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            raise self._fail(exc, "write", key) from exc

    def head(self, key: str) -> ObjectInfo:
        full = self.full_key(key)
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._fail(exc, "read", key) from exc
        return ObjectInfo(key, int(answer["ContentLength"]), str(answer["ETag"]).strip('"'))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._fail(exc, "delete", key) from exc

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        start = f"{self.prefix}/" if self.prefix else ""
        resume = {"StartAfter": start + start_after} if start_after else {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start + prefix, **resume
        )
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = str(entry["Key"])[len(start) :]
                    if key and not key.endswith("/"):  # "folder" markers are not objects
                        yield ObjectInfo(key, int(entry["Size"]), str(entry["ETag"]).strip('"'))
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail(exc, "list") from exc

    # boto3's managed transfer: a file past the threshold goes as a multipart upload (or ranged
    # GETs) of this chunk size from a few threads, so a big file is neither held in memory nor
    # sent as one request that must start over when it fails.
    transfer_threshold = 16 << 20
    transfer_chunk = 16 << 20
    transfer_threads = 4

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.transfer_threshold,
            multipart_chunksize=self.transfer_chunk,
            max_concurrency=self.transfer_threads,
        )

    def put_file(self, key: str, path: Path) -> None:
        full = self.full_key(key)
        try:
            self.client.upload_file(str(path), self.bucket, full, Config=self._transfer_config())
        except Exception as exc:
            cause = _transfer_cause(exc)
            if cause is exc and _is_local(exc):
                raise cause from exc  # the local file (unreadable, gone): not the store's fault
            raise self._fail(cause, "write", key) from exc

    def get_file(self, key: str, path: Path) -> None:
        full = self.full_key(key)
        try:
            # Written to a temp file beside ``path`` and renamed once complete.
            self.client.download_file(self.bucket, full, str(path), Config=self._transfer_config())
        except Exception as exc:
            cause = _transfer_cause(exc)
            if cause is exc and _is_local(exc):
                raise cause from exc  # the local disk (full, read-only)
            raise self._fail(cause, "read", key) from exc

    def put_new(self, key: str, data: bytes) -> bool:
        # One conditional PUT instead of a HEAD and a PUT: half the round trips of an import
        # into a bucket (bench/s3_clients.py). A store that ignores If-None-Match rewrites the
        # same content-addressed bytes, which is harmless.
        full = self.full_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
        except Exception as exc:
            # 412: the object exists; 409: another writer's PUT of the same key is in flight.
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._fail(exc, "write", key) from exc
        return True


def _is_local(exc: Exception) -> bool:
    """An error of this machine's files, raised as is by the transfer (a network error reaches
    us wrapped, or as one of botocore's, some of which are OSErrors too)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, OSError) and not isinstance(exc, (BotoCoreError, ClientError))


def _transfer_cause(exc: Exception) -> Exception:
    """The botocore error behind boto3's transfer wrappers (S3UploadFailedError only carries it
    as its context, RetriesExceededError as ``last_exception``)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError

    if isinstance(exc, RetriesExceededError) and isinstance(exc.last_exception, Exception):
        return exc.last_exception
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        return exc.__context__
    return exc


def _too_large(where: str, size: int, max_bytes: int) -> str:
    return f"{where} is {size} bytes, more than the {max_bytes} accepted"


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key or prefix) of ``s3://bucket/rest``; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://bucket/prefix, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an s3:// URL has no query or fragment: {url!r}")
    return parts.netloc, parts.path.lstrip("/")


def open_store(url: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """The store a URL names: ``s3://bucket/prefix``, or a folder (a path or ``file://``)."""
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise ValueError(f"a store is s3://bucket/prefix or a folder, not {url!r}")
    return FolderStore(Path(url).expanduser().resolve())
