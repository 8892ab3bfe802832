"""Embeddings in the object store (DESIGN 4d): shards written by the worker that embedded them,
taken into each worker's local store before it decides what is missing.

With ``SVP_STORAGE_URL`` set, workers on different machines share no disk, so the local
``EmbeddingStore`` cannot be where a vector lives. Each embedded chunk becomes one shard object
(``svp.shards``) under ``embeddings/<backbone>-<size>/`` in the item store, registered in the
database in the transaction that marks its chunk done. Before a job decides what to embed, and
again before it loads vectors, the worker pulls the project's shards its store has not
taken in: read a few at a time, checked, appended in batches with their names, so each is read
once per generation of the local store, and the store stays a bounded read-through cache
(``SVP_TENSOR_CACHE_MB``).

A corrupt shard is refused by name and unregistered; one gone from the store is refused by name
but stays registered (a worker pointed at the wrong prefix must not unregister everyone's).
Either way its vectors count as missing and are embedded again. A store that does not answer
fails the job with the store's reason. Without a bucket nothing here runs: the local store is
the vectors' home, as before.
"""

from __future__ import annotations

import fcntl
import logging
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from app.db import unit_of_work
from app.embeddings import service as embeddings
from app.settings import get_settings
from app.storage import ObjectMissing, is_remote, item_store
from svp.embeddings import EmbeddingStore, all_finite
from svp.shards import Shard, ShardCorrupt, decode_shard, encode_shard

log = logging.getLogger("svp.worker.shards")

# Shards read from the store at once: each read is a round trip (a few ms to a local server,
# tens of ms to a cloud store), so several overlap.
FETCH_THREADS = 16
# Shards read ahead of the one being checked and appended, by count and by bytes: bounds what
# a pull holds in memory whatever the shards' size.
FETCH_AHEAD = 2 * FETCH_THREADS
AHEAD_BYTES = 256 << 20
# Rows of several shards go into the local store in one append (one fsync): up to this many bytes.
BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class Refused:
    """A shard a pull could not use: its key, why, and whether its bytes are damaged (then it
    is unregistered) or only gone."""

    shard: str
    reason: str
    corrupt: bool

    def as_dict(self) -> dict[str, str]:
        """JSON for a job's result."""
        return {"shard": self.shard, "reason": self.reason}


@dataclass
class PullReport:
    """What one ``pull`` did: shards read, rows added, and the shards refused, with why."""

    shards: int = 0
    rows: int = 0
    refused: list[Refused] = field(default_factory=list)


def shard_key(store: EmbeddingStore, *, job_id: int, chunk_id: int) -> str:
    """A new shard's key: by backbone and size, then job and chunk (a takeover's differs)."""
    folder = f"{store.backbone}-{store.image_size}"
    return f"embeddings/{folder}/j{job_id}-c{chunk_id}-{secrets.token_hex(4)}.svpe"


def chunk_vectors(
    store: EmbeddingStore,
    keys: Sequence[str],
    missing: Sequence[str],
    embedded: torch.Tensor | None,
) -> np.ndarray:
    """The float16 rows of every key of a chunk: the ones just embedded (``missing``, in their
    order) and the ones this worker's store had already, so the shard covers the whole chunk."""
    fresh = {k: i for i, k in enumerate(missing)}
    out = np.empty((len(keys), store.dim), dtype=np.float16)
    if missing:
        if embedded is None:
            raise ValueError("keys were missing but no vectors were embedded for them")
        new = embedded.detach().to("cpu", torch.float32).numpy()
        picks = [i for i, k in enumerate(keys) if k in fresh]
        with np.errstate(over="ignore"):
            out[picks] = new[[fresh[keys[i]] for i in picks]]
    old = [i for i, k in enumerate(keys) if k not in fresh]
    if old:
        out[old] = store.load([keys[i] for i in old], dtype=torch.float16).numpy()
    return out


def write_shard(
    store: EmbeddingStore, keys: Sequence[str], vectors: np.ndarray, *, job_id: int, chunk_id: int
) -> str:
    """Put a chunk's rows in the item store as one shard object, whole; its key (the caller
    registers it with the chunk). StoreUnavailable names the store when it does not answer."""
    if not np.isfinite(vectors).all():
        # The same refusal as the local store's: a NaN or inf row would poison every head.
        raise ValueError("vectors must be finite and within float16's range")
    key = shard_key(store, job_id=job_id, chunk_id=chunk_id)
    data = encode_shard(keys, vectors, backbone=store.backbone, image_size=store.image_size)
    item_store().put(key, data)
    return key


@contextmanager
def _one_puller(store: EmbeddingStore) -> Iterator[None]:
    # One process per machine reads a store's shards; the others wait, then find them taken.
    with open(store.dir / ".pull.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pull(
    store: EmbeddingStore, project_id: int | None, *, bound: bool = False
) -> PullReport | None:
    """Take into ``store`` the project's shards of its backbone and size that it lacks; None
    without a bucket (the local store is then the only one). ``bound``: first start the store
    afresh if it has passed ``SVP_TENSOR_CACHE_MB`` (a job's start, never mid-job)."""
    if not is_remote() or project_id is None:
        return None
    if bound:
        store.restart_if_over(get_settings().tensor_cache_mb << 20)
    with unit_of_work(write=False) as db:
        listed = embeddings.project_shards(
            db, project_id=project_id, backbone=store.backbone, image_size=store.image_size
        )
    report = PullReport()
    if listed:
        with _one_puller(store):
            taken = store.shards_taken()
            todo = [(key, rows) for key, rows in listed if key not in taken]
            if todo:
                _take_in(store, todo, report)
    corrupt = [r.shard for r in report.refused if r.corrupt]
    if corrupt:
        with unit_of_work() as db:
            for key in corrupt:
                embeddings.forget_shard(db, key=key)
    if report.shards or report.refused:
        log.info(
            "event=shards-pulled backbone=%s size=%s shards=%s rows=%s refused=%s",
            store.backbone,
            store.image_size,
            report.shards,
            report.rows,
            len(report.refused),
        )
    return report


def _read(key: str) -> bytes:
    return item_store().get(key)


def _fetched(
    todo: Sequence[tuple[str, int]], row_bytes: int
) -> Iterator[tuple[str, int, bytes | None]]:
    """(key, registered rows, bytes or None when the object is gone), in order, with up to
    ``FETCH_AHEAD`` reads (``AHEAD_BYTES`` of rows) in flight; any other store error ends the
    walk with that error."""
    pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="shards")
    ahead: deque[tuple[str, int, Future[bytes]]] = deque()
    pending = 0
    rest = iter(todo)
    try:
        while True:
            # Read ahead while the window has room; always at least the next one.
            while not ahead or (len(ahead) < FETCH_AHEAD and pending < AHEAD_BYTES):
                step = next(rest, None)
                if step is None:
                    break
                ahead.append((step[0], step[1], pool.submit(_read, step[0])))
                pending += step[1] * row_bytes
            if not ahead:
                return
            key, rows, future = ahead.popleft()
            pending -= rows * row_bytes
            try:
                data: bytes | None = future.result()
            except ObjectMissing:
                data = None
            yield key, rows, data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ShardGone(ShardCorrupt):
    """A registered shard whose object is not in the store."""


def _check(store: EmbeddingStore, key: str, rows: int, data: bytes | None) -> Shard:
    """The decoded shard, or ShardCorrupt (ShardGone) saying why it cannot be used."""
    name = f"{item_store().url}/{key}"
    if data is None:
        raise ShardGone(f"embedding shard {name} is gone from the store")
    shard = decode_shard(
        data, name=name, backbone=store.backbone, image_size=store.image_size, dim=store.dim
    )
    if len(shard.keys) != rows:
        raise ShardCorrupt(f"embedding shard {name} holds {len(shard.keys)} rows, not {rows}")
    if not all_finite(shard.vectors):
        raise ShardCorrupt(f"embedding shard {name} holds values that are not finite")
    return shard


def _take_in(store: EmbeddingStore, todo: Sequence[tuple[str, int]], report: PullReport) -> None:
    """Read, check and append the shards, ``BATCH_BYTES`` of rows per append. A store error
    stops the pull there: the batches appended so far are whole shards, recorded as taken."""
    batch: list[tuple[str, Shard]] = []
    size = 0
    for key, rows, data in _fetched(todo, 2 * store.dim):
        try:
            shard = _check(store, key, rows, data)
        except ShardCorrupt as exc:
            log.error("event=shard-refused shard=%s reason=%s", key, exc)
            report.refused.append(Refused(key, str(exc), not isinstance(exc, ShardGone)))
            continue
        batch.append((key, shard))
        size += shard.vectors.nbytes
        if size >= BATCH_BYTES:
            _append(store, batch, report)
            batch, size = [], 0
    _append(store, batch, report)


def _append(store: EmbeddingStore, batch: list[tuple[str, Shard]], report: PullReport) -> None:
    if not batch:
        return
    keys = [k for _, shard in batch for k in shard.keys]
    vectors = np.concatenate([shard.vectors for _, shard in batch])
    report.rows += store.add(keys, vectors, shards=[key for key, _ in batch])
    report.shards += len(batch)


__all__ = ["PullReport", "Refused", "chunk_vectors", "pull", "shard_key", "write_shard"]
