"""Items: the images of a project's pool and test split."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Split(StrEnum):
    """Where an item belongs: the pool rounds select from, or the held-out test split."""

    pool = "pool"
    test = "test"


class Item(Base):
    """One image of a project, stored once per content hash."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("project_id", "content_hash"),
        # Keyset pages and the unlabelled pool are read in id order within a project and split.
        Index("ix_items_project_split_id", "project_id", "split", "id"),
        Index("ix_items_project_label_id", "project_id", "label", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    content_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(1024))
    media_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column()
    height: Mapped[int] = mapped_column()
    split: Mapped[str] = mapped_column(String(8), default=Split.pool)
    # The current label, kept in step with the newest live Label row in the same transaction,
    # so filters and exports never aggregate the label history.
    label: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
