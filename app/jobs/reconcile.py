"""The reconciler: no job stays running after its worker died, no queued job stays unsent,
no upload stays on disk or in the store once no import will read it, and no embedding shard
that nothing names stays in the store.

``reconcile`` is a plain function over the database; every worker runs it at start and on each
heartbeat (``worker.heartbeat``). Each change is a conditional UPDATE that re-checks the state
it acts on, so several workers reconciling at once change each job once. Jobs are re-sent only
after the transaction commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import unit_of_work, utcnow
from app.embeddings import service as embeddings
from app.items import service as items
from app.jobs.dispatch import send_after_commit
from app.jobs.models import Job, JobStatus, WorkerNode
from app.jobs.runtime import MAX_ATTEMPTS, lost_worker_reason
from app.rounds.service import follow_jobs, out_of_step
from app.settings import get_settings
from app.storage import is_remote, item_store

log = logging.getLogger("svp.reconcile")

# A worker row not seen for this many dead-after periods is removed (killed workers leave one).
FORGET_WORKER_AFTER = 10


@dataclass
class Reconciled:
    """What one pass changed, by job id (and round id)."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.resent or self.rounds)


# Upload folders are swept at most this often per process (a directory listing each beat is
# cheap, but a query per folder is not worth ten times a minute).
SWEEP_EVERY = timedelta(minutes=5)
_last_sweep: datetime | None = None


def sweep_uploads(now: datetime | None = None, *, force: bool = False) -> list[str]:
    """Delete the uploads no import will read again (``app.items.service.sweep_uploads``), on
    this machine's disk and staged in the item store (``sweep_staged``), and with a bucket the
    embedding shards nothing will read (``app.embeddings.service.sweep_orphan_shards``)."""
    global _last_sweep
    now = now or utcnow()
    if not force and _last_sweep is not None and now - _last_sweep < SWEEP_EVERY:
        return []
    _last_sweep = now
    settings = get_settings()
    retention = timedelta(hours=settings.upload_retention_hours)
    with unit_of_work(write=False) as db:
        deleted = items.sweep_uploads(
            db, uploads_dir=settings.uploads_dir, now=now, retention=retention
        )
        # Uploads staged in a bucket for workers elsewhere (app.items.staging), and embedding
        # shards that no row names (a worker died between the put and the registration).
        staged, shards = [], []
        if is_remote():
            store = item_store()
            staged = items.sweep_staged(db, store=store, now=now, retention=retention)
            shards = embeddings.sweep_orphan_shards(db, store=store, now=now)
    if deleted:
        log.warning("event=uploads_swept folders=%s", deleted)
    if staged:
        log.warning("event=staged_uploads_swept folders=%s", staged)
    if shards:
        log.warning("event=orphan_shards_swept count=%d first=%s", len(shards), shards[0])
    return deleted + staged + shards


def resend_epoch() -> datetime | None:
    """Since when queued jobs' messages have been consumed: the start of the oldest live worker.

    A worker starting re-sends the queued jobs sent before it, whose messages a broker that
    restarted while no worker ran may have lost. Every worker of the fleet computes the same
    moment, so however many start, each job is sent again once: the re-send's conditional
    UPDATE moves its ``sent_at`` past the moment and the next worker finds nothing to do
    (issue 17: every worker start re-sent every queued job).
    """
    alive_since = utcnow() - timedelta(seconds=get_settings().worker_dead_after_seconds)
    with unit_of_work(write=False) as db:
        return db.scalar(
            select(func.min(WorkerNode.started_at)).where(WorkerNode.last_seen >= alive_since)
        )


def reconcile(
    now: datetime | None = None, *, resend_sent_before: datetime | None = None
) -> Reconciled:
    """One pass: re-send or fail jobs of dead workers, re-send unsent jobs, align rounds.

    ``resend_sent_before`` (a worker starting, a broker restarted: ``resend_epoch()``) re-sends
    every queued job sent before it, however recently: a broker that lost its messages while no
    worker consumed them (Redis restarted without persistence) would otherwise leave them queued
    for ``job_resend_after_seconds``. A duplicate delivery is harmless, as a job is claimed once.
    """
    settings = get_settings()
    now = now or utcnow()
    dead_before = now - timedelta(seconds=settings.worker_dead_after_seconds)
    resend_before = now - timedelta(seconds=settings.job_resend_after_seconds)
    if resend_sent_before is not None:
        resend_before = max(resend_before, min(resend_sent_before, now))
    dead = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < dead_before)
    lost = and_(Job.status == JobStatus.running, dead)
    # A job is sent right after its creating transaction commits; give that a moment.
    unsent = and_(
        Job.status == JobStatus.queued,
        or_(
            and_(Job.sent_at.is_(None), Job.created_at < now - timedelta(seconds=5)),
            Job.sent_at < resend_before,
        ),
    )
    done = Reconciled()
    try:
        sweep_uploads(now)
    except Exception:
        # A full disk or a permission error must not stop jobs from being reconciled.
        log.exception("sweeping uploads failed")
    # Look first without the write lock: on SQLite most passes find nothing and write nothing.
    with unit_of_work(write=False) as db:
        lost_jobs = db.execute(select(Job.id, Job.attempts).where(lost)).all()
        unsent_ids = list(db.scalars(select(Job.id).where(unsent)))
        rounds_off = bool(out_of_step(db, limit=1))
        forget_before = now - timedelta(
            seconds=settings.worker_dead_after_seconds * FORGET_WORKER_AFTER
        )
        stale_workers = db.scalar(
            select(WorkerNode.name).where(WorkerNode.last_seen < forget_before).limit(1)
        )
    if not (lost_jobs or unsent_ids or rounds_off or stale_workers):
        return done
    with unit_of_work() as db:
        for job_id, attempts in lost_jobs:
            if attempts >= MAX_ATTEMPTS:
                values = {
                    "status": JobStatus.failed,
                    "error": lost_worker_reason(attempts),
                    "finished_at": now,
                }
                if _change(db, job_id, lost, values):
                    done.failed.append(job_id)
            elif _change(db, job_id, lost, {"status": JobStatus.queued, "sent_at": None}):
                done.requeued.append(job_id)
        for job_id in unsent_ids:
            if _change(db, job_id, unsent, {"sent_at": now}):
                done.resent.append(job_id)
        for job_id in (*done.requeued, *done.resent):
            kind = db.scalar(select(Job.kind).where(Job.id == job_id))
            send_after_commit(db, job_id=job_id, kind=str(kind))
        # Rounds whose job finished without them (failed, canceled, gone) follow their job.
        done.rounds = [r.id for r in follow_jobs(db)]
        db.execute(delete(WorkerNode).where(WorkerNode.last_seen < forget_before))
    if done:
        log.warning(
            "event=reconciled requeued=%s failed=%s resent=%s rounds=%s",
            done.requeued,
            done.failed,
            done.resent,
            done.rounds,
        )
    return done


def _change(
    db: Session, job_id: int, condition: ColumnElement[bool], values: dict[str, object]
) -> bool:
    """Update one job only if ``condition`` still holds; whether it did."""
    result = db.execute(
        update(Job)
        .where(Job.id == job_id, condition)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    # An UPDATE answers a CursorResult, but Session.execute is typed as returning a Result.
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
