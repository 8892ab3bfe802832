"""Worker heartbeats: each worker keeps a ``WorkerNode`` row fresh, and reconciles on the same beat.

The worker's main process registers its row when it is ready, refreshes ``last_seen`` every
``SVP_WORKER_HEARTBEAT_SECONDS`` from a daemon thread and removes the row on a clean shutdown.
The same thread runs the reconciler (``app.jobs.reconcile``) at start and on every beat: no beat
scheduler to deploy, and every worker reconciles, so the fleet needs no leader (the reconciler's
updates are conditional, so two workers reconciling at once do each change once). Each running
job's own heartbeat is kept by ``run_job`` in the process that runs it, so a killed pool child
shows even while its parent still beats.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals
from sqlalchemy import delete, update

from app.db import get_engine, unit_of_work, utcnow
from app.jobs.broker import broker_instance, claim_resend
from app.jobs.models import WorkerNode
from app.jobs.reconcile import reconcile, resend_epoch
from app.settings import get_settings

log = logging.getLogger("svp.worker")


class Heartbeat:
    """A worker's row in ``workers`` and the thread that keeps it (and the jobs) in order."""

    def __init__(self, *, name: str, concurrency: int, interval: float) -> None:
        self.name = name
        self.concurrency = concurrency
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker: str | None = None

    def register(self) -> None:
        """Write (or take over) this worker's row."""
        now = utcnow()
        with unit_of_work() as db:
            db.merge(
                WorkerNode(
                    name=self.name,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    concurrency=self.concurrency,
                    started_at=now,
                    last_seen=now,
                )
            )

    def beat(self) -> None:
        """Refresh ``last_seen``; re-register if someone removed the row."""
        with unit_of_work() as db:
            done = db.execute(
                update(WorkerNode).where(WorkerNode.name == self.name).values(last_seen=utcnow())
            )
            # An UPDATE answers a CursorResult; Session.execute is typed as returning a Result.
            missing = done.rowcount == 0  # type: ignore[attr-defined]
        if missing:
            self.register()

    def tick(self, *, starting: bool = False) -> None:
        """One beat and one reconciliation; errors are logged, the thread goes on.

        At start, queued jobs sent before ``resend_epoch()`` are sent again, and when the broker
        is a new instance (Redis restarted since the last beat), every queued job, by the one
        worker that claims the new instance: their messages may have been lost with the broker.
        """
        try:
            self.beat()
        except Exception:
            log.warning("worker=%s event=heartbeat-failed", self.name, exc_info=True)
        restarted = self._broker_restarted()
        try:
            resend_before = None
            if restarted and self._broker is not None and claim_resend(self._broker):
                # Each live worker sees the new Redis; the first to claim it re-sends.
                log.warning("worker=%s event=broker-restarted resend=queued", self.name)
                resend_before = utcnow()
            elif starting:
                resend_before = resend_epoch()
            reconcile(resend_sent_before=resend_before)
        except Exception:
            log.warning("worker=%s event=reconcile-failed", self.name, exc_info=True)

    def _broker_restarted(self) -> bool:
        """Whether the broker is another instance than at the last beat (Redis's run_id)."""
        try:
            now = broker_instance()
        except Exception:
            return False  # unreachable now: the beat after it comes back will tell
        before, self._broker = self._broker, now
        return before is not None and now != before

    def start(self) -> None:
        """Register, then beat and reconcile from a daemon thread until ``stop``."""
        self.register()
        self._thread = threading.Thread(target=self._run, name="svp-heartbeat", daemon=True)
        self._thread.start()
        log.info("worker=%s event=registered every=%ss", self.name, self.interval)

    def _run(self) -> None:
        # The reconciler also runs at start: jobs left by a worker that died, messages lost.
        self.tick(starting=True)
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        """Stop beating and remove the row: a clean shutdown is not a dead worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with unit_of_work() as db:
                db.execute(delete(WorkerNode).where(WorkerNode.name == self.name))
        except Exception:
            log.warning("worker=%s event=unregister-failed", self.name, exc_info=True)
        log.info("worker=%s event=unregistered", self.name)


_current: Heartbeat | None = None


# Celery's signal decorators carry no types; the handlers below are typed all the same.
@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _current
    name = str(getattr(sender, "hostname", None) or f"svp-{os.getpid()}@{socket.gethostname()}")
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", None) or 1)
    _current = Heartbeat(
        name=name, concurrency=concurrency, interval=get_settings().worker_heartbeat_seconds
    )
    _current.start()


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _on_child_start(**_: Any) -> None:
    # A forked pool child must not share the parent's database connections: it keeps the
    # engine's settings but opens its own connections (close=False leaves the parent's alone).
    get_engine().dispose(close=False)


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_worker_shutdown(**_: Any) -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
