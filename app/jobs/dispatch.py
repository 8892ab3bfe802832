"""Sending jobs to where they run, only once the rows they read are committed."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_PENDING = "svp_jobs_to_send"

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
    """Hand a committed job to where it runs: the server's own pool (stopgap before the worker)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="svp-job")
    _executor.submit(_run_guarded, job_id)


def _run_guarded(job_id: int) -> None:
    from app.jobs.service import run_job

    try:
        run_job(job_id, worker="server")
    except Exception:
        log.exception("job %s failed in the server's pool", job_id)
