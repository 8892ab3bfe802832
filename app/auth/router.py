"""Sign-in, sign-out, the caller, and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

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
from app.errors import Unauthenticated
from app.fields import PathId
from app.http import error_responses
from app.settings import get_settings

router = APIRouter(prefix="/api", tags=["auth"])


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/auth/login", responses=error_responses(429))
def login(body: LoginRequest, request: Request, response: Response, db: DB) -> LoginResponse:
    """Check credentials and set the session cookie; failures are rate-limited."""
    settings = get_settings()
    limiter: service.LoginLimiter = request.app.state.login_limiter
    address = _client_address(request)
    limiter.check(body.username, address)
    try:
        user = service.authenticate(db, username=body.username, password=body.password)
    except Unauthenticated:
        limiter.failed(body.username, address)
        raise
    limiter.succeeded(body.username, address)
    opened = service.open_session(db, user=user, hours=settings.session_hours)
    response.set_cookie(
        SESSION_COOKIE,
        opened.secret,
        max_age=settings.session_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return LoginResponse(user=UserRead.model_validate(user), csrf_token=opened.csrf_token)


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


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
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
