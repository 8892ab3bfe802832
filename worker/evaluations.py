"""The evaluation runner: the target's test accuracy at the current number of labels."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

import svp
from app.db import unit_of_work
from app.jobs.runtime import JobContext
from app.rounds.models import Round, RoundStatus
from worker import training
from worker.inputs import TrainSpec, fit_on_labels, label_tensor, read_pool


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    """Train the target from scratch on every label and measure it on the labelled test split."""
    assert ctx.project_id is not None
    spec = TrainSpec.from_proxy(ctx.params["target"])
    seed = int(ctx.params["seed"])
    ctx.progress("loading", 0.0)
    pool = read_pool(ctx.project_id, candidates=False)
    if not pool.labeled or not pool.test:
        raise ValueError("an evaluation needs labelled pool items and labelled test items")
    inputs, fitted = fit_on_labels(ctx, pool, spec, seed=seed)
    n_lab = len(pool.labeled)
    ctx.progress("scoring", 0.0)
    accuracy = svp.evaluate(
        fitted.model, inputs[n_lab:], label_tensor(pool.test), device=training.device()
    )
    with unit_of_work(write=False) as db:
        rounds_done = db.scalar(
            select(Round.number)
            .where(Round.project_id == ctx.project_id, Round.status == RoundStatus.completed)
            .order_by(Round.number.desc())
            .limit(1)
        )
    return {
        "target": spec.arch,
        "epochs": spec.epochs,
        "labels": n_lab,
        "test_items": len(pool.test),
        "accuracy": accuracy,
        "rounds_completed": rounds_done or 0,
        "seed": seed,
        "seconds_training": round(fitted.seconds, 4),
        "device": str(training.device()),
    }
