"""The round runner: a labelling round's batch, chosen by the proxy (or by a cold start).

``run_round(ctx) -> dict`` is run by ``app.jobs.runtime.run_job`` in a worker. It reads ids and
labels in short transactions, does the torch work outside any transaction (through
``worker/inputs.py``), and writes results in one; every round write goes through
``app.rounds.service`` (the batch through its ``save_batch``, which completes it when it is
labelled already). It is idempotent: a redelivered round reloads its row first, and one that
already has its batch returns at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session

import svp
from app.db import unit_of_work
from app.items.availability import ObjectsGone
from app.jobs.runtime import JobCanceled, JobContext, pause_point
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus
from app.rounds.schemas import EMBEDDING_STRATEGIES
from worker import training
from worker.embed import EmbeddingReport
from worker.inputs import (
    Pool,
    TrainSpec,
    fit_pool,
    label_tensor,
    load_embeddings,
    load_pixels,
    read_pool,
)
from worker.skips import Skips, pick_more

log = logging.getLogger("svp.worker.rounds")


@dataclass(frozen=True)
class RoundPlan:
    """A round's parameters, copied out of its row so no ORM object outlives its session."""

    round_id: int
    project_id: int
    strategy: str
    batch_size: int
    spec: TrainSpec
    seed: int
    cold_start: str


def run_round(ctx: JobContext) -> dict[str, Any]:
    """Select a round's batch: load, train the proxy, score, select, save (or a cold start)."""
    round_id = int(ctx.params["round_id"])
    with unit_of_work() as db:
        rnd = rounds.begin_running(db, round_id=round_id)
        if rnd is None:
            return _already_settled(db, round_id)
        project = db.get(Project, rnd.project_id)
        assert project is not None
        plan = RoundPlan(
            round_id=rnd.id,
            project_id=rnd.project_id,
            strategy=rnd.strategy,
            batch_size=rnd.batch_size,
            spec=TrainSpec.from_proxy(dict(rnd.proxy)),
            seed=rnd.seed,
            cold_start=project_settings(project).cold_start,
        )
    try:
        return _select_leaving_out_gone(ctx, plan)
    except JobCanceled:
        with unit_of_work() as db:
            rounds.end_round(db, round_id=round_id, status=RoundStatus.canceled, error="canceled")
        raise
    except Exception as exc:
        # run_job fails the job; the round row follows here, with the same reason.
        with unit_of_work() as db:
            rounds.end_round(
                db,
                round_id=round_id,
                status=RoundStatus.failed,
                error=f"{type(exc).__name__}: {exc}",
            )
        raise


def _already_settled(db: Session, round_id: int) -> dict[str, Any]:
    """What a redelivered or late job finds: a batch already chosen, or a round ended."""
    rnd = db.get(Round, round_id)
    if rnd is None:
        return {"round_id": round_id, "skipped": "the round no longer exists"}
    if rnd.status == RoundStatus.canceled:
        raise JobCanceled(f"round {round_id} was canceled")
    if rnd.status == RoundStatus.failed:
        raise RuntimeError(f"round {round_id} failed earlier ({rnd.error}); start a new round")
    return {"round_id": round_id, "status": rnd.status, "skipped": "the batch was already selected"}


def _select_leaving_out_gone(ctx: JobContext, plan: RoundPlan) -> dict[str, Any]:
    """Select the batch; when loading finds objects gone from their bucket (an import by
    reference), select again without those items (``worker/skips.py``)."""
    skips = Skips(plan.project_id)
    while True:
        try:
            return _select_batch(ctx, plan, skips)
        except ObjectsGone as exc:
            skips.add(exc)
            log.warning("round %s: %s; leaving them out", plan.round_id, exc)


def _cold_strategy(plan: RoundPlan) -> str:
    """The first batch's strategy: the setting, with ``auto`` resolved by the round and inputs.

    ``auto`` on a ``random`` round is random: a round asked to be random is (issue 17: it
    became TypiClust on a linear project). An explicit setting applies to every round.
    """
    if plan.cold_start != "auto":
        return plan.cold_start
    if plan.strategy == "random":
        return "random"
    clusters = plan.spec.embeds or plan.strategy in EMBEDDING_STRATEGIES
    return "typiclust" if clusters and plan.spec.backbone else "random"


def _select_batch(ctx: JobContext, plan: RoundPlan, skips: Skips) -> dict[str, Any]:
    spec = plan.spec
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ctx.progress("loading", 0.0)
    pool = read_pool(plan.project_id, candidates=True)
    skips.leave_out(pool)
    k = min(plan.batch_size, len(pool.candidates))
    if k == 0:
        raise ValueError("the pool has no unlabelled items left to select from")
    n_cand, n_lab = len(pool.candidates), len(pool.labeled)
    cold = _cold_strategy(plan) if n_lab == 0 else None
    embedded = EmbeddingReport()
    fitted = None
    # Clustering on a from-scratch proxy's first batch needs a backbone's embeddings too; texts
    # are only ever clustered on their encoder's embeddings.
    if cold == "typiclust" or (cold == "kcenter" and (spec.embeds or pool.kind == "text")):
        inputs = load_embeddings(ctx, pool.keys(), spec, embedded)
    elif cold == "kcenter":
        inputs = load_pixels(ctx, pool.candidates.keys(), spec.image_size)
    elif cold is not None:
        # A random first batch reads no image at all: one placeholder column per candidate.
        inputs = torch.zeros(n_cand, 1)
    else:
        # The proxy's fitting is timed on its own below (seconds_training).
        inputs, fitted = fit_pool(ctx, pool, spec, seed=plan.seed, report=embedded)
    timings["seconds_loading"] = (
        time.perf_counter() - started - embedded.seconds - (fitted.seconds if fitted else 0.0)
    )
    timings["seconds_embedding"] = embedded.seconds

    metrics: dict[str, Any] = {
        "labeled": n_lab,
        "pool": n_cand,
        "pool_total": pool.pool_total,
        "test_labeled": len(pool.test),
        "seed": plan.seed,
        "arch": spec.arch,
        "backbone": spec.backbone if spec.embeds else None,
        "epochs": None if spec.linear else spec.epochs,
        "strategy": plan.strategy,
        "device": str(training.device()),
        "proxy_test_accuracy": None,
        "cold_start": cold,
        "embedding": embedded.as_dict() if embedded.images else None,
    }
    if cold is not None:
        # Cold start: no labels to train on, so the batch comes from the inputs alone.
        timings["seconds_training"] = timings["seconds_scoring"] = 0.0
        ctx.progress("selecting", 0.0)
        started = time.perf_counter()
        result = svp.cold_start(inputs[:n_cand], k, cold, seed=plan.seed)
        timings["seconds_selecting"] = time.perf_counter() - started
    else:
        assert fitted is not None
        timings["seconds_training"] = fitted.seconds
        metrics["calibration"] = fitted.calibration
        metrics.update(fitted.details)
        ctx.progress("scoring", 0.0)
        # Candidates first, then the labelled set: k-centre starts its cover from the labelled
        # items, and the mask keeps every one of them out of the batch.
        result = svp.select(
            fitted.model,
            inputs[: n_cand + n_lab],
            torch.arange(n_cand, n_cand + n_lab),
            k,
            plan.strategy,
            seed=plan.seed,
            device=training.device(),
        )
        started = time.perf_counter()
        if pool.test:
            metrics["proxy_test_accuracy"] = svp.evaluate(
                fitted.model,
                inputs[n_cand + n_lab :],
                label_tensor(pool.test),
                device=training.device(),
            )
        timings["seconds_scoring"] = result.scoring_seconds + time.perf_counter() - started
        timings["seconds_selecting"] = result.selecting_seconds
        ctx.progress("selecting", 1.0)
    metrics["selection"] = result.details or None
    started = time.perf_counter()
    ctx.progress("saving", 0.0)
    # An object deleted since its item was embedded: the next candidate takes its place.
    more = pick_more(
        model=fitted.model if fitted is not None else None,
        inputs=inputs,
        candidates=n_cand,
        labeled=0 if cold is not None else n_lab,
        strategy=cold or plan.strategy,
        seed=plan.seed,
        device=training.device(),
    )
    result = skips.check_batch(pool, result, more)
    if skips.gone:
        metrics["skipped"] = skips.listed()
    entries = _entries(pool, result)
    timings["seconds_saving"] = time.perf_counter() - started
    metrics.update({key: round(value, 4) for key, value in timings.items()})
    with unit_of_work() as db:
        if not rounds.save_batch(db, round_id=plan.round_id, entries=entries, metrics=metrics):
            raise JobCanceled(f"round {plan.round_id} was canceled before its batch was saved")
        pause_point("round:save-batch")
    log.info("round %s: %s selected by %s; %s", plan.round_id, len(entries), plan.strategy, metrics)
    return {"round_id": plan.round_id, "selected": len(entries), "metrics": metrics}


def _entries(pool: Pool, result: svp.SelectionResult) -> list[dict[str, Any]]:
    """The batch's Selection rows, in rank order, with the proxy's suggestion for each item."""
    return [
        {
            "item_id": pool.candidates[i].item_id,
            "rank": rank,
            "score": score,
            "suggested_label": None if guess is None else pool.classes[guess],
            "suggested_prob": prob,
            "labeled": False,
        }
        for rank, (i, score, guess, prob) in enumerate(
            zip(
                result.indices,
                result.scores,
                result.predicted_class,
                result.predicted_prob,
                strict=True,
            )
        )
    ]
