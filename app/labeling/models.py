"""Labels (append-only history) and leases (who holds an item right now)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class LabelSource(StrEnum):
    """Where a label came from."""

    human = "human"
    imported = "import"


class Label(Base):
    """One labelling act; an item's current label is its newest one not undone."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_item_id_id", "item_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    label: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(8), default=LabelSource.human)
    # Client-chosen idempotency key: a replay returns the first label instead of adding one.
    key: Mapped[str | None] = mapped_column(String(128), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Undo marks a label instead of deleting it, so the history stays whole.
    undone_at: Mapped[datetime | None] = mapped_column(default=None)


class Lease(Base):
    """Who holds an item of a batch right now; one row per item at most."""

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_user_expires", "user_id", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: the database itself refuses a second holder of the same item.
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column()
    # When its holder first took the item; a skip sets it to ``expires_at`` (see skip).
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
