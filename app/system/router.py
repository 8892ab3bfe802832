"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.db import unit_of_work
from app.system import health

router = APIRouter(tags=["system"])


@router.get("/api/health")
def get_health() -> JSONResponse:
    """200 with the database, broker and worker state while the database answers; 503 if not."""
    try:
        with unit_of_work(write=False) as db:
            db.execute(text("SELECT 1"))
            workers = health.live_workers(db)
    except Exception as exc:
        return JSONResponse(
            status_code=503,
            content={
                "database": f"error: {type(exc).__name__}",
                "broker": "unknown",
                "workers": [],
            },
        )
    return JSONResponse(
        content={"database": "ok", "broker": health.broker_state(), "workers": workers}
    )


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
