"""Request dependencies: who is calling, and may they."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth import service
from app.auth.models import ApiToken, AuthSession, Role, User
from app.db import SAFE_METHODS, get_db, run_in_unit_of_work, unit_of_work, utcnow
from app.errors import PermissionDenied, Unauthenticated
from app.security import hash_secret
from app.visibility import note_viewer

log = logging.getLogger(__name__)

SESSION_COOKIE = "svp_session"
CSRF_HEADER = "X-CSRF-Token"

# scope="function": the unit of work commits when the route function returns, before the response
# is sent. With FastAPI's default ("request") the commit ran after the client had its answer: a
# 201 could precede a failed commit, and a client's next request could miss what it just wrote.
DB = Annotated[Session, Depends(get_db, scope="function")]


def _note_token_use(request: Request, db: Session, token_id: int) -> None:
    if request.method not in SAFE_METHODS:
        service.note_token_use(db, token_id=token_id)  # the request's own write transaction
        return
    # A read's unit of work does not hold the write lock (SQLite) and must not take it midway:
    # a short write of its own, at most once a minute per token. Best effort: a timestamp never
    # fails a request.
    try:
        with unit_of_work() as own:
            service.note_token_use(own, token_id=token_id)
    except OperationalError as exc:
        log.warning("could not note the use of API token %s: %s", token_id, exc.orig)


def _credential(request: Request) -> tuple[str, str]:
    """The request's credential: its cache key and its secret; Unauthenticated without one."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        return auth_cache.token_key(hash_secret(secret.strip())), secret.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthenticated("sign in first")
    return auth_cache.session_key(cookie), cookie


def _accept(request: Request, user: User, credential: AuthSession | ApiToken) -> User:
    """The caller, once a cookie write has shown its CSRF token; kept on the request's state."""
    if isinstance(credential, AuthSession):
        request.state.session_id = credential.id
        if request.method not in SAFE_METHODS:
            service.check_csrf(credential, request.headers.get(CSRF_HEADER))
    request.state.user = user
    note_viewer(admin=user.role == Role.admin)
    return user


def _recalled(key: str) -> tuple[User, AuthSession | ApiToken] | None:
    """The cached user and credential while still good to use without the database."""
    hit = auth_cache.recall(key)
    if hit is None:
        return None
    credential = hit[1]
    if key.startswith("session:"):
        # An expired session is looked up (and refused) rather than trusted from the cache.
        if isinstance(credential, AuthSession) and credential.expires_at >= utcnow():
            return hit
        return None
    return hit if isinstance(credential, ApiToken) else None


def current_user(request: Request, db: DB) -> User:
    """Authenticate by bearer token or session cookie; cookie writes must carry the CSRF token."""
    key, secret = _credential(request)
    hit = _recalled(key)
    if hit is None:
        found: tuple[User, AuthSession | ApiToken]
        read_at = auth_cache.generation()
        if key.startswith("token:"):
            found = service.user_from_token(db, secret=secret)
        else:
            found = service.user_from_session(db, secret=secret)
        auth_cache.remember(key, *found, read_at=read_at)
        hit = found
    user, credential = hit
    if isinstance(credential, ApiToken) and service.token_use_is_stale(credential):
        _note_token_use(request, db, credential.id)
        auth_cache.note_used(key, utcnow())
    return _accept(request, user, credential)


async def loop_user(request: Request) -> User:
    """``current_user`` for the hot routes, answered in the event loop on a cache hit.

    The labelling routes would otherwise spend a request slot, a unit of work and a thread
    hop on a look-up the cache answers. A miss, an expired session or a token whose use is due
    to be written goes the ordinary way, in one hop with its own slot and unit of work (which
    commits before the route's own begins).
    """
    key, _ = _credential(request)
    hit = _recalled(key)
    if hit is not None and not (
        isinstance(hit[1], ApiToken) and service.token_use_is_stale(hit[1])
    ):
        return _accept(request, *hit)
    return await run_in_unit_of_work(
        lambda db: current_user(request, db), write=request.method not in SAFE_METHODS
    )


CurrentUser = Annotated[User, Depends(current_user)]
# The caller of a route that runs its work through ``app.db.run_in_unit_of_work``.
LoopUser = Annotated[User, Depends(loop_user)]


def require_role(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets through only users with one of these global roles."""

    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise PermissionDenied(f"this needs the role {' or '.join(roles)}")
        return user

    return check


AdminUser = Annotated[User, Depends(require_role(Role.admin))]
EngineerUser = Annotated[User, Depends(require_role(Role.admin, Role.engineer))]
