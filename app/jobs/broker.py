"""The broker client: the Celery app the server sends jobs with, and where each kind of job goes.

The server sends a task by name and never imports the tasks: they live in ``worker/`` (see
``worker.celery_app``), which imports this module, never the other way round. A new kind of job
is one row in ``ROUTES``; a new task (a fanned-out chunk, say) is one more name beside
``TASK_NAME``, sent with ``send_task`` and its kind's queue and limits.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from celery import Celery
from kombu.entity import Exchange, Queue

from app.jobs.models import JobKind
from app.settings import Settings, get_settings

# The task that runs a job by id (``worker.tasks``).
TASK_NAME = "svp.run_job"
# A request to help a running job with its embedding chunks (``worker.embed.help_with``).
EMBED_HELP_TASK_NAME = "svp.embed_help"
# A request to help a running import by reference with its chunks
# (``app.items.reference_import.help_with``).
IMPORT_HELP_TASK_NAME = "svp.import_help"

QUEUE_DEFAULT = "default"
QUEUE_ROUNDS = "rounds"
QUEUES = (QUEUE_DEFAULT, QUEUE_ROUNDS)


@dataclass(frozen=True)
class Route:
    """Where a kind of job runs and how long it may take.

    ``soft`` raises inside the runner, so the job fails with a reason; ``hard`` kills the
    process, and the reconciler sees its heartbeat stop.
    """

    queue: str
    soft: int
    hard: int


_HOUR = 3600
# Imports are I/O-bound and short; rounds hold a CPU for minutes, so they get their own queue
# and a deployment can give them their own workers.
ROUTES: dict[str, Route] = {
    JobKind.import_: Route(QUEUE_DEFAULT, 3 * _HOUR, 3 * _HOUR + 300),
    JobKind.round: Route(QUEUE_ROUNDS, 4 * _HOUR, 4 * _HOUR + 300),
    JobKind.coreset: Route(QUEUE_ROUNDS, 4 * _HOUR, 4 * _HOUR + 300),
    JobKind.evaluate: Route(QUEUE_ROUNDS, 2 * _HOUR, 2 * _HOUR + 300),
    # Its help requests go the same way: any worker that takes rounds can take a chunk.
    JobKind.embed: Route(QUEUE_ROUNDS, 4 * _HOUR, 4 * _HOUR + 300),
}
DEFAULT_ROUTE = Route(QUEUE_DEFAULT, _HOUR, _HOUR + 300)

# Redis hands an unacknowledged message to another worker after this long. It must exceed the
# longest hard limit, or a long round would be run twice while its first run is still healthy.
VISIBILITY_TIMEOUT = 6 * _HOUR
assert max(r.hard for r in ROUTES.values()) < VISIBILITY_TIMEOUT

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


def route_for(kind: str) -> Route:
    """The queue and (soft, hard) time limits of a job of this kind."""
    return ROUTES.get(kind, DEFAULT_ROUTE)


def queue_for(kind: str) -> str:
    """The queue a job of this kind is sent to."""
    return route_for(kind).queue


def time_limits_for(kind: str) -> tuple[int, int]:
    """The (soft, hard) time limits of a job of this kind, in seconds."""
    route = route_for(kind)
    return route.soft, route.hard


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings, with no tasks: the worker adds its own."""
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
    app = Celery("svp", broker=url, set_as_current=False)
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
        task_soft_time_limit=DEFAULT_ROUTE.soft,
        task_time_limit=DEFAULT_ROUTE.hard,
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


def _sqlite_path(url: str) -> Path | None:
    """The file of an embedded broker's URL; None for an in-memory one."""
    _, _, rest = url.partition(":///")
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest.split("?", 1)[0]).expanduser()


def _ensure_sqlite_dir(url: str) -> None:
    # kombu creates its tables on first use but not the directory of the SQLite file.
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


_APPS: dict[str, Celery] = {}


def get_celery() -> Celery:
    """The Celery app for the current settings' broker (one per broker URL per process)."""
    settings = get_settings()
    celery = _APPS.get(settings.broker_url)
    if celery is None:
        celery = _APPS[settings.broker_url] = make_celery(settings)
    return celery


_DECLARED: set[str] = set()
_DECLARE_LOCK = threading.Lock()


def declare_queues(celery: Celery) -> None:
    """Make the embedded broker's tables and queue rows once, one process at a time.

    kombu's SQLAlchemy transport creates a queue's row on first use with a check-then-insert that
    is guarded only within one process: two workers starting together both insert, and the
    loser dies on the unique name (seen in CI: a worker lost at start-up). Declaring every queue
    here, under a lock file beside the broker's database, leaves the transport only rows to find.
    Redis needs none of this; the call is then free.
    """
    url = str(celery.conf.broker_url)
    if broker_kind(url) != "embedded" or url in _DECLARED:
        return
    with _DECLARE_LOCK:
        if url in _DECLARED:
            return
        path = _sqlite_path(url)
        lock_path = path.with_name(path.name + ".lock") if path else None
        with _file_lock(lock_path), celery.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in celery.conf.task_queues:
                queue.bind(channel).declare()
        _DECLARED.add(url)


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; no lock where there is no file."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def broker_instance() -> str | None:
    """Which running broker this is: Redis's ``run_id``, new at every start; None otherwise.

    Redis here keeps no messages across a restart (a cache, often without persistence), so a
    worker that sees the id change knows queued jobs' messages may be gone and sends them again.
    The embedded broker is a file and keeps them. Raises when Redis cannot be reached.
    """
    url = get_settings().broker_url
    if broker_kind(url) != "redis":
        return None
    address, _ = _split_key_prefix(url)
    client = redis.Redis.from_url(address, socket_timeout=5, socket_connect_timeout=5)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def claim_resend(instance: str) -> bool:
    """Whether this caller is the first to re-send for a new Redis instance (``run_id``).

    Every live worker sees Redis restart at its next beat; one key per instance, set if absent,
    lets the first re-send the queued jobs and the others skip. The key dies with the instance,
    as the messages did. Raises when Redis cannot be reached.
    """
    address, prefix = _split_key_prefix(get_settings().broker_url)
    client = redis.Redis.from_url(address, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.set(f"{prefix}svp-resend:{instance}", "1", nx=True))
    finally:
        client.close()


def send_task(name: str, args: list[Any], *, kind: str) -> None:
    """Send task ``name`` to the queue of jobs of ``kind``, with that kind's time limits."""
    route = route_for(kind)
    declare_queues(get_celery())
    get_celery().send_task(
        name, args=args, queue=route.queue, soft_time_limit=route.soft, time_limit=route.hard
    )


def send_job(job_id: int, kind: str) -> None:
    """Send a committed job's id to its queue."""
    send_task(TASK_NAME, [job_id], kind=kind)
