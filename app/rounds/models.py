"""Rounds of active learning and the frozen batch each one selects."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class RoundStatus(StrEnum):
    """The life of a round."""

    queued = "queued"
    running = "running"
    labeling = "labeling"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"


ACTIVE_ROUND_STATUSES = (RoundStatus.queued, RoundStatus.running)


class Round(Base):
    """One round: train the proxy, score the pool, select a batch, label it."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("project_id", "number"),
        Index("ix_rounds_project_status", "project_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=RoundStatus.queued)
    strategy: Mapped[str] = mapped_column(String(32))
    batch_size: Mapped[int] = mapped_column()
    proxy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column()
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None
    )
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Selection(Base):
    """One item of a round's batch, with its rank, score and the proxy's suggestion."""

    __tablename__ = "selections"
    __table_args__ = (
        UniqueConstraint("round_id", "item_id"),
        UniqueConstraint("round_id", "rank"),
        # The labelling queue and the "is the batch done" check read the open part of a batch
        # in rank order; with ``labeled`` in the key they never walk past its labelled items.
        Index("ix_selections_round_labeled_rank", "round_id", "labeled", "rank"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column()
    score: Mapped[float] = mapped_column(Float)
    suggested_label: Mapped[str | None] = mapped_column(String(200), default=None)
    suggested_prob: Mapped[float | None] = mapped_column(Float, default=None)
    # Whether the item has a live label, kept in step with Item.label by the statements of
    # app.labeling.sql alone (label, undo, a batch saved after some of its items were labelled).
    labeled: Mapped[bool] = mapped_column(default=False, server_default=false())
