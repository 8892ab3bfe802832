"""A few seconds' memory of resolved credentials, so a busy client is not looked up per request.

Keyed by the secret's stored hash (never the secret), bounded (LRU) and short-lived (TTL).
Revocation is immediate in the process that revokes (logout, token revocation and user changes
call ``forget``/``forget_user``) and bounded by the TTL in the others (``serve --workers N``).

A look-up that read the database before a revocation committed must not be remembered after
the revocation cleared the cache: it would bring the revoked credential back for a TTL. Every
``forget`` counts a generation; a reader notes the generation before its read
(``generation()``) and ``remember`` keeps nothing when a forget came in between.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session, make_transient_to_detached

from app.auth.models import ApiToken, AuthSession, User
from app.security import hash_secret

# How stale another process's view of a revoked session, token or user change may be.
TTL_SECONDS = 5.0
# Entries kept: a few per active client; a flood of distinct bad secrets only evicts.
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class _Entry:
    user_id: int
    username: str
    password_hash: str
    role: str
    active: bool
    created_at: datetime
    credential_id: int  # the session's or the token's row
    csrf_token: str | None  # sessions only
    expires_at: datetime | None  # sessions only
    last_used_at: datetime | None  # tokens only
    stored_at: float


_entries: OrderedDict[str, _Entry] = OrderedDict()
_lock = threading.Lock()
# Counts every forget: a rare event (logout, revocation, a user changed), so one counter for all
# keys costs at most a second look-up to the few reads that overlapped one.
_generation = 0


def generation() -> int:
    """The count of forgets so far; note it before reading a credential from the database."""
    with _lock:
        return _generation


def remember(
    key: str, user: User, credential: AuthSession | ApiToken, *, read_at: int | None = None
) -> None:
    """Keep what a credential resolved to: a user, and the session or token row.

    ``read_at`` is ``generation()`` from before the database read: if anything was forgotten
    since, the read may predate a revocation, and nothing is kept.
    """
    session = credential if isinstance(credential, AuthSession) else None
    entry = _Entry(
        user_id=user.id,
        username=user.username,
        password_hash=user.password_hash,
        role=user.role,
        active=user.active,
        created_at=user.created_at,
        credential_id=credential.id,
        csrf_token=session.csrf_token if session is not None else None,
        expires_at=session.expires_at if session is not None else None,
        last_used_at=credential.last_used_at if isinstance(credential, ApiToken) else None,
        stored_at=time.monotonic(),
    )
    with _lock:
        if read_at is not None and read_at != _generation:
            return
        _entries[key] = entry
        _entries.move_to_end(key)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def recall(key: str) -> tuple[User, AuthSession | ApiToken] | None:
    """The user and the session or token a credential resolved to within the TTL, as fresh
    objects (the row carries only what authentication reads: id, CSRF token, expiry, last use)."""
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry.stored_at > TTL_SECONDS:
            del _entries[key]
            return None
        _entries.move_to_end(key)
    # Each request gets its own objects: detached copies, never one shared between threads.
    user = User(
        id=entry.user_id,
        username=entry.username,
        password_hash=entry.password_hash,
        role=entry.role,
        active=entry.active,
        created_at=entry.created_at,
    )
    make_transient_to_detached(user)
    credential: AuthSession | ApiToken
    if entry.expires_at is not None and entry.csrf_token is not None:
        credential = AuthSession(
            id=entry.credential_id,
            user_id=entry.user_id,
            csrf_token=entry.csrf_token,
            expires_at=entry.expires_at,
        )
    else:
        credential = ApiToken(
            id=entry.credential_id, user_id=entry.user_id, last_used_at=entry.last_used_at
        )
    return user, credential


def note_used(key: str, at: datetime) -> None:
    """Record that a token's last use was written, so hits within a minute do not write again."""
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries[key] = replace(entry, last_used_at=at)


def forget(key: str, *, db: Session | None = None) -> None:
    """Drop one credential (logout, token revocation), now and once ``db`` commits."""
    global _generation
    with _lock:
        _generation += 1
        _entries.pop(key, None)
    if db is not None:
        # A request resolving the credential before the commit would remember the old state.
        event.listen(db, "after_commit", lambda _s: forget(key), once=True)


def forget_user(user_id: int, *, db: Session | None = None) -> None:
    """Drop every credential of a user (role, activity or password changed), and on commit."""
    global _generation
    with _lock:
        _generation += 1
        for key in [k for k, e in _entries.items() if e.user_id == user_id]:
            del _entries[key]
    if db is not None:
        event.listen(db, "after_commit", lambda _s: forget_user(user_id), once=True)


def session_key(secret: str) -> str:
    """The cache key of a session cookie's secret."""
    return stored_session_key(hash_secret(secret))


def stored_session_key(token_hash: str) -> str:
    """The cache key of a session, by its stored hash."""
    return "session:" + token_hash


def token_key(token_hash: str) -> str:
    """The cache key of an API token, by its stored hash."""
    return "token:" + token_hash


def clear() -> None:
    """Drop everything (tests)."""
    with _lock:
        _entries.clear()
