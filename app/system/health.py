"""What the health endpoint reports about the broker and the workers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import WorkerNode
from app.settings import get_settings


def live_workers(db: Session) -> list[dict[str, Any]]:
    """Workers whose heartbeat is recent."""
    settings = get_settings()
    cutoff = utcnow() - timedelta(seconds=settings.worker_dead_after_seconds)
    rows = db.scalars(select(WorkerNode).where(WorkerNode.last_seen >= cutoff))
    return [
        {"name": w.name, "hostname": w.hostname, "pid": w.pid, "last_seen": w.last_seen.isoformat()}
        for w in rows
    ]


def broker_state() -> str:
    """Whether the broker answers: "ok", "inline" or an error."""
    return "inline" if get_settings().inline_jobs else "unknown"
