"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import metrics
from app.auth.models import Role, User
from app.auth.service import create_user
from app.db import unit_of_work
from app.embeddings.service import backbone_errors
from app.errors import DomainError, InsufficientStorage, is_disk_full
from app.http import (
    API_ERRORS,
    DOCS_HTML,
    BodyLimit,
    SecurityHeaders,
    refuse_unknown_query,
    validation_error,
)
from app.items.import_jobs import run_import_job
from app.jobs.models import JobKind
from app.jobs.runtime import register_runner
from app.routers import OPEN_ROUTERS, ROUTERS
from app.settings import get_settings
from app.visibility import ViewerScope

log = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
# The answer while the database cannot be reached, and when to try again.
DATABASE_UNAVAILABLE = "the database is unavailable right now; try again in a few seconds"
DATABASE_RETRY_AFTER_SECONDS = 2
# The answer to a write a constraint refused because of another request's change.
CONCURRENT_CHANGE = (
    "this conflicts with a change made at the same moment by another request; reload and try again"
)


def ensure_first_admin() -> None:
    """Create the admin named by SVP_ADMIN_USERNAME/SVP_ADMIN_PASSWORD when no user exists."""
    settings = get_settings()
    if not (settings.admin_username and settings.admin_password):
        return
    try:
        with unit_of_work() as db:
            if db.scalar(select(User.id).limit(1)) is None:
                create_user(
                    db,
                    username=settings.admin_username,
                    password=settings.admin_password,
                    role=Role.admin,
                )
                log.info("created the first admin %s", settings.admin_username)
    except IntegrityError:
        # Several server processes starting at once on an empty database: one of them made it.
        log.info("the first admin was created by another server process")


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id: its function's name, as generated clients name methods.

    FastAPI's default adds the path and method (``create_project_api_projects_post``), so a
    client's methods would change with any path; tests/test_openapi.py holds these unique.
    """
    return route.name


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up: the first admin, and a log line for each user backbone that cannot work."""
    ensure_first_admin()
    for name, reason in backbone_errors().items():
        log.error("backbone %s is unusable (the others work): %s", name, reason)
    yield


async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
    """409 for a write a constraint refused: a row made or removed at the same moment."""
    # The checks before the write could not see another request's change (a double-click, a
    # retry). The unit of work has rolled back and returned its connection clean; the
    # constraint's values are not echoed.
    log.warning(
        "%s %s: refused by a constraint: %s",
        request.method,
        request.url.path,
        getattr(exc, "orig", None) or exc,
    )
    return JSONResponse(status_code=409, content={"detail": CONCURRENT_CHANGE})


def _disk_full(request: Request, exc: Exception) -> JSONResponse:
    """507: the disk is full."""
    # What was being written is gone with its unit of work (an upload's spool is deleted by the
    # receiver); the path is logged, never shown.
    log.error("%s %s: the disk is full: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=507, content={"detail": InsufficientStorage().detail})


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    """507 for a write that met a full disk; any other OS error stays a 500."""
    if is_disk_full(exc):
        return _disk_full(request, exc)
    raise exc


def create_app() -> FastAPI:
    """Build the application with every router."""
    get_settings()  # bad settings fail here, at start, not on the first request
    # The only runner the server's own pool may run (SVP_INLINE_JOBS): imports need no torch.
    register_runner(JobKind.import_, run_import_job)
    app = FastAPI(
        title="SVP Label",
        version="0.1.0",
        description="Image labelling with active learning by selection via proxy.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # FastAPI's own pages load Swagger UI and ReDoc from a CDN, with an inline script: /docs
        # is served below from the vendored copy instead; ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
    )

    app.add_exception_handler(RequestValidationError, validation_error)
    # Added first, so the innermost: its ``receive`` is the one the routes read, and the 413 it
    # raises reaches FastAPI as itself, not wrapped in the task group of a middleware above.
    app.add_middleware(BodyLimit)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # A net under the typed ids and NUL-free bodies: a value the database cannot hold is
        # the caller's error, never a 500. The input is not echoed.
        log.warning(
            "%s %s: value refused by the database: %s", request.method, request.url.path, exc.orig
        )
        return JSONResponse(
            status_code=422, content={"detail": "a value is out of range or not storable text"}
        )

    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(OSError, _os_error)

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database is down, restarting or out of connections: a state that passes, not a
        # bug, so 503 with Retry-After (a client retries, its label key keeps that safe), not
        # 500. Failed connections are invalidated and idle ones pinged (app.db.make_engine), so
        # the pool reconnects once it is back: no restart needed (#9 item 1).
        if is_disk_full(exc):
            return _disk_full(request, exc)
        log.warning(
            "%s %s: database unavailable: %s",
            request.method,
            request.url.path,
            getattr(exc, "orig", None) or exc,
        )
        return JSONResponse(
            status_code=503,
            content={"detail": DATABASE_UNAVAILABLE},
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, _database_unavailable)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})

    app.add_middleware(metrics.RequestMetrics)
    # Who is asking, for the shapes that show worker identities to admins alone.
    app.add_middleware(ViewerScope)

    @app.get("/docs", include_in_schema=False)
    def _docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML)

    # Outermost of ours, so every answer carries them, a 413 or 422 too (only a 500 rendered by
    # Starlette's own error middleware, outside every other, goes without).
    app.add_middleware(SecurityHeaders)

    strict_query = [Depends(refuse_unknown_query)]
    for router in ROUTERS:
        app.include_router(router, responses=API_ERRORS, dependencies=strict_query)
    for router in OPEN_ROUTERS:
        app.include_router(router, dependencies=strict_query)

    if FRONTEND_DIR.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    return app
