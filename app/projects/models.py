"""Projects and their members."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
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
