"""Uploads staged in the item store, so a worker on any machine can import them (issue 18).

With a bucket as the item store (``app.storage.is_remote()``) the server and its workers share
no disk. The server spools an upload's multipart body to its own ``uploads/<dir>/<n>`` as
always, then copies each file to the same key, ``uploads/<dir>/<n>``, in the store and deletes
the spool; the import job's params say ``staged``. The worker that takes the job downloads the
files into a folder of its own data dir, imports them as it would a local upload, deletes that
folder, and deletes the staged objects once the import succeeded. A failed or canceled import's
staged files stay for a retry until the sweep (``app.items.service.sweep_staged``) removes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.items.storage import SpooledUpload, discard
from app.settings import get_settings
from app.storage import StoreError, item_store

log = logging.getLogger(__name__)

# Files sent or fetched at once: an upload of many small images is one round trip per file,
# mostly spent waiting on the store (as the import's own writes, REMOTE_WRITE_THREADS).
TRANSFER_THREADS = 8
# The prefix of staged uploads in the item store.
STAGED_PREFIX = "uploads/"


def staged_key(relative: str) -> str:
    """The key of a spooled file (``<dir>/<n>``, relative to the uploads dir) in the store."""
    return STAGED_PREFIX + relative


def _each(work: Callable[[Any], None], things: list[Any]) -> None:
    """``work`` on each thing from a few threads; re-raises the first failure, after which the
    things not yet started are dropped (against a store that went away each would only spend
    the client's retries to fail the same way)."""
    if len(things) < 2:
        for thing in things:
            work(thing)
        return
    pool = ThreadPoolExecutor(min(TRANSFER_THREADS, len(things)), thread_name_prefix="svp-stage")
    try:
        list(pool.map(work, things))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stage_upload(upload: SpooledUpload, uploads_dir: Path) -> None:
    """Copy a spooled upload's files into the item store, then delete the spool.

    All or nothing: when a copy fails, what was put is deleted again and the error (the store's
    StoreUnavailable, with its reason) is raised; the spool is left to the caller.
    """
    store = item_store()
    put: list[str] = []

    def send(relative: str) -> None:
        key = staged_key(relative)
        store.put_file(key, uploads_dir / relative)
        put.append(key)

    try:
        _each(send, [f.path for f in upload.files])
    except BaseException:
        delete_keys(put)
        raise
    discard(upload.dir)


def delete_keys(keys: Iterable[str]) -> None:
    """Delete staged objects; a store that does not answer leaves them to the sweep (logged)."""
    store = item_store()
    try:
        _each(store.delete, list(keys))
    except StoreError as exc:
        log.warning("staged upload objects left for the sweep: %s", exc)


def unstage(upload_dir: str) -> None:
    """Delete every staged object of an upload (``upload_dir``: its folder's name)."""
    store = item_store()
    try:
        keys = [o.key for o in store.list(staged_key(upload_dir + "/"))]
    except StoreError as exc:
        log.warning("staged upload %s left for the sweep: %s", upload_dir, exc)
        return
    delete_keys(keys)


def local_root() -> Path:
    """Where a worker puts the staged uploads it imports: below its own data dir."""
    return get_settings().data_dir / "tmp" / "imports"


def fetch(upload_dir: str, files: list[dict[str, Any]]) -> Path | None:
    """Download a staged upload's files into ``local_root()/<upload_dir>/`` (streamed to disk);
    that folder, or None when nothing of the upload is staged any more (imported and cleaned
    up, or swept). Whatever an earlier run left in the folder is replaced."""
    store = item_store()
    if next(iter(store.list(staged_key(upload_dir + "/"))), None) is None:
        return None
    folder = local_root() / upload_dir
    discard(folder)
    folder.mkdir(parents=True)
    root = local_root()

    def receive(relative: str) -> None:
        store.get_file(staged_key(relative), root / relative)

    try:
        _each(receive, [str(f["path"]) for f in files])
    except BaseException:
        discard(folder)
        raise
    return folder
