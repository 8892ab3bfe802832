"""Sign-in, sign-out, the caller, and API tokens."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from app.auth import service
from app.auth.deps import DB, SESSION_COOKIE, CurrentUser
from app.auth.schemas import (
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserRead,
)
from app.db import request_slot, unit_of_work
from app.errors import Unauthenticated
from app.fields import PathId
from app.http import error_responses
from app.security import verify_password
from app.settings import get_settings

T = TypeVar("T")

router = APIRouter(prefix="/api", tags=["auth"])


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# Passwords verified at once per process: argon2 is CPU work, and a flood of sign-ins must leave
# cores (and the thread pool's tokens, which every sync route needs) to everyone else.
ARGON2_CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)
_argon2_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _argon2_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _argon2_limiters.get(loop)
    if limiter is None:
        limiter = _argon2_limiters[loop] = anyio.CapacityLimiter(ARGON2_CONCURRENCY)
    return limiter


def _in_unit_of_work(write: bool, step: Callable[[Session], T]) -> T:
    with unit_of_work(write=write) as db:
        return step(db)


@router.post("/auth/login", responses=error_responses(429))
async def login(body: LoginRequest, request: Request, response: Response) -> LoginResponse:
    """Check credentials and set the session cookie; attempts are rate-limited.

    In phases, so that argon2 (a tenth of a second or more of CPU) runs holding neither a
    transaction nor, on SQLite, the writer queue, where it made every other writer wait: a read
    (the limit, the user's hash), a short write counting the attempt, argon2 in a thread holding
    nothing, then a short write opening the session.
    """
    settings = get_settings()
    limits = service.LoginLimits(
        per_pair=settings.login_attempts_per_minute,
        per_address=settings.login_address_attempts_per_minute,
    )
    username, address = body.username, _client_address(request)
    async with request_slot(write=False):
        candidate = await anyio.to_thread.run_sync(
            _in_unit_of_work,
            False,
            partial(service.login_candidate, limits=limits, username=username, address=address),
        )
    async with request_slot(write=True):
        window = await anyio.to_thread.run_sync(
            _in_unit_of_work,
            True,
            partial(
                service.reserve_login_attempt,
                limits=limits,
                username=username,
                address=address,
            ),
        )
    if not await anyio.to_thread.run_sync(
        verify_password, candidate.password_hash, body.password, limiter=_argon2_limiter()
    ):
        raise Unauthenticated("wrong username or password")

    def finish(db: Session) -> tuple[UserRead, service.NewSession]:
        user = service.signed_in_user(db, candidate=candidate)
        service.login_succeeded(db, username=username, address=address, window=window)
        return UserRead.model_validate(user), service.open_session(
            db, user=user, hours=settings.session_hours
        )

    async with request_slot(write=True):
        user, opened = await anyio.to_thread.run_sync(_in_unit_of_work, True, finish)
    response.set_cookie(
        SESSION_COOKIE,
        opened.secret,
        max_age=settings.session_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return LoginResponse(user=user, csrf_token=opened.csrf_token)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, user: CurrentUser, db: DB) -> None:
    """End the cookie session (a bearer token is revoked with DELETE /api/tokens/{id})."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        service.close_session(db, secret=cookie)
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/me")
def me(user: CurrentUser) -> UserRead:
    """The signed-in user."""
    return UserRead.model_validate(user)


@router.post("/tokens", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
def create_token(body: TokenCreate, user: CurrentUser, db: DB) -> TokenCreated:
    """Make an API token; its secret is in this answer only."""
    token, secret = service.create_token(db, user=user, name=body.name)
    return TokenCreated(id=token.id, name=token.name, token=secret)


@router.get("/tokens")
def list_tokens(user: CurrentUser, db: DB) -> list[TokenRead]:
    """The caller's API tokens, without secrets."""
    return [TokenRead.model_validate(t) for t in service.list_tokens(db, user=user)]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: PathId, user: CurrentUser, db: DB) -> None:
    """Revoke one of the caller's tokens."""
    service.revoke_token(db, user=user, token_id=token_id)
