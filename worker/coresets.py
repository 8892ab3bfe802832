"""The core-set runner: the fraction of the labelled pool to train the target on."""

from __future__ import annotations

import time
from typing import Any

import svp
from app.jobs.runtime import JobContext
from worker import training
from worker.inputs import TrainSpec, fit_on_labels, label_tensor, read_pool


def run_coreset(ctx: JobContext) -> dict[str, Any]:
    """Choose the given fraction of the labelled pool to train the target on."""
    assert ctx.project_id is not None
    params = ctx.params
    spec = TrainSpec.from_proxy(params["proxy"])
    strategy, seed = str(params["strategy"]), int(params["seed"])
    fraction = float(params["fraction"])
    ctx.progress("loading", 0.0)
    pool = read_pool(ctx.project_id, candidates=False)
    if len(pool.labeled) < 2:
        raise ValueError("a core-set needs at least 2 labelled pool items")
    if spec.embeds and strategy == "forgetting":
        raise ValueError(
            f"forgetting events need a proxy trained here epoch by epoch, not {spec.arch}"
        )
    inputs, fitted = fit_on_labels(
        ctx, pool, spec, seed=seed, track_forgetting=strategy == "forgetting"
    )
    n_lab = len(pool.labeled)
    started = time.perf_counter()
    ctx.progress("scoring", 0.0)
    accuracy = None
    if pool.test:
        accuracy = svp.evaluate(
            fitted.model, inputs[n_lab:], label_tensor(pool.test), device=training.device()
        )
    # Every labelled item is a candidate for the core-set; forgetting ranks by its counts.
    result = svp.coreset(
        fitted.model,
        inputs[:n_lab],
        fraction,
        strategy,
        forgetting=fitted.forgetting,
        seed=seed,
        device=training.device(),
    )
    seconds_scoring = time.perf_counter() - started - result.selecting_seconds
    ctx.progress("selecting", 1.0)
    ids = [pool.labeled[i].item_id for i in result.indices]
    return {
        "items": ids,
        "scores": result.scores,
        "fraction": fraction,
        "strategy": strategy,
        "size": len(ids),
        "labeled": n_lab,
        "test_labeled": len(pool.test),
        "proxy": params["proxy"],
        "seed": seed,
        "proxy_test_accuracy": accuracy,
        "seconds_training": round(fitted.seconds, 4),
        "seconds_scoring": round(seconds_scoring, 4),
        "seconds_selecting": round(result.selecting_seconds, 4),
    }
