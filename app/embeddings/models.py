"""The chunks an embedding job is split into, so that several workers can share one job, and
the shards their vectors are written to when the embeddings live in an object store."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


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


class EmbeddingShard(Base):
    """One object of embeddings in the item store (``svp.shards``), written by the worker that
    embedded its chunk: registered in the transaction that marks the chunk done, after the
    object is whole, so a row always names a readable object. Workers take the shards of a
    project into their local store before they decide what is missing (``worker/shards.py``)."""

    __tablename__ = "embedding_shards"
    __table_args__ = (
        Index("ix_embedding_shards_lookup", "project_id", "backbone", "image_size", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The project whose job embedded it: a worker reads the shards of the project it works for,
    # so its bounded cache holds that project's vectors, not every project's.
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    backbone: Mapped[str] = mapped_column(String(255))
    image_size: Mapped[int] = mapped_column()
    # The object's key in the item store (``embeddings/<backbone>-<size>/...``).
    key: Mapped[str] = mapped_column(String(1024), unique=True)
    rows: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
