"""Embedding jobs and their chunks: planned once, claimed one at a time by any worker.

A job that must embed images (an ``embed`` job, or a round whose proxy is ``linear``) writes
its missing images as chunks, asks other workers for help through the broker, and works through
the chunks itself too; each worker claims a chunk with one conditional UPDATE, so no chunk is
embedded by two live workers. A claim older than the dead-worker timeout is taken over, so a
killed helper delays a job but never strands it. Progress lives in the job's row.

With an object store, each chunk's vectors are a shard object registered here
(``EmbeddingShard``) in the same transaction that marks the chunk done.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.embeddings.models import ChunkStatus, EmbedChunk, EmbeddingShard
from app.embeddings.schemas import (
    BUILTIN_BACKBONES,
    DEFAULT_BACKBONE,
    embedding_size,
    known_backbones,
)
from app.jobs.models import Job, JobKind, JobStatus
from app.jobs.service import create_job
from app.projects import kinds
from app.projects.models import Project
from app.projects.service import project_settings
from app.settings import get_settings
from app.storage import ObjectStore

# What a PyTorch weights file starts with: a zip archive (torch.save since 1.6) or a pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def _weights_problem(path: Path) -> str | None:
    """Why a weights file cannot be loaded, as far as can be told without torch; None if it may."""
    try:
        if not path.is_file():
            return (
                f"weights file {path} does not exist"
                if not path.exists()
                else f"{path} is not a file"
            )
        with path.open("rb") as fh:
            head = fh.read(4)
        if not head.startswith(_CHECKPOINT_MAGIC):
            return f"weights file {path} is not a PyTorch checkpoint (neither a zip nor a pickle)"
        if head.startswith(b"PK") and not zipfile.is_zipfile(path):
            return f"weights file {path} is a truncated or damaged zip archive"
    except OSError as exc:
        return f"weights file {path} cannot be read: {exc.strerror or exc}"
    return None


def backbone_errors() -> dict[str, str]:
    """Each of the user's backbones (``SVP_BACKBONES``) that cannot work, with the reason the
    server can tell without torch: a malformed entry, a built-in's name, a weights file that is
    missing, unreadable or not a checkpoint. The worker reports what only loading shows."""
    user = get_settings().backbones
    errors = dict(user.errors)
    for name, entry in user.usable.items():
        if name in BUILTIN_BACKBONES:
            errors[name] = f"{name!r} is a built-in backbone's name; give yours another"
        elif (problem := _weights_problem(entry.weights)) is not None:
            errors[name] = problem
    return errors


def embedding_params(backbone: str | None, image_size: int | None) -> dict[str, object]:
    """A job's backbone and input side, the backbone's own side when none is given."""
    name = backbone or DEFAULT_BACKBONE
    return {"backbone": name, "image_size": embedding_size(name, image_size)}


def start_embedding(
    db: Session,
    *,
    project: Project,
    backbone: str | None,
    image_size: int | None,
    created_by: int | None,
) -> Job:
    """Queue an embedding job for the project's images, or return the one already queued with
    the same backbone and size: it reads the project's images when it starts, so it covers these
    too. One already running has planned its chunks, so images added since need a new job.

    No backbone: the project's own (a text project's is a text encoder); one that embeds the
    other kind of item than the project holds is 422."""
    name = backbone or project_settings(project).backbone
    kinds.check_backbone(project.kind, name)
    params = embedding_params(name, image_size)
    for job in db.scalars(
        select(Job).where(
            Job.project_id == project.id,
            Job.kind == JobKind.embed,
            Job.status == JobStatus.queued,
        )
    ):
        if job.params == params:
            return job
    return create_job(
        db, kind=JobKind.embed, project_id=project.id, params=params, created_by=created_by
    )


def embed_new_images(db: Session, *, project_id: int, created_by: int | None) -> Job | None:
    """After an import: queue the embedding of what is new, when the project's proxy is linear,
    so its next round starts from warm embeddings (the store skips what it has)."""
    project = db.get(Project, project_id)
    if project is None:
        return None
    settings = project_settings(project)
    if settings.default_proxy != "linear" or settings.backbone not in known_backbones():
        return None
    return start_embedding(
        db, project=project, backbone=settings.backbone, image_size=None, created_by=created_by
    )


def plan_chunks(db: Session, *, job_id: int, keys: Sequence[str], chunk_size: int) -> int:
    """Split the keys into chunks of the job, once: a redelivered job keeps its first plan.

    Returns the number of chunks the job has.
    """
    existing = db.scalar(select(func.count()).where(EmbedChunk.job_id == job_id)) or 0
    if existing:
        return existing
    rows = [
        {"job_id": job_id, "seq": i, "keys": list(keys[start : start + chunk_size])}
        for i, start in enumerate(range(0, len(keys), chunk_size))
    ]
    if rows:
        db.execute(insert(EmbedChunk), rows)
    return len(rows)


def _claimable(job_id: int, stale_before: datetime) -> object:
    return and_(
        EmbedChunk.job_id == job_id,
        or_(
            EmbedChunk.status == ChunkStatus.queued,
            and_(EmbedChunk.status == ChunkStatus.running, EmbedChunk.claimed_at < stale_before),
        ),
    )


def claim_chunk(
    db: Session, *, job_id: int, worker: str, stale_before: datetime
) -> tuple[int, list[str]] | None:
    """Take the job's next chunk for this worker: (chunk id, keys), or None when none is left.

    The UPDATE re-checks the condition, so of two workers racing for a chunk one gets it and
    the other finds the next (PostgreSQL re-evaluates the WHERE after the row lock; SQLite runs
    one writer at a time).
    """
    condition = _claimable(job_id, stale_before)
    for _ in range(8):
        chunk_id = db.scalar(
            select(EmbedChunk.id).where(condition).order_by(EmbedChunk.seq).limit(1)  # type: ignore[arg-type]  # and_() is a ColumnElement[bool]
        )
        if chunk_id is None:
            return None
        row = db.execute(
            update(EmbedChunk)
            .where(EmbedChunk.id == chunk_id, condition)  # type: ignore[arg-type]  # as above
            .values(status=ChunkStatus.running, worker=worker, claimed_at=utcnow())
            .returning(EmbedChunk.keys)
        ).first()
        if row is not None:
            return chunk_id, list(row[0])
    return None


def finish_chunk(db: Session, *, chunk_id: int) -> None:
    """Mark a chunk embedded and stored."""
    db.execute(
        update(EmbedChunk)
        .where(EmbedChunk.id == chunk_id)
        .values(status=ChunkStatus.done, done_at=utcnow())
    )


def chunk_progress(db: Session, *, job_id: int) -> tuple[int, int]:
    """(chunks done, chunks in all) of a job."""
    done, total = db.execute(
        select(
            func.count().filter(EmbedChunk.status == ChunkStatus.done),
            func.count(),
        ).where(EmbedChunk.job_id == job_id)
    ).one()
    return int(done or 0), int(total or 0)


def chunk_workers(db: Session, *, job_id: int) -> dict[str, int]:
    """How many of a job's chunks each worker embedded (the fan-out, for the job's result)."""
    rows = db.execute(
        select(EmbedChunk.worker, func.count())
        .where(EmbedChunk.job_id == job_id, EmbedChunk.status == ChunkStatus.done)
        .group_by(EmbedChunk.worker)
    ).tuples()
    return {str(worker): int(n) for worker, n in rows}


def drop_chunks(db: Session, *, job_id: int) -> None:
    """Forget a finished plan: the embeddings are on disk, the chunk rows served their turn."""
    db.execute(delete(EmbedChunk).where(EmbedChunk.job_id == job_id))


def finish_chunk_with_shard(
    db: Session,
    *,
    chunk_id: int,
    project_id: int,
    backbone: str,
    image_size: int,
    key: str,
    rows: int,
) -> None:
    """Register a chunk's shard (already whole in the store) and mark the chunk done, in the
    caller's one transaction: a done chunk always has its vectors where every worker finds them."""
    db.add(
        EmbeddingShard(
            project_id=project_id, backbone=backbone, image_size=image_size, key=key, rows=rows
        )
    )
    finish_chunk(db, chunk_id=chunk_id)


def project_shards(
    db: Session, *, project_id: int, backbone: str, image_size: int
) -> list[tuple[str, int]]:
    """(key, rows) of a project's shards of one backbone and input side, oldest first."""
    rows = db.execute(
        select(EmbeddingShard.key, EmbeddingShard.rows)
        .where(
            EmbeddingShard.project_id == project_id,
            EmbeddingShard.backbone == backbone,
            EmbeddingShard.image_size == image_size,
        )
        .order_by(EmbeddingShard.id)
    ).tuples()
    return [(str(key), int(n)) for key, n in rows]


def forget_shard(db: Session, *, key: str) -> None:
    """Unregister a shard no worker can read (corrupt, or deleted from the store): its vectors
    count as missing again, so the next job that needs them embeds them anew."""
    db.execute(delete(EmbeddingShard).where(EmbeddingShard.key == key))


# A shard object's key (worker/shards.py: ``shard_key``): the job that embedded it comes first.
SHARD_PREFIX = "embeddings/"
_SHARD_KEY = re.compile(r"embeddings/[^/]+/j(\d+)-c\d+-[0-9a-f]+\.svpe")
# How long after its job ended an unregistered shard may still be registered (a helper that
# put it as the job finished): past it, it never will be.
ORPHAN_SHARD_GRACE = timedelta(hours=1)
_SWEEP_PAGE = 500


def sweep_orphan_shards(
    db: Session, *, store: ObjectStore, now: datetime, grace: timedelta = ORPHAN_SHARD_GRACE
) -> list[str]:
    """Delete shard objects no row of ``embedding_shards`` names and none ever will; their keys.

    A shard is put whole, then registered with its chunk: a worker that dies between the two
    (or whose registration fails: the store answered, the database did not) leaves an object
    nothing reads. Such an object goes when its job has ended more than ``grace`` ago, or its
    row is gone (a project's rows go with it, by cascade, should a project ever be deleted);
    one of a queued or running job, and any key not shaped like a shard's, stay.
    """
    deleted: list[str] = []
    page: list[tuple[str, int]] = []

    def settle() -> None:
        keys = [key for key, _ in page]
        registered = set(db.scalars(select(EmbeddingShard.key).where(EmbeddingShard.key.in_(keys))))
        job_ids = {job for key, job in page if key not in registered}
        jobs = {
            int(job_id): (status, finished_at)
            for job_id, status, finished_at in db.execute(
                select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(job_ids))
            )
        }
        for key, job_id in page:
            if key in registered:
                continue
            status, finished_at = jobs.get(job_id, (None, None))
            ended = status is None or (
                status not in (JobStatus.queued, JobStatus.running)
                and (finished_at is None or now - finished_at > grace)
            )
            if ended:
                store.delete(key)
                deleted.append(key)
        page.clear()

    for info in store.list(SHARD_PREFIX):
        found = _SHARD_KEY.fullmatch(info.key)
        if found is None:
            continue
        page.append((info.key, int(found.group(1))))
        if len(page) >= _SWEEP_PAGE:
            settle()
    if page:
        settle()
    return deleted
