"""Where item bytes live (DESIGN 4d): the data dir by default, or an S3-compatible store.

Every read and write of an item's bytes goes through here, in the server and in workers:
``write_image`` stores uploaded bytes once per content hash, ``read_image`` reads them back,
from the configured store (``SVP_STORAGE_URL``) or, for an item imported by reference, from
the object it names (``items.source``), checking the bytes still hash to what was imported.
With a bucket, each process reads through a bounded cache on its own disk
(``SVP_OBJECT_CACHE_MB``), keyed by content hash, so a worker reads each image from the
store once.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from app.settings import get_settings
from app.storage.cache import ReadThroughCache
from app.storage.objects import (
    FolderStore,
    ObjectInfo,
    ObjectMissing,
    ObjectStore,
    ObjectTooLarge,
    S3Store,
    StoreError,
    StoreUnavailable,
    open_store,
    parse_s3_url,
)

_HASH = re.compile(r"[0-9a-f]{64}")


class ObjectChanged(ObjectMissing):
    """The object an item was imported from now holds other bytes than it did then."""


def image_key(content_hash: str) -> str:
    """The key of an image's bytes in the item store; refuses anything that is not a hash."""
    if not _HASH.fullmatch(content_hash):
        raise ValueError(f"not a content hash: {content_hash!r}")
    return f"images/{content_hash[:2]}/{content_hash}"


@lru_cache(maxsize=4)
def _open(storage_url: str, endpoint_url: str, data_dir: str) -> ObjectStore:
    if storage_url:
        return open_store(storage_url, endpoint_url=endpoint_url or None)
    return FolderStore(Path(data_dir))


def item_store() -> ObjectStore:
    """The configured store: ``SVP_STORAGE_URL``, or the data dir (``images/`` under it)."""
    settings = get_settings()
    return _open(settings.storage_url, settings.s3_endpoint_url, str(settings.data_dir))


def is_remote() -> bool:
    """Whether item bytes live in a bucket (workers then share no disk with the server)."""
    return bool(get_settings().storage_url)


@lru_cache(maxsize=4)
def _cache(folder: str, max_bytes: int) -> ReadThroughCache:
    return ReadThroughCache(Path(folder), max_bytes)


def object_cache() -> ReadThroughCache:
    """This process's bounded cache of objects read from a bucket."""
    settings = get_settings()
    return _cache(str(settings.object_cache_dir), settings.object_cache_mb << 20)


def source_store(bucket: str) -> S3Store:
    """A bucket named by an import's source or manifest, at the configured endpoint."""
    endpoint = get_settings().s3_endpoint_url or None
    return S3Store(bucket, "", endpoint_url=endpoint)


def write_image(content_hash: str, data: bytes) -> bool:
    """Store an image's bytes unless that content is stored already; True when written."""
    return item_store().put_new(image_key(content_hash), data)


def _read_source(source: str, content_hash: str) -> bytes:
    bucket, key = parse_s3_url(source)
    data = source_store(bucket).get(key)
    if hashlib.sha256(data).hexdigest() != content_hash:
        raise ObjectChanged(f"{source} was changed after it was imported")
    return data


def read_image(content_hash: str, source: str | None = None, *, fresh: bool = False) -> bytes:
    """An item's bytes by content hash: from the item store, or from ``source`` (the
    ``s3://bucket/key`` it was imported from by reference).

    ``fresh`` reads a referenced object from its bucket, never from the cache: what the server
    shows a person, so an object deleted from the bucket is gone from the service too.

    Raises ObjectMissing (ObjectChanged when the source now holds other bytes) or
    StoreUnavailable, each with a reason a user can read.
    """
    key = image_key(content_hash)
    store = item_store()
    if source is None and isinstance(store, FolderStore):
        return store.get(key)
    if source is None:
        return object_cache().get(key, store.get)
    if fresh:
        return _read_source(source, content_hash)
    return object_cache().get(key, lambda _: _read_source(source, content_hash))


__all__ = [
    "FolderStore",
    "ObjectChanged",
    "ObjectInfo",
    "ObjectMissing",
    "ObjectStore",
    "ObjectTooLarge",
    "S3Store",
    "StoreError",
    "StoreUnavailable",
    "image_key",
    "is_remote",
    "item_store",
    "object_cache",
    "open_store",
    "parse_s3_url",
    "read_image",
    "source_store",
    "write_image",
]
