"""Projects and their members."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class MemberRole(StrEnum):
    """A user's role inside one project."""

    engineer = "engineer"
    annotator = "annotator"


class ProjectKind(StrEnum):
    """What a project's items are: images, or texts (DESIGN 4c). Fixed when the project is made."""

    image = "image"
    text = "text"


class Project(Base):
    """A labelling project: an ordered class list, settings, a pool of items."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(
        String(8), default=ProjectKind.image, server_default=ProjectKind.image.value
    )
    classes: Mapped[list[Any]] = mapped_column()
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Member(Base):
    """A user's membership of a project, with a role there."""

    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The items a project's counts read, per split and label, in this many shards (by item id): the
# label path updates one shard's rows, so concurrent labels of one class rarely wait on each
# other's row. Fixed by migration 0009, whose triggers compute ``id % COUNT_SHARDS``.
COUNT_SHARDS = 16
# The ``label`` of the rows that count every item of a split, labelled or not.
ALL_ITEMS = ""


class ItemCount(Base):
    """How many items of a project are in a split with a current label: the project's counts
    and class counts, read in a handful of rows whatever the pool's size (DESIGN 6).

    Rows with ``label`` ALL_ITEMS count every item of the split; the others, the items whose
    current label is ``label``. Database triggers on ``items`` keep them (migration 0009), in
    the transaction of every write of an item: an import, a label, an undo, a delete, whoever
    writes it. Nothing in the application writes this table.
    """

    __tablename__ = "item_counts"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    split: Mapped[str] = mapped_column(String(8), primary_key=True)
    label: Mapped[str] = mapped_column(String(200), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column()
