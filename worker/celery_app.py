"""The Celery app, configured from ``app.settings``; light enough for the server to import.

The server imports this module to send jobs, so it must never import torch or the runners:
tasks live in ``worker.tasks`` (imported by the worker alone) and runners are resolved there
lazily, by kind. ``celery -A worker.celery_app worker`` works too: ``app`` is resolved on access.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu import Exchange, Queue

from app.settings import Settings, get_settings

TASK_NAME = "svp.run_job"
# A request to help a running job with its embedding chunks (worker/embed.py).
EMBED_HELP_TASK_NAME = "svp.embed_help"
QUEUE_DEFAULT = "default"
QUEUE_ROUNDS = "rounds"
QUEUES = (QUEUE_DEFAULT, QUEUE_ROUNDS)

# Imports and exports are I/O-bound and short; rounds hold a CPU for minutes, so they get their
# own queue and a deployment can give them their own workers.
KIND_QUEUES = {
    "import": QUEUE_DEFAULT,
    "export": QUEUE_DEFAULT,
    "round": QUEUE_ROUNDS,
    "coreset": QUEUE_ROUNDS,
    "evaluate": QUEUE_ROUNDS,
    "embed": QUEUE_ROUNDS,
}

# (soft, hard) seconds per kind. The soft limit raises inside the runner, so the job fails with
# a reason; the hard limit kills the process, and the reconciler sees its heartbeat stop.
TIME_LIMITS: dict[str, tuple[int, int]] = {
    "import": (3 * 3600, 3 * 3600 + 300),
    "export": (3600, 3600 + 300),
    "round": (4 * 3600, 4 * 3600 + 300),
    "coreset": (4 * 3600, 4 * 3600 + 300),
    "evaluate": (2 * 3600, 2 * 3600 + 300),
    "embed": (4 * 3600, 4 * 3600 + 300),
}
DEFAULT_TIME_LIMITS = (3600, 3600 + 300)

# Redis hands an unacknowledged message to another worker after this long. It must exceed the
# longest hard limit, or a long round would be run twice while its first run is still healthy.
VISIBILITY_TIMEOUT = 6 * 3600
assert max(hard for _, hard in TIME_LIMITS.values()) < VISIBILITY_TIMEOUT

# SQLite busy timeout of the embedded broker: the server and workers poll the same file.
EMBEDDED_BROKER_BUSY_SECONDS = 30


def broker_kind(url: str) -> str:
    """``redis``, ``embedded`` (kombu's SQLAlchemy transport) or ``other``."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme.startswith(("sqla+", "sqlalchemy+")):
        return "embedded"
    return "other"


def queue_for(kind: str) -> str:
    """The queue a job of this kind is sent to."""
    return KIND_QUEUES.get(kind, QUEUE_DEFAULT)


def time_limits_for(kind: str) -> tuple[int, int]:
    """The (soft, hard) time limits of a job of this kind, in seconds."""
    return TIME_LIMITS.get(kind, DEFAULT_TIME_LIMITS)


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings."""
    url = settings.broker_url
    kind = broker_kind(url)
    transport_options: dict[str, Any] = {}
    if kind == "redis":
        url, prefix = _split_key_prefix(url)
        transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
        if prefix:
            transport_options["global_keyprefix"] = prefix
    elif kind == "embedded":
        # Every option of this transport goes to create_engine, so only engine options here.
        transport_options = {"connect_args": {"timeout": EMBEDDED_BROKER_BUSY_SECONDS}}
        _ensure_sqlite_dir(url)
    app = Celery("svp", broker=url, include=["worker.tasks"], set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Status and progress live in the job's row; the broker carries only the job id.
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=QUEUE_DEFAULT,
        # Each queue its own exchange and key: Celery would otherwise bind every queue to the
        # default exchange and key, and a job sent to one queue would land in both.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_soft_time_limit=DEFAULT_TIME_LIMITS[0],
        task_time_limit=DEFAULT_TIME_LIMITS[1],
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        # The embedded broker has no fanout across processes: remote control needs Redis.
        worker_enable_remote_control=kind == "redis",
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app


def _split_key_prefix(url: str) -> tuple[str, str]:
    """Take ``global_keyprefix`` out of a Redis URL's query (kombu reads it only as an option).

    Several deployments, or test runs, can then share one Redis without taking each other's jobs.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in query if k == "global_keyprefix")
    rest = urlencode([(k, v) for k, v in query if k != "global_keyprefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _ensure_sqlite_dir(url: str) -> None:
    # kombu creates its tables on first use but not the directory of the SQLite file.
    _, _, rest = url.partition(":///")
    if rest and rest != ":memory:":
        Path(rest.split("?", 1)[0]).expanduser().parent.mkdir(parents=True, exist_ok=True)


_APPS: dict[str, Celery] = {}


def get_celery() -> Celery:
    """The Celery app for the current settings' broker (one per broker URL per process)."""
    settings = get_settings()
    celery = _APPS.get(settings.broker_url)
    if celery is None:
        celery = _APPS[settings.broker_url] = make_celery(settings)
    return celery


def send_job(job_id: int, kind: str) -> None:
    """Send a committed job's id to its queue, with its kind's time limits."""
    soft, hard = time_limits_for(kind)
    get_celery().send_task(
        TASK_NAME,
        args=[job_id],
        queue=queue_for(kind),
        soft_time_limit=soft,
        time_limit=hard,
    )


def send_embed_help(job_id: int, backbone: str, image_size: int, *, count: int) -> None:
    """Ask up to ``count`` other workers to take chunks of a job's embedding work."""
    soft, hard = time_limits_for("embed")
    celery = get_celery()
    for _ in range(count):
        celery.send_task(
            EMBED_HELP_TASK_NAME,
            args=[job_id, backbone, image_size],
            queue=QUEUE_ROUNDS,
            soft_time_limit=soft,
            time_limit=hard,
        )


def default_node_name() -> str:
    """A node name unique on this host, so several workers can share a machine."""
    return f"svp-{os.getpid()}@{socket.gethostname()}"


def run_worker(
    *,
    concurrency: int = 1,
    queues: list[str] | None = None,
    name: str | None = None,
    pool: str = "prefork",
    loglevel: str | None = None,
    events: bool = False,
) -> None:
    """Run one Celery worker in this process until it is stopped."""
    settings = get_settings()
    celery = get_celery()
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues or QUEUES)}",
        f"--hostname={name or default_node_name()}",
        f"--pool={pool}",
        f"--loglevel={(loglevel or settings.log_level).upper()}",
        # Gossip and mingle only add chatter and start-up delay; nothing here needs them.
        "--without-gossip",
        "--without-mingle",
    ]
    if events:
        argv.append("--task-events")
    celery.worker_main(argv)


def __getattr__(name: str) -> Celery:
    # ``celery -A worker.celery_app`` looks up ``app``; building it lazily keeps imports cheap.
    if name in ("app", "celery"):
        return get_celery()
    raise AttributeError(name)
