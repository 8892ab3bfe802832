"""HTTP-level guards that hold for every route: body size, error shapes that echo nothing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# DESIGN 5: a JSON body larger than this gets 413, before it is parsed.
MAX_BODY_BYTES = 1024 * 1024
# The one route that takes large bodies streams them to disk itself, under SVP_MAX_UPLOAD_MB.
_UPLOAD_PATH = re.compile(r"^/api/projects/[^/]+/items/?$")
# A validation message is the library's or ours; long ones are cut, so none can carry the input.
MAX_MESSAGE_CHARS = 300
MAX_LOC_CHARS = 64
# At most this many reasons in one 422: 3,000 unknown fields made a 6 MB answer (issue 17 #13).
MAX_ERRORS = 20


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes an HTTPException through its body parsing."""

    def __init__(self) -> None:
        super().__init__(
            status_code=413,
            detail=f"the request body is larger than the server accepts ({MAX_BODY_BYTES} bytes)",
        )


def _too_large_response() -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": _BodyTooLarge().detail})


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``MAX_BODY_BYTES``, uploads excepted.

    A declared Content-Length over the limit is refused before a byte is read; a body without
    one (chunked) is counted as it streams and refused as soon as it passes the limit, so the
    server never holds more than the limit of it. Pure ASGI rather than ``@app.middleware``:
    the latter buffers nothing but cannot replace ``receive`` for the app it wraps.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] == "POST" and _UPLOAD_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _too_large_response()(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            # Raised where no exception handler saw it (a route that reads the stream itself).
            if started:
                raise
            await _too_large_response()(scope, receive, send)


class FieldError(BaseModel):
    """One reason a request was refused: where (``loc``), what kind, and a message."""

    type: str | None
    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"detail": ...}``, a message, or the list of what failed validation."""

    detail: str | list[FieldError]


_ERROR_DESCRIPTIONS = {
    400: "the body cannot be read (JSON that is not UTF-8 text)",
    401: "no valid session cookie or bearer token",
    403: "signed in, without the right (or a cookie write without its CSRF token)",
    404: "no such object, or one in a project the caller cannot see",
    409: "the request conflicts with the current state",
    413: "the request body is larger than the server accepts",
    422: "the request is malformed, or its content is not acceptable",
    429: "too many attempts; wait and try again",
    507: "the server's disk is full; nothing was stored",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the ``{"detail"}`` body."""
    return {code: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}


# What any route of the API may answer: declared once for every router (DESIGN 5), so the schema
# lists the statuses a client must handle. A route adds the ones only it gives (409, 429).
API_ERRORS = error_responses(400, 401, 403, 404, 413, 422)


def _clean_error(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error without the input it was given, nor ``ctx`` values drawn from it."""
    message = str(error.get("msg", ""))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    # A location names a field, or a key of the input itself (an unknown setting): cut too.
    loc = [
        part[:MAX_LOC_CHARS] + "..."
        if isinstance(part, str) and len(part) > MAX_LOC_CHARS
        else part
        for part in error.get("loc", ())
    ]
    return {"type": error.get("type"), "loc": loc, "msg": message}


def clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """The first ``MAX_ERRORS`` validation errors cleaned, and a count of the rest."""
    cleaned = [_clean_error(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        rest = len(errors) - MAX_ERRORS
        cleaned.append({"type": "too_many_errors", "loc": [], "msg": f"and {rest} more"})
    return cleaned


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with where and why, never the input: 5 MB in must not mean 5 MB out (issue 9)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": clean_errors(exc.errors())})


def _query_names(dependant: Any) -> frozenset[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


_route_query_names: dict[int, frozenset[str]] = {}


async def refuse_unknown_query(request: Request) -> None:
    """Dependency of every route: a query parameter the route does not take is a 422.

    FastAPI drops unknown ones, so ``GET /api/jobs?statu=failed`` listed every job (a typo
    read as "no filter"); refused, it says which name it did not know (issue 17 #5).
    """
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _route_query_names.get(id(route))
    if known is None:
        known = _route_query_names.setdefault(id(route), _query_names(dependant))
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in known]
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Unknown parameter"}
                for name in unknown
            ]
        )


# The front end needs no build and runs no inline code: its scripts are modules from /js and
# /vendor, its styles files or CSSOM properties set from those scripts (allowed without
# 'unsafe-inline'); images are the API's own (and the empty data: favicon).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every answer, errors included.

    A header the route set itself is kept (none does today).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One policy for every page, /docs included: Swagger UI from /vendor, started by
        # /js/docs.js, sets its styles through the CSSOM (tests/test_browser.py checks).
        csp = CONTENT_SECURITY_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"content-security-policy", csp.encode()),
                    *_SECURITY_HEADERS,
                ):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>SVP Label API</title>
  <link rel="stylesheet" href="/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/js/docs.js"></script>
</body>
</html>
"""
