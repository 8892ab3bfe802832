"""Every runner a worker runs, by kind: the one place a kind of job meets its code.

A new kind of job is a ``JobKind``, a route in ``app.jobs.broker.ROUTES`` and a line here.
"""

from __future__ import annotations

from app.items.import_jobs import run_import_job
from app.jobs.models import JobKind
from app.jobs.runtime import Runner, register_runner
from worker.coresets import run_coreset
from worker.embed import run_embed
from worker.evaluations import run_evaluate
from worker.rounds import run_round

RUNNERS: dict[JobKind, Runner] = {
    JobKind.import_: run_import_job,
    JobKind.round: run_round,
    JobKind.coreset: run_coreset,
    JobKind.evaluate: run_evaluate,
    JobKind.embed: run_embed,
}


def register() -> None:
    """Let this process run every kind of job (idempotent)."""
    for kind, fn in RUNNERS.items():
        register_runner(kind, fn)
