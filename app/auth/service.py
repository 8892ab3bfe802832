"""Sign-in, sessions, API tokens and the login rate limit."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth.models import ApiToken, AuthSession, User
from app.db import utcnow
from app.errors import NotFound, PermissionDenied, TooManyRequests, Unauthenticated
from app.security import hash_password, hash_secret, new_secret, verify_password


class LoginLimiter:
    """A sliding one-minute window of failed attempts per (username, address), in this process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, username: str, address: str) -> None:
        """Raise when this pair has failed too often in the last minute."""
        with self._lock:
            window = self._window(username, address)
            if len(window) >= self.per_minute:
                raise TooManyRequests("too many failed sign-ins; wait a minute and try again")

    def failed(self, username: str, address: str) -> None:
        """Count one failed attempt."""
        with self._lock:
            self._window(username, address).append(time.monotonic())

    def succeeded(self, username: str, address: str) -> None:
        """Forget the pair's failures after a good sign-in."""
        with self._lock:
            self._attempts.pop((username.lower(), address), None)

    def _window(self, username: str, address: str) -> deque[float]:
        window = self._attempts.setdefault((username.lower(), address), deque())
        cutoff = time.monotonic() - 60
        while window and window[0] < cutoff:
            window.popleft()
        return window


@dataclass(frozen=True)
class NewSession:
    """A session just opened: the cookie secret and its CSRF token."""

    secret: str
    csrf_token: str
    user: User


def authenticate(db: Session, *, username: str, password: str) -> User:
    """Return the active user with these credentials, or raise Unauthenticated."""
    user = db.scalar(select(User).where(User.username == username))
    if not verify_password(user.password_hash if user else None, password) or user is None:
        raise Unauthenticated("wrong username or password")
    if not user.active:
        raise Unauthenticated("this account is disabled")
    return user


def open_session(db: Session, *, user: User, hours: int) -> NewSession:
    """Store a new cookie session for the user; only the secret's hash is kept."""
    secret, csrf = new_secret(), new_secret()
    now = utcnow()
    # Expired sessions of this user are swept here, off every hot path.
    db.execute(
        delete(AuthSession).where(AuthSession.user_id == user.id, AuthSession.expires_at < now)
    )
    db.add(
        AuthSession(
            user_id=user.id,
            token_hash=hash_secret(secret),
            csrf_token=csrf,
            expires_at=now + timedelta(hours=hours),
        )
    )
    db.flush()
    return NewSession(secret=secret, csrf_token=csrf, user=user)


def close_session(db: Session, *, secret: str) -> None:
    """End the cookie session with this secret, if any."""
    db.execute(delete(AuthSession).where(AuthSession.token_hash == hash_secret(secret)))
    auth_cache.forget(auth_cache.session_key(secret), db=db)


def user_from_session(db: Session, *, secret: str) -> tuple[User, AuthSession]:
    """The active user behind a session cookie, or raise Unauthenticated."""
    # One indexed look-up: the session with its user.
    found = db.execute(
        select(AuthSession, User)
        .join(User, User.id == AuthSession.user_id)
        .where(AuthSession.token_hash == hash_secret(secret))
    ).first()
    if found is None or found[0].expires_at < utcnow():
        raise Unauthenticated("your session has ended; sign in again")
    row, user = found
    if not user.active:
        raise Unauthenticated("this account is disabled")
    return user, row


def user_from_token(db: Session, *, secret: str) -> User:
    """The active user behind a bearer token, or raise Unauthenticated."""
    # One indexed look-up: the token's user.
    user = db.scalar(
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_secret(secret))
    )
    if user is None:
        raise Unauthenticated("invalid API token")
    if not user.active:
        raise Unauthenticated("this account is disabled")
    return user


def check_csrf(session_row: AuthSession, header_value: str | None) -> None:
    """A cookie-authenticated write must echo the session's CSRF token."""
    if not header_value or not hmac.compare_digest(header_value, session_row.csrf_token):
        raise PermissionDenied("missing or wrong X-CSRF-Token header")


def create_token(db: Session, *, user: User, name: str) -> tuple[ApiToken, str]:
    """Make an API token; the secret is returned once and stored hashed."""
    secret = "svp_" + new_secret()
    token = ApiToken(user_id=user.id, name=name, token_hash=hash_secret(secret))
    db.add(token)
    db.flush()
    return token, secret


def list_tokens(db: Session, *, user: User) -> list[ApiToken]:
    """The user's API tokens, newest first."""
    return list(
        db.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc()))
    )


def revoke_token(db: Session, *, user: User, token_id: int) -> None:
    """Delete one of the user's own tokens."""
    token = db.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound("no such token")
    db.delete(token)
    auth_cache.forget(auth_cache.token_key(token.token_hash), db=db)


def create_user(db: Session, *, username: str, password: str, role: str) -> User:
    """Add a user; the caller has checked that the name is free."""
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    db.flush()
    return user
