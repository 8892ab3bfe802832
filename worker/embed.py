"""Embedding a project's items with a frozen backbone, the work shared by every free worker.

Images are decoded from the image store; texts (a text project, a text encoder) are read from
their rows in the database by content hash, never uploaded again. Both go through the same
chunks, help requests and content-keyed store (a text store's input side is 0: it has none).

A job that needs embeddings (an ``embed`` job, or a round whose proxy is ``linear``) plans the
missing images as chunks in the database (``app.embeddings.service``), sends one help request per
chunk beyond its own, up to ``SVP_EMBED_FANOUT``, and works through the chunks itself too, so it
finishes even when no other worker is free. A helper claims chunks until none is left and never
touches the job's status; the job that planned the chunks reports progress, waits for chunks held
by others, and takes over a chunk whose claim went stale (its worker died). Vectors go to the
engine's ``EmbeddingStore`` in the data dir, which skips keys already there: a chunk embedded
twice after a takeover costs time, never correctness. With a bucket (``SVP_STORAGE_URL``) each
chunk's vectors are also a shard object there, registered with the chunk, and each worker's
store is a read-through cache of the shards (``worker/shards.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from celery import signals
from sqlalchemy import select

from app.db import unit_of_work, utcnow
from app.embeddings import service as embeddings
from app.items.availability import ObjectsGone, gone_objects
from app.items.models import Item
from app.items.service import sources_by_hash, texts_by_hash
from app.jobs.broker import EMBED_HELP_TASK_NAME, send_task
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind
from app.jobs.runtime import JobCanceled, JobContext
from app.settings import BackboneSetting, get_settings
from app.storage import ObjectMissing, is_remote, read_image
from svp.backbones import (
    Embedder,
    backbone_names,
    builtin_backbones,
    get_spec,
    load_embedder,
    register_torchvision_backbone,
)
from svp.data import decode_image
from svp.embeddings import EmbeddingStore
from worker import shards, training

log = logging.getLogger("svp.worker.embed")

# How often the planning job looks at chunks other workers hold.
WAIT_SECONDS = 0.5
# Images decoded at once by the reader threads ahead of the backbone (Pillow frees the GIL).
DECODE_THREADS = 2
# Images read at once from an object store, where each read is a round trip.
FETCH_THREADS = 16


class BackboneUnusable(ValueError):
    """A backbone named by a job cannot be used in this worker; the reason says why."""


# The user's backbones that failed to register in this process: what was tried (the entry and
# its weights file's mtime and size) and why it failed. The same attempt is not repeated on
# every chunk; a replaced file is tried again.
_failures: dict[str, tuple[object, str]] = {}


def _attempt(entry: BackboneSetting) -> object:
    try:
        stat = entry.weights.stat()
    except OSError:
        return (entry, None)
    return (entry, stat.st_mtime_ns, stat.st_size)


def register_user_backbones() -> dict[str, str]:
    """Register each entry of ``SVP_BACKBONES`` not registered yet, each on its own; returns
    {name: why not} for those unusable here. A bad entry never stops the others or the
    built-in backbones."""
    user = get_settings().backbones
    errors = dict(user.errors)
    registered = set(backbone_names())
    builtins = builtin_backbones()
    for name, entry in user.usable.items():
        if name in builtins:
            errors[name] = f"{name!r} is a built-in backbone's name; give yours another"
            continue
        if name in registered:
            continue
        attempt = _attempt(entry)
        failed = _failures.get(name)
        if failed is not None and failed[0] == attempt:
            errors[name] = failed[1]
            continue
        try:
            register_torchvision_backbone(
                name, entry.arch, entry.weights, image_size=entry.image_size
            )
        except Exception as exc:
            # A user's file and architecture can fail in any way (a truncated zip, a pickle of
            # the wrong thing, an architecture that wants other arguments): each is that
            # backbone's failure alone, reported where it is named.
            reason = f"{type(exc).__name__}: {exc}"[:500]
            _failures[name] = (attempt, reason)
            errors[name] = reason
        else:
            _failures.pop(name, None)
    return errors


def _usable(name: str) -> None:
    """Raise ``BackboneUnusable`` with the reason when ``name`` is a user's backbone that
    cannot be loaded here; other names (the built-ins) are never affected."""
    reason = register_user_backbones().get(name)
    if reason is not None:
        raise BackboneUnusable(f"backbone {name!r} cannot be used: {reason}")


def is_text(name: str) -> bool:
    """Whether a registered backbone embeds texts (its store's input side is 0)."""
    return get_spec(name).modality == "text"


def check_image_size(name: str, image_size: int) -> None:
    """Refuse an input side above the backbone's own: ``embed`` squashes every image to that
    side anyway, so a larger decode only costs memory (a 1,024 px chunk of 512 images is 1.6 GB
    of pixels) and time, which a chunk's takeover after a stall would then repeat. A text
    encoder has no side: 0, the only one its store is kept under."""
    if is_text(name):
        if image_size != 0:
            raise ValueError(f"backbone {name!r} embeds texts: it has no image_size (0)")
        return
    own = get_spec(name).image_size
    if not 8 <= image_size <= own:
        raise ValueError(
            f"image_size {image_size} for backbone {name!r}: it embeds at {own} px, so 8..{own}"
        )


def backbone(name: str) -> Embedder:
    """A loaded backbone (image or text) by name; the weights are read once per process and
    device."""
    _usable(name)
    settings = get_settings()
    return load_embedder(
        name,
        device=training.device(),
        runtime=settings.embed_runtime,
        cache_dir=settings.cache_dir / "onnx",
    )


@lru_cache(maxsize=8)
def _store(cache_dir: str, name: str, image_size: int, dim: int) -> EmbeddingStore:
    return EmbeddingStore(cache_dir, name, image_size, dim)


def store(name: str, image_size: int) -> EmbeddingStore:
    """The embedding store of a backbone and input side, refreshed with other workers' rows."""
    # The registry knows the width without reading weights: a warm round never loads the model.
    _usable(name)
    check_image_size(name, image_size)
    dim = get_spec(name).dim
    found = _store(str(get_settings().cache_dir), name, image_size, dim)
    found.refresh()
    return found


def embed_texts(model: Embedder, keys: Sequence[str], project_id: int) -> torch.Tensor:
    """Read the texts with these content hashes from the project's rows and embed them."""
    with unit_of_work(write=False) as db:
        texts = texts_by_hash(db, project_id=project_id, hashes=list(keys))
    gone = [k for k in keys if k not in texts]
    if gone:
        # Deleted since the chunk was planned: the job cannot give every key a vector.
        raise LookupError(f"{len(gone)} texts of project {project_id} are gone (e.g. {gone[0]})")
    threads = get_settings().torch_threads or None
    return model.embed([texts[k] for k in keys], num_threads=threads)


def embed_keys(
    model: Embedder, keys: Sequence[str], image_size: int, project_id: int | None
) -> tuple[list[str], torch.Tensor]:
    """Embed the items with these content hashes: texts from their rows, images from the item
    store (or the objects they were imported from); the keys embedded and their rows."""
    if project_id is None:
        raise ValueError("a chunk's items are read by project: the job names no project")
    if model.spec.modality == "text":
        return list(keys), embed_texts(model, keys, project_id)
    return embed_images(model, keys, image_size, project_id)


def embed_images(
    model: Embedder, keys: Sequence[str], image_size: int, project_id: int
) -> tuple[list[str], torch.Tensor]:
    """Decode the images with these content hashes at ``image_size`` and embed them; the keys
    embedded and their rows.

    An image imported by reference whose object is gone from its bucket is left out (logged),
    not the chunk: the job that planned the chunks finds it without an embedding and names it
    (``ensure_embeddings``), and a round leaves that item out.
    """
    with unit_of_work(write=False) as db:
        sources = sources_by_hash(db, project_id=project_id, hashes=list(keys))

    def read(key: str) -> np.ndarray | None:
        try:
            return decode_image(read_image(key, sources.get(key)), image_size)
        except ObjectMissing as exc:
            if key not in sources:
                raise  # an uploaded image missing from the item store is a real fault
            log.warning("project=%s event=object-gone key=%s reason=%s", project_id, key, exc)
            return None

    # From a bucket, reads wait on the network, not the CPU: more of them at once.
    with ThreadPoolExecutor(FETCH_THREADS if is_remote() else DECODE_THREADS) as pool:
        decoded = list(pool.map(read, keys))
    present = [
        (key, pixels) for key, pixels in zip(keys, decoded, strict=True) if pixels is not None
    ]
    if not present:
        return [], torch.empty(0)
    pixels = np.stack([p for _, p in present])
    threads = get_settings().torch_threads or None
    return [k for k, _ in present], model.embed(torch.from_numpy(pixels), num_threads=threads)


def work_chunks(
    *,
    job_id: int,
    name: str,
    image_size: int,
    worker: str,
    on_chunk: Callable[[], None] | None = None,
    wanted: Callable[[], bool] | None = None,
) -> int:
    """Claim and embed the job's chunks until none is left to claim (or ``wanted()`` turns
    false); returns how many."""
    model = backbone(name)
    target = store(name, image_size)
    stale = timedelta(seconds=get_settings().worker_dead_after_seconds)
    project_id = _job_project(job_id)
    done = 0
    while wanted is None or wanted():
        with unit_of_work() as db:
            claimed = embeddings.claim_chunk(
                db, job_id=job_id, worker=worker, stale_before=utcnow() - stale
            )
        if claimed is None:
            return done
        chunk_id, keys = claimed
        missing = target.missing(keys)
        vectors = None
        if missing:
            embedded, vectors = embed_keys(model, missing, image_size, project_id)
            if len(embedded) < len(missing):
                # Objects gone from their bucket have no vector: the chunk (and its shard)
                # holds the rest, and the job names the gone ones at its end.
                gone = set(missing) - set(embedded)
                keys = [k for k in keys if k not in gone]
            missing = embedded
        _store_chunk(
            target,
            keys,
            missing,
            vectors if missing else None,
            job_id=job_id,
            project_id=project_id,
            chunk_id=chunk_id,
        )
        done += 1
        if on_chunk is not None:
            on_chunk()
    return done


def _store_chunk(
    target: EmbeddingStore,
    keys: Sequence[str],
    missing: Sequence[str],
    vectors: torch.Tensor | None,
    *,
    job_id: int,
    project_id: int | None,
    chunk_id: int,
) -> None:
    """Keep a chunk's vectors and mark it done. With a bucket, the whole chunk is first one
    shard object there, registered with the chunk in one transaction, so a done chunk is always
    readable from any machine; the local store takes the rows in last, under the shard's name."""
    if not is_remote() or not keys:
        if vectors is not None:
            target.add(missing, vectors)
        with unit_of_work() as db:
            embeddings.finish_chunk(db, chunk_id=chunk_id)
        return
    if project_id is None:
        raise ValueError("a chunk's shard is registered by project: the job names no project")
    rows = shards.chunk_vectors(target, keys, missing, vectors)
    key = shards.write_shard(target, keys, rows, job_id=job_id, chunk_id=chunk_id)
    with unit_of_work() as db:
        embeddings.finish_chunk_with_shard(
            db,
            chunk_id=chunk_id,
            project_id=project_id,
            backbone=target.backbone,
            image_size=target.image_size,
            key=key,
            rows=len(keys),
        )
    target.add(keys, rows, shards=[key])


def _job_project(job_id: int) -> int | None:
    """The project a job belongs to: the rows a text chunk's keys are read from."""
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        return None if job is None else job.project_id


def _wanted(job_id: int) -> bool:
    """Whether a job still wants its chunks embedded (not finished, nobody asked it to stop)."""
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        return not (job is None or job.status in FINISHED_JOB_STATUSES or job.cancel_requested)


def help_with(job_id: int, name: str, image_size: int, *, worker: str) -> int:
    """A help request's work: embed chunks of a job that is still running; how many.

    It looks at the job before each chunk, so a job that failed or was canceled meanwhile
    costs its helpers at most the chunk in hand.
    """
    if not _wanted(job_id):
        return 0
    done = work_chunks(
        job_id=job_id,
        name=name,
        image_size=image_size,
        worker=worker,
        wanted=lambda: _wanted(job_id),
    )
    log.info("job=%s event=helped chunks=%s worker=%s", job_id, done, worker)
    return done


@dataclass
class EmbeddingReport:
    """What one job's embedding step did: images embedded, seconds, chunks per worker."""

    images: int = 0
    seconds: float = 0.0
    chunks: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    # Shards of the object store that could not be used (corrupt or gone), with why.
    refused_shards: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON for a job's result or a round's metrics."""
        rate = self.images / self.seconds if self.images and self.seconds > 0 else None
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": None if rate is None else round(rate, 1),
            "chunks": self.chunks,
            "workers": self.workers,
            **({"refused_shards": self.refused_shards} if self.refused_shards else {}),
        }


def ensure_embeddings(
    ctx: JobContext,
    keys: Sequence[str],
    name: str,
    image_size: int,
    *,
    stage: str = "embedding",
    report: EmbeddingReport | None = None,
) -> EmbeddingStore:
    """Make sure every key has an embedding, sharing the work with other workers; the store.

    ``report``, when given, is filled with what was embedded and by which workers.
    """
    started = time.perf_counter()
    target = store(name, image_size)
    # With a bucket: what other machines embedded first, so only what nobody has is planned.
    pulled = shards.pull(target, ctx.project_id, bound=True)
    missing = target.missing(keys)
    if not missing:
        return target
    settings = get_settings()
    with unit_of_work() as db:
        total = embeddings.plan_chunks(
            db, job_id=ctx.job_id, keys=missing, chunk_size=settings.embed_chunk_size
        )
    helpers = min(total - 1, settings.embed_fanout)
    if helpers > 0:
        # Sent now, not after a commit: the chunks they claim are committed already.
        for _ in range(helpers):
            send_task(EMBED_HELP_TASK_NAME, [ctx.job_id, name, image_size], kind=JobKind.embed)
    worker = ctx.worker or "worker"

    def progress() -> None:
        with unit_of_work(write=False) as db:
            finished, planned = embeddings.chunk_progress(db, job_id=ctx.job_id)
        # Raises JobCanceled when someone asked the job to stop: helpers then stop too.
        ctx.progress(stage, finished / max(planned, 1))

    ctx.progress(stage, 0.0)
    while True:
        work_chunks(
            job_id=ctx.job_id, name=name, image_size=image_size, worker=worker, on_chunk=progress
        )
        with unit_of_work(write=False) as db:
            finished, planned = embeddings.chunk_progress(db, job_id=ctx.job_id)
        if finished >= planned:
            break
        progress()
        time.sleep(WAIT_SECONDS)
    with unit_of_work() as db:
        workers = embeddings.chunk_workers(db, job_id=ctx.job_id)
        embeddings.drop_chunks(db, job_id=ctx.job_id)
    target.refresh()
    # The shards the other workers wrote for this job's chunks.
    pulled_after = shards.pull(target, ctx.project_id)
    still = target.missing(keys)
    # A shard gone from the store is refused by both pulls: named once.
    refused = list(
        {r.shard: r.as_dict() for p in (pulled, pulled_after) if p for r in p.refused}.values()
    )
    if still:
        # Objects deleted from their bucket after an import by reference: named, for the caller
        # to leave those items out (a round does); anything else is a fault.
        gone = gone_objects(ctx.project_id, still) if ctx.project_id is not None else {}
        if gone:
            raise ObjectsGone(gone)
        why = f"; refused shards: {refused}" if refused else ""
        raise RuntimeError(
            f"{len(still)} items have no embedding after every chunk was done{why}"[:2000]
        )
    if report is not None:
        report.images = len(missing)
        report.seconds = time.perf_counter() - started
        report.chunks = total
        report.workers = workers
        report.refused_shards = refused
    return target


def run_embed(ctx: JobContext) -> dict[str, Any]:
    """The ``embed`` job: every item (image or text) of the project that the store lacks, fanned
    out."""
    assert ctx.project_id is not None
    name, image_size = str(ctx.params["backbone"]), int(ctx.params["image_size"])
    with unit_of_work(write=False) as db:
        keys = list(
            dict.fromkeys(
                db.scalars(
                    select(Item.content_hash)
                    .where(Item.project_id == ctx.project_id)
                    .order_by(Item.id)
                )
            )
        )
    report = EmbeddingReport()
    gone: dict[str, str] = {}
    try:
        ensure_embeddings(ctx, keys, name, image_size, report=report)
    except ObjectsGone as exc:
        # Every other item is embedded: the job did its work, and says what it could not.
        gone = exc.gone
    except JobCanceled:
        with unit_of_work() as db:
            embeddings.drop_chunks(db, job_id=ctx.job_id)
        raise
    result = {"backbone": name, "image_size": image_size, "total": len(keys), **report.as_dict()}
    if gone:
        result["gone"] = len(gone)
        result["gone_listed"] = [{"key": k, "reason": r} for k, r in list(gone.items())[:100]]
    return result


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _report_backbones(**_: Any) -> None:
    # At start, each unusable backbone gets its log line (register_user_backbones writes it),
    # not only the first job that names it.
    errors = register_user_backbones()
    for name, reason in errors.items():
        log.error("backbone=%s event=unusable reason=%s", name, reason)
    log.info("event=backbones usable=%s unusable=%s", ",".join(backbone_names()), len(errors))


__all__ = [
    "BackboneUnusable",
    "EmbeddingReport",
    "ensure_embeddings",
    "help_with",
    "register_user_backbones",
    "run_embed",
    "store",
]
