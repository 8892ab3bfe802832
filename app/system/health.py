"""What the health endpoint reports about the broker, the workers and the object store.

The broker and the store are each asked at most once every ``CACHE_SECONDS`` per process: a
load balancer polling ``/api/health`` must not turn into a stream of round trips, and a Redis or
a bucket that does not answer costs its timeout once, not on every request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from kombu.connection import Connection
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.broker import broker_kind, get_celery
from app.jobs.models import WorkerNode
from app.settings import get_settings
from app.storage.objects import parse_s3_url, s3_client

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0
# A broker that does not answer in this long is reported as an error.
BROKER_TIMEOUT_SECONDS = 1.0
# Celery's ping waits this long for every worker's answer.
PING_TIMEOUT_SECONDS = 0.5
# An object store that does not connect, or answer a one-key listing, in this long is an error.
# The probe makes one attempt: the product's client retries with back-off (seconds), which a
# health check must not wait through.
STORE_CONNECT_TIMEOUT_SECONDS = 1.0
STORE_READ_TIMEOUT_SECONDS = 2.0


@dataclass
class _Probe:
    """The broker's state and the nodes that answered Celery's ping, as of ``at``."""

    at: float
    url: str
    state: str
    # Why the broker failed, as the driver said it (hosts, ports, paths): for admins alone.
    detail: str = ""
    pinged: list[str] = field(default_factory=list)


_lock = threading.Lock()
_last: _Probe | None = None


def live_workers(db: Session) -> list[dict[str, Any]]:
    """Workers whose heartbeat is recent, merged with those that answered Celery's ping."""
    settings = get_settings()
    cutoff = utcnow() - timedelta(seconds=settings.worker_dead_after_seconds)
    rows = db.scalars(
        select(WorkerNode).where(WorkerNode.last_seen >= cutoff).order_by(WorkerNode.name)
    )
    pinged = set(_probe().pinged)
    workers: list[dict[str, Any]] = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "concurrency": w.concurrency,
            "started_at": w.started_at.isoformat(),
            "last_seen": w.last_seen.isoformat(),
            "ping": w.name in pinged if broker_kind(settings.broker_url) == "redis" else None,
        }
        for w in rows
    ]
    known = {w["name"] for w in workers}
    # A worker that answers the broker but wrote no heartbeat (its database writes fail, say).
    workers.extend(
        {"name": name, "hostname": name.partition("@")[2], "last_seen": None, "ping": True}
        for name in sorted(pinged - known)
    )
    return workers


def broker_state(*, admin: bool = False) -> str:
    """Whether the broker answers: "ok", "ok (embedded)", "inline" or "error: <kind>".

    The driver's message names the broker's host and port (or a file's path): only an admin
    gets it; anyone else the kind of error alone (issue 17 #11).
    """
    probe = _probe()
    return f"{probe.state}: {probe.detail}" if admin and probe.detail else probe.state


def _probe() -> _Probe:
    """The cached broker check, refreshed when older than ``CACHE_SECONDS``."""
    global _last
    url = get_settings().broker_url
    with _lock:
        last = _last
        if last is not None and last.url == url and time.monotonic() - last.at < CACHE_SECONDS:
            return last
        state, detail = _broker_state()
        _last = probe = _Probe(at=time.monotonic(), url=url, state=state, detail=detail)
        if probe.state == "ok" and broker_kind(url) == "redis":
            probe.pinged = _ping_workers()
        return probe


def _broker_state() -> tuple[str, str]:
    """The broker's state, and what the driver said when it failed."""
    settings = get_settings()
    if settings.inline_jobs:
        return "inline", ""
    kind = broker_kind(settings.broker_url)
    if kind == "embedded":
        # A file in the data dir: it answers whenever the disk does.
        return "ok (embedded)", ""
    celery = get_celery()
    options = {
        **celery.conf.broker_transport_options,
        "socket_connect_timeout": BROKER_TIMEOUT_SECONDS,
        "socket_timeout": BROKER_TIMEOUT_SECONDS,
    }
    try:
        with Connection(
            celery.conf.broker_url,
            transport_options=options,
            connect_timeout=BROKER_TIMEOUT_SECONDS,
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            if kind == "redis":
                conn.default_channel.client.ping()
    except Exception as exc:
        log.warning("the broker does not answer: %s: %s", type(exc).__name__, exc)
        return f"error: {type(exc).__name__}", str(exc)[:300]
    return "ok", ""


def _ping_workers() -> list[str]:
    try:
        replies = get_celery().control.ping(timeout=PING_TIMEOUT_SECONDS)
    except Exception:
        return []
    return sorted(name for reply in replies for name in reply)


@dataclass
class _StoreProbe:
    """The object store's state as of ``at``; ``detail`` (the client's words) is for admins."""

    at: float
    where: tuple[str, str]  # the store's URL and endpoint
    state: str
    detail: str = ""


_store_lock = threading.Lock()
_store_last: _StoreProbe | None = None


def storage_state(*, admin: bool = False) -> str | None:
    """Whether the object store answers: "ok" or "error: <kind>"; None without a bucket.

    Checked as workers use it: a listing of one key under ``SVP_STORAGE_URL``'s prefix, which
    fails on an unreachable store, a missing bucket and refused credentials alike. As with the
    broker, the client's message (endpoint, bucket) is for an admin only; anyone else gets the
    kind of error.
    """
    settings = get_settings()
    url = settings.storage_url
    if not url:
        return None
    global _store_last
    where = (url, settings.s3_endpoint_url)
    with _store_lock:
        last = _store_last
        if last is None or last.where != where or time.monotonic() - last.at >= CACHE_SECONDS:
            state, detail = _store_state(url, settings.s3_endpoint_url or None)
            _store_last = last = _StoreProbe(time.monotonic(), where, state, detail)
    return f"{last.state}: {last.detail}" if admin and last.detail else last.state


@lru_cache(maxsize=4)
def _probe_client(endpoint_url: str | None) -> Any:
    """A client like the product's (``app.storage``), with one attempt and short timeouts."""
    import boto3
    from botocore.config import Config

    config = s3_client(endpoint_url).meta.config.merge(
        Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=STORE_CONNECT_TIMEOUT_SECONDS,
            read_timeout=STORE_READ_TIMEOUT_SECONDS,
        )
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _store_state(url: str, endpoint_url: str | None) -> tuple[str, str]:
    """List one key under the store's prefix; the state, and what the client said on failure."""
    bucket, prefix = parse_s3_url(url)
    prefix = prefix.strip("/")
    try:
        _probe_client(endpoint_url).list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
        )
    except Exception as exc:
        # A refusal's code (NoSuchBucket, AccessDenied) says more than botocore's class name.
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
        log.warning("the object store %s does not answer: %s", url, exc)
        return f"error: {code or type(exc).__name__}", str(exc)[:300]
    return "ok", ""
