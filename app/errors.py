"""Domain errors raised by services; the HTTP layer alone maps them to status codes."""

from __future__ import annotations

import errno

# OS errors that mean "the disk (or the user's quota on it) is full".
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# PostgreSQL's SQLSTATE disk_full, and SQLite's message for SQLITE_FULL.
_PG_DISK_FULL = "53100"
_SQLITE_FULL = "database or disk is full"


class DomainError(Exception):
    """Base of the errors a service raises on purpose; ``detail`` is shown to the caller."""

    status_code = 400

    def __init__(self, detail: object = None) -> None:
        super().__init__(detail)
        self.detail = detail if detail is not None else self.__class__.__doc__


class Unauthenticated(DomainError):
    """Sign in first."""

    status_code = 401


class PermissionDenied(DomainError):
    """You do not have the right to do this."""

    status_code = 403


class NotFound(DomainError):
    """Not found."""

    status_code = 404


class Conflict(DomainError):
    """The request conflicts with the current state."""

    status_code = 409


class TooLarge(DomainError):
    """The upload is larger than the server accepts."""

    status_code = 413


class Invalid(DomainError):
    """The request is well-formed but its content is not acceptable."""

    status_code = 422


class TooManyRequests(DomainError):
    """Too many attempts; wait and try again."""

    status_code = 429


class Unavailable(DomainError):
    """Something the request needs (the object store) did not answer; trying later may work."""

    status_code = 503


class InsufficientStorage(DomainError):
    """The server's disk is full: nothing was stored; try again once an operator freed space."""

    status_code = 507


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error, or the driver error it wraps, says the disk is full.

    An ``OSError`` with ENOSPC or EDQUOT (a write to the data dir), PostgreSQL's ``disk_full``
    or SQLite's "database or disk is full": all mean the same to a caller, a 507, never a 500
    nor a 503 that invites a retry which cannot succeed (issue 17 #12).
    """
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if getattr(err, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if err is not None and _SQLITE_FULL in str(err):
            return True
    return False
