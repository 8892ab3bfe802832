"""Shapes of the admin's user management."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.auth.models import Role
from app.fields import RequestBody

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"


class UserCreate(RequestBody):
    """A new user."""

    username: str = Field(min_length=1, max_length=64, pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=1024)
    role: Role = Role.annotator


class UserUpdate(RequestBody):
    """Changes to a user; absent fields stay as they are."""

    role: Role | None = None
    active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class UserDetail(BaseModel):
    """A user as the admin sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    active: bool
    created_at: datetime
