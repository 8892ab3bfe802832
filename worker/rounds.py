"""Runners of the torch jobs: a labelling round, a core-set, an evaluation.

Each is ``fn(ctx: JobContext) -> dict``, run by ``app.jobs.runtime.run_job`` in a worker. They
read ids and labels in short transactions, do the torch work outside any transaction, and write
results in one; every round write goes through ``app.rounds.service``. A runner is idempotent:
a redelivered round reloads its row first, and one that already has its batch returns at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

import svp
from app.db import unit_of_work
from app.items.models import Item, Split
from app.items.storage import image_path
from app.jobs.runtime import JobCanceled, JobContext
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus
from app.settings import get_settings
from worker import round_engine as engine

log = logging.getLogger("svp.worker.rounds")

# Images decoded per progress report while the cache fills: a report is one tiny transaction.
LOAD_CHUNK = 2048


@dataclass
class Pool:
    """What a runner reads from the database: ids, content hashes and label indices."""

    classes: list[str]
    candidates: list[tuple[int, str]] = field(default_factory=list)  # (item id, hash) unlabelled
    labeled: list[tuple[int, str, int]] = field(default_factory=list)  # (id, hash, class index)
    test: list[tuple[int, str, int]] = field(default_factory=list)
    pool_total: int = 0


def _read_pool(project_id: int, *, candidates: bool) -> Pool:
    """The project's labelled pool and test items, and (for a round) the unlabelled candidates."""
    with unit_of_work(write=False) as db:
        project = db.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} no longer exists")
        classes = list(project.classes)
        index = {c: i for i, c in enumerate(classes)}
        pool = Pool(classes=classes)
        open_batches = rounds.open_batch_items(project_id)
        rows = db.execute(
            select(Item.id, Item.content_hash, Item.split, Item.label, Item.id.in_(open_batches))
            .where(Item.project_id == project_id)
            .order_by(Item.id)
        ).tuples()
        for item_id, content_hash, split, label, in_open_batch in rows:
            if split == Split.pool:
                pool.pool_total += 1
            if label is None:
                # An item in a batch still being labelled is someone's work already.
                if split == Split.pool and candidates and not in_open_batch:
                    pool.candidates.append((item_id, content_hash))
            elif label in index:
                target = pool.labeled if split == Split.pool else pool.test
                target.append((item_id, content_hash, index[label]))
    return pool


def _load_images(ctx: JobContext, hashes: Sequence[str], image_size: int) -> torch.Tensor:
    """Images by content hash through the engine's memory-mapped cache; decodes only new ones."""
    settings = get_settings()
    store = engine.image_store(settings.cache_dir, image_size)
    missing = [h for h in dict.fromkeys(hashes) if h not in store]
    for start in range(0, len(missing), LOAD_CHUNK):
        chunk = missing[start : start + LOAD_CHUNK]
        store.add_many((h, image_path(settings.images_dir, h)) for h in chunk)
        ctx.progress("loading", (start + len(chunk)) / max(len(missing), 1))
    return store.load(list(hashes)) if hashes else engine.empty_images(image_size)


def _labels(rows: Sequence[tuple[int, str, int]]) -> torch.Tensor:
    return torch.tensor([r[2] for r in rows], dtype=torch.int64)


def _epoch_reporter(ctx: JobContext, stage: str, epochs: int) -> Callable[[int], None]:
    def report(epoch: int) -> None:
        # Raises JobCanceled when a cancel was asked: training stops at this epoch's end.
        ctx.progress(stage, epoch / max(epochs, 1))

    return report


# ---- round ----


@dataclass(frozen=True)
class RoundPlan:
    """A round's parameters, copied out of its row so no ORM object outlives its session."""

    round_id: int
    project_id: int
    strategy: str
    batch_size: int
    proxy: dict[str, Any]
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
            proxy=dict(rnd.proxy),
            seed=rnd.seed,
            cold_start=project_settings(project).cold_start,
        )
    try:
        return _select_batch(ctx, plan)
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


def _select_batch(ctx: JobContext, plan: RoundPlan) -> dict[str, Any]:
    proxy = plan.proxy
    size = int(proxy.get("image_size") or 32)
    device = engine.device()
    timings: dict[str, float] = {}

    started = time.perf_counter()
    ctx.progress("loading", 0.0)
    pool = _read_pool(plan.project_id, candidates=True)
    k = min(plan.batch_size, len(pool.candidates))
    if k == 0:
        raise ValueError("the pool has no unlabelled items left to select from")
    all_hashes = [h for _, h in pool.candidates] + [r[1] for r in pool.labeled + pool.test]
    images = _load_images(ctx, all_hashes, size)
    n_cand, n_lab = len(pool.candidates), len(pool.labeled)
    cand_x = images[:n_cand]
    lab_x, test_x = images[n_cand : n_cand + n_lab], images[n_cand + n_lab :]
    timings["seconds_loading"] = time.perf_counter() - started

    metrics: dict[str, Any] = {
        "labeled": n_lab,
        "pool": n_cand,
        "pool_total": pool.pool_total,
        "test_labeled": len(pool.test),
        "seed": plan.seed,
        "arch": proxy.get("arch"),
        "epochs": proxy.get("epochs"),
        "strategy": plan.strategy,
        "device": str(device),
        "proxy_test_accuracy": None,
        "cold_start": None,
    }
    if n_lab == 0:
        # Cold start: no labels to train on, so the batch comes from the images alone.
        metrics["cold_start"] = plan.cold_start
        timings["seconds_training"] = timings["seconds_scoring"] = 0.0
        ctx.progress("selecting", 0.0)
        started = time.perf_counter()
        result = svp.cold_start(cand_x, k, plan.cold_start, seed=plan.seed)
        timings["seconds_selecting"] = time.perf_counter() - started
    else:
        started = time.perf_counter()
        ctx.progress("training", 0.0)
        trained = engine.train(
            proxy["arch"],
            lab_x,
            _labels(pool.labeled),
            num_classes=len(pool.classes),
            epochs=int(proxy["epochs"]),
            batch_size=int(proxy["batch_size"]),
            lr=proxy.get("lr"),
            seed=plan.seed,
            device=device,
            on_epoch=_epoch_reporter(ctx, "training", int(proxy["epochs"])),
        )
        timings["seconds_training"] = time.perf_counter() - started

        ctx.progress("scoring", 0.0)
        # The images are loaded candidates first, then the labelled set: k-centre starts its cover
        # from the labelled items, and the mask keeps every one of them out of the batch.
        labeled = torch.arange(n_cand, n_cand + n_lab)
        result = svp.select(
            trained.model,
            images[: n_cand + n_lab],
            labeled,
            k,
            plan.strategy,
            seed=plan.seed,
            device=device,
        )
        started = time.perf_counter()
        if len(pool.test):
            metrics["proxy_test_accuracy"] = svp.evaluate(
                trained.model, test_x, _labels(pool.test), device=device
            )
        timings["seconds_scoring"] = result.scoring_seconds + time.perf_counter() - started
        timings["seconds_selecting"] = result.selecting_seconds
        ctx.progress("selecting", 1.0)

    started = time.perf_counter()
    ctx.progress("saving", 0.0)
    entries = [
        {
            "item_id": pool.candidates[i][0],
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
    timings["seconds_saving"] = time.perf_counter() - started
    metrics.update({key: round(value, 4) for key, value in timings.items()})
    with unit_of_work() as db:
        if not rounds.save_selection(db, round_id=plan.round_id, entries=entries, metrics=metrics):
            raise JobCanceled(f"round {plan.round_id} was canceled before its batch was saved")
    log.info("round %s: %s selected by %s; %s", plan.round_id, len(entries), plan.strategy, metrics)
    return {"round_id": plan.round_id, "selected": len(entries), "metrics": metrics}


# ---- core-set ----


def run_coreset(ctx: JobContext) -> dict[str, Any]:
    """Choose the given fraction of the labelled pool to train the target on."""
    assert ctx.project_id is not None
    params = ctx.params
    proxy, strategy, seed = params["proxy"], params["strategy"], int(params["seed"])
    fraction = float(params["fraction"])
    size = int(proxy.get("image_size") or 32)
    device = engine.device()
    ctx.progress("loading", 0.0)
    pool = _read_pool(ctx.project_id, candidates=False)
    if len(pool.labeled) < 2:
        raise ValueError("a core-set needs at least 2 labelled pool items")
    images = _load_images(ctx, [r[1] for r in pool.labeled + pool.test], size)
    lab_x, test_x = images[: len(pool.labeled)], images[len(pool.labeled) :]
    y = _labels(pool.labeled)

    started = time.perf_counter()
    ctx.progress("training", 0.0)
    trained = engine.train(
        proxy["arch"],
        lab_x,
        y,
        num_classes=len(pool.classes),
        epochs=int(proxy["epochs"]),
        batch_size=int(proxy["batch_size"]),
        lr=proxy.get("lr"),
        seed=seed,
        device=device,
        on_epoch=_epoch_reporter(ctx, "training", int(proxy["epochs"])),
        track_forgetting=strategy == "forgetting",
    )
    seconds_training = time.perf_counter() - started
    started = time.perf_counter()
    ctx.progress("scoring", 0.0)
    accuracy = None
    if pool.test:
        accuracy = svp.evaluate(trained.model, test_x, _labels(pool.test), device=device)
    # Every labelled item is a candidate for the core-set; forgetting ranks by its counts.
    result = svp.coreset(
        trained.model,
        lab_x,
        fraction,
        strategy,
        forgetting=trained.forgetting,
        seed=seed,
        device=device,
    )
    seconds_scoring = time.perf_counter() - started - result.selecting_seconds
    seconds_selecting = result.selecting_seconds
    ctx.progress("selecting", 1.0)
    ids = [pool.labeled[i][0] for i in result.indices]
    return {
        "items": ids,
        "scores": result.scores,
        "fraction": fraction,
        "strategy": strategy,
        "size": len(ids),
        "labeled": len(pool.labeled),
        "test_labeled": len(pool.test),
        "proxy": proxy,
        "seed": seed,
        "proxy_test_accuracy": accuracy,
        "seconds_training": round(seconds_training, 4),
        "seconds_scoring": round(seconds_scoring, 4),
        "seconds_selecting": round(seconds_selecting, 4),
    }


# ---- evaluation ----


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    """Train the target from scratch on every label and measure it on the labelled test split."""
    assert ctx.project_id is not None
    target, seed = ctx.params["target"], int(ctx.params["seed"])
    size = int(target.get("image_size") or 32)
    device = engine.device()
    ctx.progress("loading", 0.0)
    pool = _read_pool(ctx.project_id, candidates=False)
    if not pool.labeled or not pool.test:
        raise ValueError("an evaluation needs labelled pool items and labelled test items")
    images = _load_images(ctx, [r[1] for r in pool.labeled + pool.test], size)
    lab_x, test_x = images[: len(pool.labeled)], images[len(pool.labeled) :]
    started = time.perf_counter()
    ctx.progress("training", 0.0)
    trained = engine.train(
        target["arch"],
        lab_x,
        _labels(pool.labeled),
        num_classes=len(pool.classes),
        epochs=int(target["epochs"]),
        batch_size=int(target["batch_size"]),
        lr=target.get("lr"),
        seed=seed,
        device=device,
        on_epoch=_epoch_reporter(ctx, "training", int(target["epochs"])),
    )
    seconds_training = time.perf_counter() - started
    ctx.progress("scoring", 0.0)
    accuracy = svp.evaluate(trained.model, test_x, _labels(pool.test), device=device)
    with unit_of_work(write=False) as db:
        rounds_done = db.scalar(
            select(Round.number)
            .where(Round.project_id == ctx.project_id, Round.status == RoundStatus.completed)
            .order_by(Round.number.desc())
            .limit(1)
        )
    return {
        "target": target["arch"],
        "epochs": int(target["epochs"]),
        "labels": len(pool.labeled),
        "test_items": len(pool.test),
        "accuracy": accuracy,
        "rounds_completed": rounds_done or 0,
        "seed": seed,
        "seconds_training": round(seconds_training, 4),
        "device": str(device),
    }


__all__ = ["run_coreset", "run_evaluate", "run_round"]
