"""Password hashing (argon2), and random secrets stored only as their keyed hash.

Session and API-token secrets are kept as HMAC-SHA256 under ``SVP_SECRET_KEY``. The secrets are
random, so a stolen table cannot be turned back into them either way; the key is what stops a
database *write* (a restored backup, an injected row) from becoming a sign-in: without the key,
no one can make the hash of a secret they know. Rotating the key ends every session and token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.settings import get_settings, secret_from_data_dir

_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown user as slow as one for a known user.
_DUMMY_HASH = _hasher.hash("not a real password")


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password in constant work whether or not the user exists."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_secret() -> str:
    """A random URL-safe secret with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a token or session secret: its SHA-256, keyed with HMAC.

    The secrets are random, so no slow hash is needed. The HMAC is taken over the hex SHA-256
    (what releases before the key stored), so migration 0004 could key the rows already stored
    without knowing their secrets.
    """
    return key_stored_hash(hashlib.sha256(secret.encode()).hexdigest())


def key_stored_hash(unkeyed: str, key: str | None = None) -> str:
    """HMAC-SHA256 of an unkeyed stored hash under ``key`` (default: the settings' secret key)."""
    secret_key = secret_key_in_use() if key is None else key
    return hmac.new(secret_key.encode(), unkeyed.encode(), hashlib.sha256).hexdigest()


def secret_key_in_use() -> str:
    """SVP_SECRET_KEY, or outside production the one made and kept in the data dir."""
    settings = get_settings()
    return settings.secret_key if settings.has_secret_key else _kept_key(settings.data_dir)


@lru_cache(maxsize=8)
def _kept_key(data_dir: Path) -> str:
    return secret_from_data_dir(data_dir)
