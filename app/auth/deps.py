"""Request dependencies: who is calling, and may they."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.auth import service
from app.auth.models import Role, User
from app.db import SAFE_METHODS, get_db, unit_of_work
from app.errors import PermissionDenied, Unauthenticated

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
        user, token = service.user_from_token(db, secret=secret.strip())
        if service.token_use_is_stale(token):
            _note_token_use(request, db, token.id)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthenticated("sign in first")
        user, session_row = service.user_from_session(db, secret=cookie)
        request.state.session_id = session_row.id
        if request.method not in SAFE_METHODS:
            service.check_csrf(session_row, request.headers.get(CSRF_HEADER))
    request.state.user = user
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
