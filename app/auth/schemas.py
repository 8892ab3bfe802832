"""Shapes of the auth endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.fields import RequestBody


class LoginRequest(RequestBody):
    """Credentials for ``POST /api/auth/login``."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserRead(BaseModel):
    """A user as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str


class LoginResponse(BaseModel):
    """The signed-in user and the CSRF token for cookie-authenticated writes."""

    user: UserRead
    csrf_token: str


class TokenCreate(RequestBody):
    """A new API token's name."""

    name: str = Field(min_length=1, max_length=100)


class TokenRead(BaseModel):
    """An API token, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class TokenCreated(BaseModel):
    """A new API token; ``token`` is the secret, shown this once."""

    id: int
    name: str
    token: str
