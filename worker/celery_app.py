"""The worker's side of Celery: the app with the tasks attached, and ``run_worker``.

The broker client and the queue table are the server's (``app.jobs.broker``); this module has a
worker load the tasks (``worker.tasks``, which registers the runners) into that same app, so a
worker sends (the reconciler re-sends jobs) and receives through one app.
``celery -A worker.celery_app`` works too: ``app`` is resolved on access.
"""

from __future__ import annotations

import os
import socket

from celery import Celery

from app.jobs.broker import QUEUES, declare_queues, get_celery
from app.settings import get_settings


def worker_celery() -> Celery:
    """The Celery app, told to load the worker's tasks (and so its runners) when a worker starts."""
    celery = get_celery()
    # A setting, not an import: the tasks bring torch, which a worker loads once as it starts
    # and ``celery -A worker.celery_app inspect ping`` (the compose health check) never does.
    celery.conf.include = ["worker.tasks"]
    return celery


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
    celery = worker_celery()
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
    # Before Celery's consumer declares them itself, racing any other worker starting now.
    declare_queues(celery)
    celery.worker_main(argv)


def __getattr__(name: str) -> Celery:
    # ``celery -A worker.celery_app`` looks up ``app``; building it lazily keeps imports cheap.
    if name in ("app", "celery"):
        return worker_celery()
    raise AttributeError(name)
