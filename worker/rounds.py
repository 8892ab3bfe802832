"""Runners of the torch jobs: a labelling round, a core-set, an evaluation.

Each is ``fn(ctx: JobContext) -> dict``, run by ``app.jobs.runtime.run_job`` in a worker. They
read ids and labels in short transactions, do the torch work outside any transaction, and write
results in one; every round write goes through ``app.rounds.service`` (the batch through its
``save_batch``, which completes it when it is labelled already). A runner is idempotent:
a redelivered round reloads its row first, and one that already has its batch returns at once.

All three share one path: read the pool (``_read_pool``), turn it into the engine's inputs
(``_inputs``: uint8 pixels for a proxy trained from scratch, a backbone's embeddings for a
``linear`` one or a clustering strategy), and fit a model on the labelled rows (``_fit``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

import svp
from app.db import unit_of_work
from app.items.models import Item, Split
from app.items.storage import image_path
from app.jobs.runtime import JobCanceled, JobContext, pause_point
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus
from app.rounds.schemas import EMBEDDING_STRATEGIES
from app.settings import get_settings
from svp.heads import fit_linear_head
from worker import round_engine as engine
from worker.embed import EmbeddingReport, ensure_embeddings

log = logging.getLogger("svp.worker.rounds")

# Images decoded per progress report while the cache fills: a report is one tiny transaction.
LOAD_CHUNK = 2048


class PoolRow(NamedTuple):
    """One item as a runner sees it: its id, content hash, and class index (-1: unlabelled)."""

    item_id: int
    key: str
    label: int


@dataclass
class Pool:
    """What a runner reads from the database."""

    classes: list[str]
    candidates: list[PoolRow] = field(default_factory=list)  # unlabelled, not in an open batch
    labeled: list[PoolRow] = field(default_factory=list)
    test: list[PoolRow] = field(default_factory=list)
    pool_total: int = 0

    def keys(self) -> list[str]:
        """Content hashes in input order: candidates, labelled, test."""
        return [r.key for r in (*self.candidates, *self.labeled, *self.test)]


@dataclass(frozen=True)
class TrainSpec:
    """A resolved proxy (or target) setting, typed: what to fit and on which inputs."""

    arch: str
    image_size: int
    backbone: str | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float | None = None

    @classmethod
    def from_proxy(cls, proxy: dict[str, Any]) -> TrainSpec:
        """From a round's stored ``proxy`` (app.rounds.service.resolve_proxy's output)."""
        return cls(
            arch=str(proxy["arch"]),
            image_size=int(proxy.get("image_size") or 32),
            backbone=proxy.get("backbone"),
            epochs=int(proxy.get("epochs") or 1),
            batch_size=int(proxy.get("batch_size") or 128),
            lr=proxy.get("lr"),
        )

    @property
    def linear(self) -> bool:
        """Whether this is a head on a frozen backbone's embeddings."""
        return self.arch == "linear"


@dataclass
class Fitted:
    """A model fitted on the labelled rows, with what the round's metrics report of it."""

    model: nn.Module
    forgetting: torch.Tensor | None
    seconds: float
    calibration: dict[str, Any] | None = None


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
                    pool.candidates.append(PoolRow(item_id, content_hash, -1))
            elif label in index:
                target = pool.labeled if split == Split.pool else pool.test
                target.append(PoolRow(item_id, content_hash, index[label]))
    return pool


def _pixels(ctx: JobContext, keys: Sequence[str], image_size: int) -> torch.Tensor:
    """Images by content hash through the engine's memory-mapped cache; decodes only new ones."""
    settings = get_settings()
    store = engine.image_store(settings.cache_dir, image_size)
    missing = [h for h in dict.fromkeys(keys) if h not in store]
    for start in range(0, len(missing), LOAD_CHUNK):
        chunk = missing[start : start + LOAD_CHUNK]
        store.add_many((h, image_path(settings.images_dir, h)) for h in chunk)
        ctx.progress("loading", (start + len(chunk)) / max(len(missing), 1))
    return store.load(list(keys)) if keys else engine.empty_images(image_size)


def _embeddings(
    ctx: JobContext, keys: Sequence[str], spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The backbone's embeddings of the keys, embedding what is missing first (fanned out)."""
    if spec.backbone is None:
        raise ValueError("this proxy names no backbone to embed with")
    # A from-scratch proxy with a clustering strategy embeds at the backbone's own side.
    size = spec.image_size if spec.linear else engine.backbone_size(spec.backbone)
    store = ensure_embeddings(ctx, keys, spec.backbone, size, report=report)
    return store.load(list(keys)) if keys else torch.empty(0, 0)


def _inputs(
    ctx: JobContext, pool: Pool, spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The engine's input rows for candidates, labelled and test items, in that order."""
    keys = pool.keys()
    if spec.linear:
        return _embeddings(ctx, keys, spec, report)
    return _pixels(ctx, keys, spec.image_size)


def _labels(rows: Sequence[PoolRow]) -> torch.Tensor:
    return torch.tensor([r.label for r in rows], dtype=torch.int64)


def _epoch_reporter(ctx: JobContext, stage: str, epochs: int) -> Callable[[int], None]:
    def report(epoch: int) -> None:
        # Raises JobCanceled when a cancel was asked: training stops at this epoch's end.
        ctx.progress(stage, epoch / max(epochs, 1))

    return report


def _fit(
    ctx: JobContext,
    spec: TrainSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    track_forgetting: bool = False,
) -> Fitted:
    """Fit the proxy (or target) on the labelled rows: a calibrated head, or a net from scratch."""
    started = time.perf_counter()
    ctx.progress("training", 0.0)
    if spec.linear:
        head = fit_linear_head(x, y, num_classes, seed=seed)
        ctx.progress("training", 1.0)
        return Fitted(
            model=head.model,
            forgetting=None,
            seconds=time.perf_counter() - started,
            calibration=head.calibration.as_dict(),
        )
    trained = engine.train(
        spec.arch,
        x,
        y,
        num_classes=num_classes,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=seed,
        device=engine.device(),
        on_epoch=_epoch_reporter(ctx, "training", spec.epochs),
        track_forgetting=track_forgetting,
    )
    return Fitted(trained.model, trained.forgetting, time.perf_counter() - started)


# ---- round ----


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


def _cold_strategy(plan: RoundPlan) -> str:
    """The first batch's strategy: the setting, with ``auto`` resolved by the inputs at hand."""
    if plan.cold_start != "auto":
        return plan.cold_start
    clusters = plan.spec.linear or plan.strategy in EMBEDDING_STRATEGIES
    return "typiclust" if clusters and plan.spec.backbone else "random"


def _select_batch(ctx: JobContext, plan: RoundPlan) -> dict[str, Any]:
    spec = plan.spec
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ctx.progress("loading", 0.0)
    pool = _read_pool(plan.project_id, candidates=True)
    k = min(plan.batch_size, len(pool.candidates))
    if k == 0:
        raise ValueError("the pool has no unlabelled items left to select from")
    n_cand, n_lab = len(pool.candidates), len(pool.labeled)
    cold = _cold_strategy(plan) if n_lab == 0 else None
    embedded = EmbeddingReport()
    # Clustering on a from-scratch proxy's first batch needs a backbone's embeddings too.
    if cold == "typiclust" or (cold == "kcenter" and spec.linear):
        inputs = _embeddings(ctx, pool.keys(), spec, embedded)
    elif cold == "kcenter":
        inputs = _pixels(ctx, [r.key for r in pool.candidates], spec.image_size)
    elif cold is not None:
        # A random first batch reads no image at all: one placeholder column per candidate.
        inputs = torch.zeros(n_cand, 1)
    else:
        inputs = _inputs(ctx, pool, spec, embedded)
    timings["seconds_loading"] = time.perf_counter() - started - embedded.seconds
    timings["seconds_embedding"] = embedded.seconds

    metrics: dict[str, Any] = {
        "labeled": n_lab,
        "pool": n_cand,
        "pool_total": pool.pool_total,
        "test_labeled": len(pool.test),
        "seed": plan.seed,
        "arch": spec.arch,
        "backbone": spec.backbone if spec.linear else None,
        "epochs": None if spec.linear else spec.epochs,
        "strategy": plan.strategy,
        "device": str(engine.device()),
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
        fitted = _fit(
            ctx,
            spec,
            inputs[n_cand : n_cand + n_lab],
            _labels(pool.labeled),
            num_classes=len(pool.classes),
            seed=plan.seed,
        )
        timings["seconds_training"] = fitted.seconds
        metrics["calibration"] = fitted.calibration
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
            device=engine.device(),
        )
        started = time.perf_counter()
        if pool.test:
            metrics["proxy_test_accuracy"] = svp.evaluate(
                fitted.model, inputs[n_cand + n_lab :], _labels(pool.test), device=engine.device()
            )
        timings["seconds_scoring"] = result.scoring_seconds + time.perf_counter() - started
        timings["seconds_selecting"] = result.selecting_seconds
        ctx.progress("selecting", 1.0)
    metrics["selection"] = result.details or None
    started = time.perf_counter()
    ctx.progress("saving", 0.0)
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


# ---- core-set ----


def run_coreset(ctx: JobContext) -> dict[str, Any]:
    """Choose the given fraction of the labelled pool to train the target on."""
    assert ctx.project_id is not None
    params = ctx.params
    spec = TrainSpec.from_proxy(params["proxy"])
    strategy, seed = str(params["strategy"]), int(params["seed"])
    fraction = float(params["fraction"])
    ctx.progress("loading", 0.0)
    pool = _read_pool(ctx.project_id, candidates=False)
    if len(pool.labeled) < 2:
        raise ValueError("a core-set needs at least 2 labelled pool items")
    if spec.linear and strategy == "forgetting":
        raise ValueError("forgetting events need a proxy trained from scratch, not linear")
    inputs = _inputs(ctx, pool, spec)
    n_lab = len(pool.labeled)
    fitted = _fit(
        ctx,
        spec,
        inputs[:n_lab],
        _labels(pool.labeled),
        num_classes=len(pool.classes),
        seed=seed,
        track_forgetting=strategy == "forgetting",
    )
    started = time.perf_counter()
    ctx.progress("scoring", 0.0)
    accuracy = None
    if pool.test:
        accuracy = svp.evaluate(
            fitted.model, inputs[n_lab:], _labels(pool.test), device=engine.device()
        )
    # Every labelled item is a candidate for the core-set; forgetting ranks by its counts.
    result = svp.coreset(
        fitted.model,
        inputs[:n_lab],
        fraction,
        strategy,
        forgetting=fitted.forgetting,
        seed=seed,
        device=engine.device(),
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


# ---- evaluation ----


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    """Train the target from scratch on every label and measure it on the labelled test split."""
    assert ctx.project_id is not None
    spec = TrainSpec.from_proxy(ctx.params["target"])
    seed = int(ctx.params["seed"])
    ctx.progress("loading", 0.0)
    pool = _read_pool(ctx.project_id, candidates=False)
    if not pool.labeled or not pool.test:
        raise ValueError("an evaluation needs labelled pool items and labelled test items")
    inputs = _inputs(ctx, pool, spec)
    n_lab = len(pool.labeled)
    fitted = _fit(
        ctx, spec, inputs[:n_lab], _labels(pool.labeled), num_classes=len(pool.classes), seed=seed
    )
    ctx.progress("scoring", 0.0)
    accuracy = svp.evaluate(
        fitted.model, inputs[n_lab:], _labels(pool.test), device=engine.device()
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
        "device": str(engine.device()),
    }


__all__ = ["Pool", "PoolRow", "TrainSpec", "run_coreset", "run_evaluate", "run_round"]
