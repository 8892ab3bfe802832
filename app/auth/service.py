"""Sign-in, sessions, API tokens and the login rate limit."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth.models import ApiToken, AuthSession, LoginAttempt, User
from app.db import utcnow
from app.errors import Conflict, NotFound, PermissionDenied, TooManyRequests, Unauthenticated
from app.security import hash_password, hash_secret, new_secret
from app.settings import get_settings

# Sign-in attempts are counted in fixed windows of this many seconds; a limit applies to the
# current window and the one before it together, so a burst cannot straddle a boundary for twice
# the limit, and a lockout lasts one to two windows.
LOGIN_WINDOW_SECONDS = 60


class LoginScope(StrEnum):
    """What a counter of sign-in attempts is kept for."""

    pair = "pair"  # one username from one address: password guessing
    address = "address"  # every username from one address: a spray of names


@dataclass(frozen=True)
class LoginLimits:
    """Attempts allowed per scope in a window (the current and the previous together)."""

    per_pair: int
    per_address: int

    def of(self, scope: LoginScope) -> int:
        """The limit of one scope."""
        return self.per_pair if scope == LoginScope.pair else self.per_address


@dataclass(frozen=True)
class LoginCandidate:
    """What the password is checked against, read before argon2 runs (outside any write)."""

    user_id: int | None
    password_hash: str | None


def _login_keys(username: str, address: str) -> dict[LoginScope, str]:
    # Hashed so the table never holds what people typed as a username (a password, often).
    pair = f"{username.lower()}\n{address}"
    return {
        LoginScope.pair: hashlib.sha256(pair.encode()).hexdigest(),
        LoginScope.address: hashlib.sha256(address.encode()).hexdigest(),
    }


def login_window(now: float | None = None) -> int:
    """The start of the current window, in seconds since the epoch."""
    t = time.time() if now is None else now
    return int(t // LOGIN_WINDOW_SECONDS) * LOGIN_WINDOW_SECONDS


def _attempts(db: Session, keys: dict[LoginScope, str], window: int) -> dict[LoginScope, int]:
    """Attempts per scope in this window and the one before."""
    counts = dict.fromkeys(keys, 0)
    rows = db.execute(
        select(LoginAttempt.scope, func.sum(LoginAttempt.count))
        .where(
            or_(*(and_(LoginAttempt.scope == s, LoginAttempt.key == k) for s, k in keys.items())),
            LoginAttempt.window_start >= window - LOGIN_WINDOW_SECONDS,
        )
        .group_by(LoginAttempt.scope)
    )
    for scope, total in rows:
        counts[LoginScope(scope)] = int(total or 0)
    return counts


def _too_many() -> TooManyRequests:
    return TooManyRequests("too many failed sign-ins; wait a minute or two and try again")


def login_candidate(
    db: Session, *, limits: LoginLimits, username: str, address: str
) -> LoginCandidate:
    """Read-only first step of a sign-in: refuse a locked-out caller, then find the user.

    A caller already over a limit is refused here, with no write and no argon2, so a flood of
    refused attempts costs a read each.
    """
    counts = _attempts(db, _login_keys(username, address), login_window())
    if any(counts[s] >= limits.of(s) for s in counts):
        raise _too_many()
    row = db.execute(select(User.id, User.password_hash).where(User.username == username)).first()
    if row is None:
        return LoginCandidate(user_id=None, password_hash=None)
    return LoginCandidate(user_id=row[0], password_hash=row[1])


def _bump(db: Session, *, scope: LoginScope, key: str, window: int) -> int:
    """Add one attempt to a window's counter; its new count (one atomic upsert)."""
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    stmt = (
        insert(LoginAttempt)
        .values(scope=scope.value, key=key, window_start=window, count=1)
        .on_conflict_do_update(
            index_elements=["scope", "key", "window_start"],
            set_={"count": LoginAttempt.count + 1},
        )
        .returning(LoginAttempt.count)
    )
    return int(db.execute(stmt).scalar_one())


def reserve_login_attempt(db: Session, *, limits: LoginLimits, username: str, address: str) -> int:
    """Count an attempt before its password is checked; its window, or raise TooManyRequests.

    Counting first makes the limit exact under concurrency: parallel attempts each take a place
    through the upsert's row lock, and the one past the limit raises, so the caller's unit of
    work rolls its increment back. A good password gives its place back (``login_succeeded``).
    """
    window = login_window()
    keys = _login_keys(username, address)
    for scope, key in keys.items():
        count = _bump(db, scope=scope, key=key, window=window)
        if count + _previous_only(db, scope=scope, key=key, window=window) > limits.of(scope):
            raise _too_many()
        if scope == LoginScope.address and count == 1:
            # A new window of an address: the moment to sweep windows nobody reads any more.
            _sweep(db, before=window - LOGIN_WINDOW_SECONDS)
    return window


def _previous_only(db: Session, *, scope: LoginScope, key: str, window: int) -> int:
    count = db.scalar(
        select(LoginAttempt.count).where(
            LoginAttempt.scope == scope.value,
            LoginAttempt.key == key,
            LoginAttempt.window_start == window - LOGIN_WINDOW_SECONDS,
        )
    )
    return int(count or 0)


# Rows one sweep deletes at most: a sweep is part of a sign-in, so its cost stays bounded.
SWEEP_BATCH = 1000


def _sweep(db: Session, *, before: int) -> None:
    """Delete counters of windows older than ``before`` that no limit reads any more.

    Rows another sweep holds are skipped (PostgreSQL), so two sign-ins sweeping at once neither
    wait for nor deadlock with each other; SQLite's writers take turns anyway.
    """
    stale = (
        select(LoginAttempt.scope, LoginAttempt.key, LoginAttempt.window_start)
        .where(LoginAttempt.window_start < before)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    db.execute(
        delete(LoginAttempt).where(
            tuple_(LoginAttempt.scope, LoginAttempt.key, LoginAttempt.window_start).in_(stale)
        )
    )


def login_succeeded(db: Session, *, username: str, address: str, window: int) -> None:
    """Forget the pair's failures, and give back the address's place this attempt took."""
    keys = _login_keys(username, address)
    db.execute(
        delete(LoginAttempt).where(
            LoginAttempt.scope == LoginScope.pair.value, LoginAttempt.key == keys[LoginScope.pair]
        )
    )
    db.execute(
        update(LoginAttempt)
        .where(
            LoginAttempt.scope == LoginScope.address.value,
            LoginAttempt.key == keys[LoginScope.address],
            LoginAttempt.window_start == window,
            LoginAttempt.count > 0,
        )
        .values(count=LoginAttempt.count - 1)
    )


@dataclass(frozen=True)
class NewSession:
    """A session just opened: the cookie secret and its CSRF token."""

    secret: str
    csrf_token: str
    user: User


def signed_in_user(db: Session, *, candidate: LoginCandidate) -> User:
    """The user whose password was just verified, if still active and not re-keyed meanwhile."""
    user = db.get(User, candidate.user_id) if candidate.user_id is not None else None
    if user is None or user.password_hash != candidate.password_hash:
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
    _end_oldest_sessions(db, user_id=user.id, keep=get_settings().sessions_per_user)
    return NewSession(secret=secret, csrf_token=csrf, user=user)


def _end_oldest_sessions(db: Session, *, user_id: int, keep: int) -> None:
    """End the user's sessions beyond the newest ``keep``: a script signing in in a loop
    would otherwise add a row per sign-in for a week (the session's life)."""
    beyond = db.execute(
        select(AuthSession.id, AuthSession.token_hash)
        .where(AuthSession.user_id == user_id)
        .order_by(AuthSession.id.desc())
        .offset(keep)
    ).all()
    if not beyond:
        return
    db.execute(delete(AuthSession).where(AuthSession.id.in_([row.id for row in beyond])))
    for row in beyond:
        auth_cache.forget(auth_cache.stored_session_key(row.token_hash), db=db)


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


def user_from_token(db: Session, *, secret: str) -> tuple[User, ApiToken]:
    """The active user behind a bearer token, and the token, or raise Unauthenticated."""
    # One indexed look-up: the token with its user.
    row = db.execute(
        select(User, ApiToken)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_secret(secret))
    ).first()
    if row is None:
        raise Unauthenticated("invalid API token")
    user, token = row
    if not user.active:
        raise Unauthenticated("this account is disabled")
    return user, token


# A token's last use is written at most this often: auth is on every request's path, and a
# write per request would put every token-authenticated read in SQLite's writer queue.
TOKEN_USE_RESOLUTION = timedelta(seconds=60)


def token_use_is_stale(token: ApiToken) -> bool:
    """Whether the token's ``last_used_at`` is unset or older than the resolution."""
    return token.last_used_at is None or token.last_used_at < utcnow() - TOKEN_USE_RESOLUTION


def note_token_use(db: Session, *, token_id: int) -> None:
    """Set the token's ``last_used_at`` unless another request did within the resolution."""
    now = utcnow()
    db.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(
                ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - TOKEN_USE_RESOLUTION
            ),
        )
        .values(last_used_at=now)
    )


def check_csrf(session_row: AuthSession, header_value: str | None) -> None:
    """A cookie-authenticated write must echo the session's CSRF token."""
    if not header_value or not hmac.compare_digest(header_value, session_row.csrf_token):
        raise PermissionDenied("missing or wrong X-CSRF-Token header")


def create_token(db: Session, *, user: User, name: str) -> tuple[ApiToken, str]:
    """Make an API token; the secret is returned once and stored hashed.

    409 past ``SVP_TOKENS_PER_USER``: unlike a session, a token is never ended for being old,
    so the caller chooses which to revoke. The user's row is locked, so two creates at once
    cannot both take the last place (SQLite's writer lock does the same there).
    """
    limit = get_settings().tokens_per_user
    db.execute(select(User.id).where(User.id == user.id).with_for_update())
    held = db.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id))
    if (held or 0) >= limit:
        raise Conflict(f"at most {limit} API tokens per user; revoke one you no longer use first")
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


def new_user(*, username: str, password: str, role: str) -> User:
    """A user row with the password hashed, not yet added to a session."""
    return User(username=username, password_hash=hash_password(password), role=role)


def create_user(db: Session, *, username: str, password: str, role: str) -> User:
    """Add a user; the caller has checked that the name is free."""
    user = new_user(username=username, password=password, role=role)
    db.add(user)
    db.flush()
    return user
