"""The one Celery task: run a job by id through ``app.jobs.runtime.run_job``.

``run_job`` owns the session, the job row's status and idempotence (it claims only a queued job,
or a running one whose worker stopped beating), so this task adds only what is Celery's: the
worker's name, a narrow retry while the database is unreachable, and logging. Importing this
module registers the worker's runners (``worker.runners``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

import worker.heartbeat  # noqa: F401  (connects the worker's signals)
from app.items.reference_import import help_with as help_import
from app.jobs.broker import EMBED_HELP_TASK_NAME, IMPORT_HELP_TASK_NAME, TASK_NAME
from app.jobs.runtime import run_job
from worker import runners
from worker.embed import help_with

log = logging.getLogger("svp.worker")

runners.register()


# What both tasks share: acknowledged after the work, retried only while the database does not
# answer (a runner's own error fails its job), no result kept (progress lives in the job's row).
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
    "ignore_result": True,
}


# shared_task carries no types (celery ships no stubs for it); the tasks below are typed.
@shared_task(name=TASK_NAME, **TASK_OPTIONS)  # type: ignore[untyped-decorator]
def run_job_task(self: Task[Any, Any], job_id: int) -> str:
    """Run job ``job_id`` on this worker; a second delivery of a finished job does nothing."""
    worker = self.request.hostname or "worker"
    log.info("job=%s event=received worker=%s retries=%s", job_id, worker, self.request.retries)
    status = run_job(int(job_id), worker=worker)
    log.info("job=%s event=done status=%s worker=%s", job_id, status, worker)
    return status


@shared_task(name=EMBED_HELP_TASK_NAME, **TASK_OPTIONS)  # type: ignore[untyped-decorator]  # as above
def embed_help_task(self: Task[Any, Any], job_id: int, backbone: str, image_size: int) -> int:
    """Embed chunks of a running job until none is left; a late request finds none and ends."""
    worker = self.request.hostname or "worker"
    return help_with(int(job_id), str(backbone), int(image_size), worker=worker)


@shared_task(name=IMPORT_HELP_TASK_NAME, **TASK_OPTIONS)  # type: ignore[untyped-decorator]  # as above
def import_help_task(self: Task[Any, Any], job_id: int) -> int:
    """Register chunks of a running import by reference until none is left; a late request
    finds none and ends."""
    worker = self.request.hostname or "worker"
    return help_import(int(job_id), worker=worker)
