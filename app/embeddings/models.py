"""The chunks an embedding job is split into, so that several workers can share one job."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class ChunkStatus(StrEnum):
    """The life of one chunk: waiting, held by a worker, embedded and stored."""

    queued = "queued"
    running = "running"
    done = "done"


class EmbedChunk(Base):
    """A slice of the images a job must embed, claimed by one worker at a time."""

    __tablename__ = "embed_chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index("ix_embed_chunks_job_status", "job_id", "status", "seq"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    # Content hashes of the images: the embedding store's keys.
    keys: Mapped[list[Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=ChunkStatus.queued)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    # When its worker took it; a claim older than the dead-worker timeout may be taken over.
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
