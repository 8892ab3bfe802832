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
from app.db import SAFE_METHODS, get_db, unit_of_work, utcnow
from app.errors import PermissionDenied, Unauthenticated
from app.security import hash_secret

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


def current_user(request: Request, db: DB) -> User:
    """Authenticate by bearer token or session cookie; cookie writes must carry the CSRF token."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        key = auth_cache.token_key(hash_secret(secret.strip()))
        user, token = _token_user(db, key, secret.strip())
        if service.token_use_is_stale(token):
            _note_token_use(request, db, token.id)
            auth_cache.note_used(key, utcnow())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthenticated("sign in first")
        user, session_row = _session_user(db, cookie)
        request.state.session_id = session_row.id
        if request.method not in SAFE_METHODS:
            service.check_csrf(session_row, request.headers.get(CSRF_HEADER))
    request.state.user = user
    return user


def _session_user(db: Session, secret: str) -> tuple[User, AuthSession]:
    """The session's user, from the cache within its TTL (an expired session is looked up)."""
    key = auth_cache.session_key(secret)
    hit = auth_cache.recall(key)
    if hit is not None and isinstance(hit[1], AuthSession) and hit[1].expires_at >= utcnow():
        return hit[0], hit[1]
    user, row = service.user_from_session(db, secret=secret)
    auth_cache.remember(key, user, row)
    return user, row


def _token_user(db: Session, key: str, secret: str) -> tuple[User, ApiToken]:
    """The token's user and row, from the cache within its TTL."""
    hit = auth_cache.recall(key)
    if hit is not None and isinstance(hit[1], ApiToken):
        return hit[0], hit[1]
    user, token = service.user_from_token(db, secret=secret)
    auth_cache.remember(key, user, token)
    return user, token


CurrentUser = Annotated[User, Depends(current_user)]


def require_role(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets through only users with one of these global roles."""

    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise PermissionDenied(f"this needs the role {' or '.join(roles)}")
        return user

    return check


AdminUser = Annotated[User, Depends(require_role(Role.admin))]
EngineerUser = Annotated[User, Depends(require_role(Role.admin, Role.engineer))]
