"""Request dependencies: who is calling, and may they."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth import service
from app.auth.models import AuthSession, Role, User
from app.db import SAFE_METHODS, get_db, utcnow
from app.errors import PermissionDenied, Unauthenticated
from app.security import hash_secret

SESSION_COOKIE = "svp_session"
CSRF_HEADER = "X-CSRF-Token"

# scope="function": the unit of work commits when the route function returns, before the response
# is sent. With FastAPI's default ("request") the commit ran after the client had its answer: a
# 201 could precede a failed commit, and a client's next request could miss what it just wrote.
DB = Annotated[Session, Depends(get_db, scope="function")]


def current_user(request: Request, db: DB) -> User:
    """Authenticate by bearer token or session cookie; cookie writes must carry the CSRF token."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        user = _token_user(db, secret.strip())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthenticated("sign in first")
        user, session_row = _session_user(db, cookie)
        if request.method not in SAFE_METHODS:
            service.check_csrf(session_row, request.headers.get(CSRF_HEADER))
    request.state.user = user
    return user


def _session_user(db: Session, secret: str) -> tuple[User, AuthSession]:
    """The session's user, from the cache within its TTL (an expired session is looked up)."""
    key = auth_cache.session_key(secret)
    hit = auth_cache.recall(key)
    if hit is not None and hit[1] is not None and hit[1].expires_at >= utcnow():
        return hit[0], hit[1]
    user, row = service.user_from_session(db, secret=secret)
    auth_cache.remember(key, user, row)
    return user, row


def _token_user(db: Session, secret: str) -> User:
    """The token's user, from the cache within its TTL."""
    key = auth_cache.token_key(hash_secret(secret))
    hit = auth_cache.recall(key)
    if hit is not None:
        return hit[0]
    user = service.user_from_token(db, secret=secret)
    auth_cache.remember(key, user)
    return user


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
