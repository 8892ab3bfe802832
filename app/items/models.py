"""Items: the images or texts of a project's pool and test split."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, deferred, mapped_column, query_expression

from app.db import Base, utcnow


class Split(StrEnum):
    """Where an item belongs: the pool rounds select from, or the held-out test split."""

    pool = "pool"
    test = "test"


# The media type of a text item; an image item has its image's (image/png, ...).
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
# How much of a text item's text pages and batch entries carry (DESIGN 4c).
TEXT_PREVIEW_CHARS = 280


def _where(name: str, condition: str) -> tuple[Index, Index]:
    """The id-ordered indexes of a project's items (all, or of one split) that meet a condition."""
    where = sql_text(condition)
    return (
        Index(
            f"ix_items_project_{name}_id",
            "project_id",
            "id",
            postgresql_where=where,
            sqlite_where=where,
        ),
        Index(
            f"ix_items_project_split_{name}_id",
            "project_id",
            "split",
            "id",
            postgresql_where=where,
            sqlite_where=where,
        ),
    )


class Item(Base):
    """One image or text of a project, stored once per content hash."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("project_id", "content_hash"),
        # Every filter of an item page (and the export, and the unlabelled pool a round reads)
        # has an index in id order of its own, so a keyset page reads its own rows whatever
        # the pool's size and whatever other projects hold (migration 0009): without one, a
        # page walked the primary key through every item of a bigger project made before it,
        # or through every item its filter passed over.
        Index("ix_items_project_id", "project_id", "id"),
        Index("ix_items_project_split_id", "project_id", "split", "id"),
        *_where("labeled", "label IS NOT NULL"),
        *_where("unlabeled", "label IS NULL"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    content_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(1024))
    media_type: Mapped[str] = mapped_column(String(64))
    # An image's size; null for a text item.
    width: Mapped[int | None] = mapped_column(default=None)
    height: Mapped[int | None] = mapped_column(default=None)
    # A text item's text, in the row itself: a page of 500 reads its previews in the same
    # query as the rest (no file per item to open), and a million short texts import as fast
    # as rows insert (docs/import.md). Deferred: loading an item never pulls a long text along
    # unless asked for. Null for an image item.
    text: Mapped[str | None] = deferred(mapped_column(Text, default=None))
    # len(text) in characters (code points), so a page shows the length without reading it all.
    text_chars: Mapped[int | None] = mapped_column(default=None)
    # The ``s3://bucket/key`` an item imported by reference is read from (DESIGN 4d); null: its
    # bytes are in the item store under its content hash (uploads, text rows).
    source: Mapped[str | None] = mapped_column(String(2048), default=None)
    split: Mapped[str] = mapped_column(String(8), default=Split.pool)
    # The current label, kept in step with the newest live Label row in the same transaction,
    # so filters and exports never aggregate the label history.
    label: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The first TEXT_PREVIEW_CHARS of ``text`` when a query asks for it (item pages).
    text_preview: Mapped[str | None] = query_expression()

    @property
    def is_text(self) -> bool:
        """Whether this is a text item (its media type says so without loading the text)."""
        return self.media_type == TEXT_MEDIA_TYPE


class ImportChunkStatus(StrEnum):
    """The life of one chunk of an import by reference."""

    queued = "queued"
    running = "running"
    done = "done"
    # Its objects could not be read (the store did not answer): nothing of it was registered,
    # and a retry of the job queues it again.
    failed = "failed"


class ImportChunk(Base):
    """A slice of the objects an import by reference registers (DESIGN 4d), claimed by one
    worker at a time; its items and its counts commit in one transaction with its ``done``."""

    __tablename__ = "import_chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index("ix_import_chunks_job_status", "job_id", "status", "seq"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    # [key, name, label or null, problem or null] per object, in listing (or manifest) order.
    entries: Mapped[list[Any]] = mapped_column()
    size: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=ImportChunkStatus.queued)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    # A token per claim: only the holder of the current claim can mark the chunk done, so a
    # worker whose claim was taken over (it stalled) cannot register the chunk a second time.
    claim: Mapped[str | None] = mapped_column(String(32), default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # What the chunk came to, written with its items.
    added: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    labeled: Mapped[int] = mapped_column(default=0)
    rejected_count: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[list[Any]] = mapped_column(default=list)
