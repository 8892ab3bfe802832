"""Domain errors raised by services; the HTTP layer alone maps them to status codes."""

from __future__ import annotations


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
