"""Sending jobs to where they run, only once the rows they read are committed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

from sqlalchemy import event, update
from sqlalchemy.orm import Session

from app import metrics
from app.db import unit_of_work, utcnow
from app.jobs.broker import send_job
from app.jobs.models import Job
from app.jobs.runtime import run_job
from app.settings import get_settings

log = logging.getLogger(__name__)

_PENDING = "svp_jobs_to_send"

_executor: ThreadPoolExecutor | None = None
# Inline jobs handed to the pool and not finished yet (``wait_for_inline_jobs``).
_inline_running: set[Future[None]] = set()
_inline_lock = threading.Lock()


def send_after_commit(db: Session, *, job_id: int, kind: str) -> None:
    """Send the job once this session's transaction has committed (never before, never on abort)."""
    db.info.setdefault(_PENDING, []).append((job_id, kind))


@contextmanager
def contained(db: Session) -> Iterator[None]:
    """Forget the jobs queued inside the block when it raises (wrap a savepoint with it).

    A rolled-back savepoint fires no ``after_rollback``: without this, a job whose row the
    savepoint undid would still be sent after the outer transaction commits.
    """
    before = list(db.info.get(_PENDING, []))
    try:
        yield
    except BaseException:
        db.info[_PENDING] = before
        raise


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    if session.in_nested_transaction():
        # A savepoint released, not the transaction: its rows are not committed yet.
        return
    pending: list[tuple[int, str]] = session.info.pop(_PENDING, [])
    for job_id, kind in pending:
        try:
            send(job_id=job_id, kind=kind)
        except Exception:
            # The job row is committed as queued; the reconciler re-sends jobs never sent.
            log.exception("could not send job %s; the reconciler will retry", job_id)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def send(*, job_id: int, kind: str) -> None:
    """Hand a committed job to where it runs (the broker, or the server's pool when inline)."""
    if get_settings().inline_jobs:
        _submit_inline(job_id)
    else:
        send_job(job_id, kind)
    metrics.JOBS_ENQUEUED.labels(kind).inc()
    _mark_sent(job_id)


def _mark_sent(job_id: int) -> None:
    """Record that the broker has the job; the reconciler re-sends queued jobs never sent."""
    with unit_of_work() as db:
        db.execute(update(Job).where(Job.id == job_id).values(sent_at=utcnow()))


def _submit_inline(job_id: int) -> None:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="svp-job")
    future = _executor.submit(_run_guarded, job_id)
    with _inline_lock:
        _inline_running.add(future)
    future.add_done_callback(_forget_inline)


def _forget_inline(future: Future[None]) -> None:
    with _inline_lock:
        _inline_running.discard(future)


def wait_for_inline_jobs(timeout: float = 60.0) -> bool:
    """Wait until every job handed to the server's own pool has finished; False on timeout.

    Inline jobs (``SVP_INLINE_JOBS``) run in threads of this process: a test waits here so none
    outlives it and reads the next test's settings half-way (one did: it cached settings built
    before the next test set its environment, and that test's upload limit was not applied).
    """
    deadline = time.monotonic() + timeout
    while True:
        with _inline_lock:
            running = list(_inline_running)
        if not running:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        wait(running, timeout=left)


def _run_guarded(job_id: int) -> None:
    try:
        run_job(job_id, worker="server")
    except Exception:
        log.exception("job %s failed in the server's pool", job_id)
