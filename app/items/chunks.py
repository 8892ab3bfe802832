"""The chunks of an import by reference: planned by the job, claimed one at a time by any worker.

The pattern of embedding chunks (``app.embeddings.service``), with one difference that counts:
registering items is not idempotent the way storing an embedding is, so a chunk is finished only
by the holder of its current claim (a token written with the claim). A worker whose claim went
stale and was taken over finds its ``finish`` refused and rolls its items back; the chunk's items
and its counts commit once, with its ``done``, and the job's result is the sum of its chunks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.items.models import ImportChunk, ImportChunkStatus

# Rejected objects listed per chunk (each chunk's count covers them all).
MAX_REJECTED_PER_CHUNK = 1000


@dataclass(frozen=True)
class Claimed:
    """A chunk this worker holds: its id, the claim's token, and its entries."""

    chunk_id: int
    token: str
    entries: list[list[Any]]


@dataclass
class ChunkCounts:
    """What one chunk came to."""

    added: int = 0
    duplicates: int = 0
    labeled: int = 0
    rejected: list[dict[str, str]] | None = None
    rejected_count: int = 0

    def reject(self, name: str, reason: str) -> None:
        """Count a refused object (or row), listing it while the chunk's list is short."""
        if self.rejected is None:
            self.rejected = []
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_PER_CHUNK:
            self.rejected.append({"name": name.replace("\x00", "\ufffd"), "reason": reason})


@dataclass(frozen=True)
class PlanState:
    """How far a job's planning got: chunks and entries written, and the last key listed."""

    chunks: int
    entries: int
    last_key: str


def plan_state(db: Session, *, job_id: int) -> PlanState:
    """The chunks a job has planned so far (a re-run resumes its listing after ``last_key``)."""
    chunks, entries = db.execute(
        select(func.count(), func.coalesce(func.sum(ImportChunk.size), 0)).where(
            ImportChunk.job_id == job_id
        )
    ).one()
    last = db.scalar(
        select(ImportChunk.entries)
        .where(ImportChunk.job_id == job_id)
        .order_by(ImportChunk.seq.desc())
        .limit(1)
    )
    return PlanState(int(chunks), int(entries), str(last[-1][0]) if last else "")


def add_chunks(db: Session, *, job_id: int, first_seq: int, chunks: list[list[list[Any]]]) -> None:
    """Write planned chunks, numbered from ``first_seq``."""
    rows = [
        {
            "job_id": job_id,
            "seq": first_seq + i,
            "entries": entries,
            "size": len(entries),
            "rejected": [],
        }
        for i, entries in enumerate(chunks)
        if entries
    ]
    if rows:
        db.execute(insert(ImportChunk), rows)


def _claimable(job_id: int, stale_before: datetime) -> Any:
    return and_(
        ImportChunk.job_id == job_id,
        or_(
            ImportChunk.status == ImportChunkStatus.queued,
            and_(
                ImportChunk.status == ImportChunkStatus.running,
                ImportChunk.claimed_at < stale_before,
            ),
        ),
    )


def claim(db: Session, *, job_id: int, worker: str, stale_before: datetime) -> Claimed | None:
    """Take the job's next chunk (or one whose claim went stale), or None when none is left.

    The UPDATE re-checks the condition, so of two workers racing for a chunk one gets it.
    """
    condition = _claimable(job_id, stale_before)
    for _ in range(8):
        chunk_id = db.scalar(
            select(ImportChunk.id).where(condition).order_by(ImportChunk.seq).limit(1)
        )
        if chunk_id is None:
            return None
        token = secrets.token_hex(8)
        row = db.execute(
            update(ImportChunk)
            .where(ImportChunk.id == chunk_id, condition)
            .values(
                status=ImportChunkStatus.running, worker=worker, claim=token, claimed_at=utcnow()
            )
            .returning(ImportChunk.entries)
        ).first()
        if row is not None:
            return Claimed(chunk_id, token, [list(e) for e in row[0]])
    return None


def finish(db: Session, *, claimed: Claimed, counts: ChunkCounts) -> bool:
    """Mark the chunk done with its counts, in the transaction that registered its items;
    False when the claim is no longer this worker's (the caller must roll back)."""
    done = db.execute(
        update(ImportChunk)
        .where(
            ImportChunk.id == claimed.chunk_id,
            ImportChunk.claim == claimed.token,
            ImportChunk.status == ImportChunkStatus.running,
        )
        .values(
            status=ImportChunkStatus.done,
            done_at=utcnow(),
            added=counts.added,
            duplicates=counts.duplicates,
            labeled=counts.labeled,
            rejected=counts.rejected or [],
            rejected_count=counts.rejected_count,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]  # an UPDATE's CursorResult


def fail(db: Session, *, claimed: Claimed, error: str) -> None:
    """Record why a chunk could not be read (nothing of it was registered)."""
    db.execute(
        update(ImportChunk)
        .where(ImportChunk.id == claimed.chunk_id, ImportChunk.claim == claimed.token)
        .values(status=ImportChunkStatus.failed, error=error[:2000], claim=None)
    )


def first_failure(db: Session, *, job_id: int) -> str | None:
    """The error of the job's first failed chunk, or None."""
    return db.scalar(
        select(ImportChunk.error)
        .where(ImportChunk.job_id == job_id, ImportChunk.status == ImportChunkStatus.failed)
        .order_by(ImportChunk.seq)
        .limit(1)
    )


def requeue_failed(db: Session, *, job_id: int) -> int:
    """Queue a retried job's failed chunks again; how many."""
    changed = db.execute(
        update(ImportChunk)
        .where(ImportChunk.job_id == job_id, ImportChunk.status == ImportChunkStatus.failed)
        .values(status=ImportChunkStatus.queued, error=None, worker=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(changed.rowcount or 0)  # type: ignore[attr-defined]  # as above


@dataclass(frozen=True)
class JobTally:
    """The sums over a job's chunks."""

    chunks: int
    chunks_done: int
    entries: int
    processed: int
    added: int
    duplicates: int
    labeled: int
    rejected_count: int


def tally(db: Session, *, job_id: int) -> JobTally:
    """What a job's done chunks came to, and how much is planned."""
    done = ImportChunk.status == ImportChunkStatus.done

    def total(column: Any) -> Any:
        return func.coalesce(func.sum(column), 0)

    row = db.execute(
        select(
            func.count(),
            func.count().filter(done),
            total(ImportChunk.size),
            func.coalesce(func.sum(ImportChunk.size).filter(done), 0),
            total(ImportChunk.added),
            total(ImportChunk.duplicates),
            total(ImportChunk.labeled),
            total(ImportChunk.rejected_count),
        ).where(ImportChunk.job_id == job_id)
    ).one()
    return JobTally(*(int(v) for v in row))


def rejected(db: Session, *, job_id: int, limit: int) -> list[dict[str, str]]:
    """The first ``limit`` rejected objects of a job, in listing order."""
    listed: list[dict[str, str]] = []
    rows = db.scalars(
        select(ImportChunk.rejected)
        .where(ImportChunk.job_id == job_id, ImportChunk.rejected_count > 0)
        .order_by(ImportChunk.seq)
    )
    for entries in rows:
        listed.extend(entries[: limit - len(listed)])
        if len(listed) >= limit:
            break
    return listed


def workers(db: Session, *, job_id: int) -> dict[str, int]:
    """How many of a job's chunks each worker registered (the fan-out, for the result)."""
    rows = db.execute(
        select(ImportChunk.worker, func.count())
        .where(ImportChunk.job_id == job_id, ImportChunk.status == ImportChunkStatus.done)
        .group_by(ImportChunk.worker)
    ).tuples()
    return {str(worker): int(n) for worker, n in rows}


def drop(db: Session, *, job_id: int) -> None:
    """Forget a finished job's chunks: its result holds what they came to."""
    db.execute(delete(ImportChunk).where(ImportChunk.job_id == job_id))
