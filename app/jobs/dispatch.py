"""Sending jobs to where they run, only once the rows they read are committed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_PENDING = "svp_jobs_to_send"

# Job runners by kind, each taking a job id. Used when jobs run inside the server process.
RUNNERS: dict[str, Callable[[int], None]] = {}
_executor: ThreadPoolExecutor | None = None


def send_after_commit(db: Session, *, job_id: int, kind: str) -> None:
    """Send the job once this session's transaction has committed (never before, never on abort)."""
    db.info.setdefault(_PENDING, []).append((job_id, kind))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
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
    """Hand a committed job to its runner."""
    _run_inline(job_id=job_id, kind=kind)


def _run_inline(*, job_id: int, kind: str) -> None:
    global _executor
    runner = RUNNERS.get(kind)
    if runner is None:
        raise LookupError(f"no runner for jobs of kind {kind!r}")
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="svp-job")
    _executor.submit(_guarded, runner, job_id)


def _guarded(runner: Callable[[int], Any], job_id: int) -> None:
    try:
        runner(job_id)
    except Exception:
        log.exception("job %s failed in the server's pool", job_id)
