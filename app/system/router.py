"""Health and metrics."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from app import metrics as server_metrics
from app.auth.deps import current_user
from app.auth.models import Role
from app.db import unit_of_work
from app.embeddings.service import backbone_errors
from app.errors import DomainError, PermissionDenied
from app.settings import get_settings
from app.system import health

router = APIRouter(tags=["system"])


def _is_admin(request: Request, db: Session) -> bool:
    """Whether the caller is a signed-in admin; anyone else (anonymous included) is not."""
    try:
        return current_user(request, db).role == Role.admin
    except DomainError:
        return False


@router.get(
    "/api/health",
    responses={503: {"description": "the database does not answer; the same fields, with why"}},
)
def get_health(request: Request) -> JSONResponse:
    """200 with the database, broker and worker state while the database answers; 503 if not.

    With ``SVP_STORAGE_URL`` set, ``storage`` says whether the object store answers (a failing
    store does not change the status code: only the database does).

    Anyone may ask (a load balancer does, unauthenticated); only an admin sees which workers
    run where (names, host names, PIDs): others get each live worker's liveness alone, and the
    count, so the service's layout is not handed to the network. An admin also sees
    ``backbones``: each of ``SVP_BACKBONES`` that cannot work, with why ({} when all can).
    """
    try:
        with unit_of_work(write=False) as db:
            db.execute(text("SELECT 1"))
            workers = health.live_workers(db)
            admin = _is_admin(request, db)
            if not admin:
                workers = [{"last_seen": w["last_seen"], "ping": w["ping"]} for w in workers]
    except Exception as exc:
        return JSONResponse(
            status_code=503,
            content={
                "database": f"error: {type(exc).__name__}",
                "broker": "unknown",
                "workers": [],
                "worker_count": 0,
                **({"storage": "unknown"} if get_settings().storage_url else {}),
            },
        )
    storage = health.storage_state(admin=admin)
    return JSONResponse(
        content={
            "database": "ok",
            "broker": health.broker_state(admin=admin),
            "workers": workers,
            "worker_count": len(workers),
            # With SVP_STORAGE_URL: whether the bucket answers. Reported, never the status code:
            # the server still serves labels and queues without it (DESIGN 5).
            **({"storage": storage} if storage is not None else {}),
            # Admins only: the reasons name files on the server.
            **({"backbones": backbone_errors()} if admin else {}),
        }
    )


def _is_metrics_scraper(request: Request) -> bool:
    """Whether the request carries ``SVP_METRICS_TOKEN`` as its bearer token."""
    expected = get_settings().metrics_token
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return bool(
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.strip().encode(), expected.encode())
    )


def _from_this_host(request: Request) -> bool:
    """Whether the caller is on this host (loopback), after trusted proxies' forwarding."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text: for anyone on this host (DESIGN section 5), a scraper elsewhere with
    ``SVP_METRICS_TOKEN``, or a signed-in admin; never for any client on the network."""
    if not (_from_this_host(request) or _is_metrics_scraper(request)):
        with unit_of_work(write=False) as db:
            if current_user(request, db).role != Role.admin:
                raise PermissionDenied("metrics are for admins and the SVP_METRICS_TOKEN bearer")
    body, media_type = server_metrics.exposition()
    return Response(body, media_type=media_type)
