"""What the torch runners read and fit: the pool, a proxy's setting, the engine's inputs, a model.

The three runners (``worker/rounds.py``, ``worker/coresets.py``, ``worker/evaluations.py``) share
one path: read the pool (``read_pool``), turn it into the engine's inputs (``load_inputs``: uint8
pixels for a proxy trained from scratch, a backbone's embeddings for a ``linear`` one or a
clustering strategy), and fit a model on the labelled rows (``fit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sqlalchemy import select
from torch import nn

from app.db import unit_of_work
from app.embeddings.schemas import known_backbones
from app.items.models import Item, Split
from app.items.storage import image_path
from app.jobs.runtime import JobContext
from app.projects.models import Project
from app.rounds import service as rounds
from app.settings import get_settings
from svp.data import ImageStore
from svp.heads import fit_linear_head
from worker import training
from worker.embed import EmbeddingReport, ensure_embeddings

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


def read_pool(project_id: int, *, candidates: bool) -> Pool:
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


@lru_cache(maxsize=8)
def _store(cache_dir: str, image_size: int) -> ImageStore:
    return ImageStore(cache_dir, image_size)


def _image_store(cache_dir: Path | str, image_size: int) -> ImageStore:
    """The content-keyed image cache of one size, shared by the jobs of this process."""
    store = _store(str(cache_dir), image_size)
    # Another worker may have appended rows since this process last looked.
    store.refresh()
    return store


def load_pixels(ctx: JobContext, keys: Sequence[str], image_size: int) -> torch.Tensor:
    """Images by content hash through the engine's memory-mapped cache; decodes only new ones."""
    settings = get_settings()
    store = _image_store(settings.cache_dir, image_size)
    missing = [h for h in dict.fromkeys(keys) if h not in store]
    for start in range(0, len(missing), LOAD_CHUNK):
        chunk = missing[start : start + LOAD_CHUNK]
        store.add_many((h, image_path(settings.images_dir, h)) for h in chunk)
        ctx.progress("loading", (start + len(chunk)) / max(len(missing), 1))
    return (
        store.load(list(keys))
        if keys
        else torch.empty((0, 3, image_size, image_size), dtype=torch.uint8)
    )


def load_embeddings(
    ctx: JobContext, keys: Sequence[str], spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The backbone's embeddings of the keys, embedding what is missing first (fanned out)."""
    if spec.backbone is None:
        raise ValueError("this proxy names no backbone to embed with")
    # A from-scratch proxy with a clustering strategy embeds at the backbone's own side.
    size = spec.image_size if spec.linear else known_backbones()[spec.backbone]
    store = ensure_embeddings(ctx, keys, spec.backbone, size, report=report)
    return store.load(list(keys)) if keys else torch.empty(0, 0)


def load_inputs(
    ctx: JobContext, pool: Pool, spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The engine's input rows for candidates, labelled and test items, in that order."""
    keys = pool.keys()
    if spec.linear:
        return load_embeddings(ctx, keys, spec, report)
    return load_pixels(ctx, keys, spec.image_size)


def label_tensor(rows: Sequence[PoolRow]) -> torch.Tensor:
    """The rows' class indices as the engine's label tensor."""
    return torch.tensor([r.label for r in rows], dtype=torch.int64)


def _epoch_reporter(ctx: JobContext, stage: str, epochs: int) -> Callable[[int], None]:
    def report(epoch: int) -> None:
        # Raises JobCanceled when a cancel was asked: training stops at this epoch's end.
        ctx.progress(stage, epoch / max(epochs, 1))

    return report


def fit(
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
    trained = training.train(
        spec.arch,
        x,
        y,
        num_classes=num_classes,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=seed,
        device=training.device(),
        on_epoch=_epoch_reporter(ctx, "training", spec.epochs),
        track_forgetting=track_forgetting,
    )
    return Fitted(trained.model, trained.forgetting, time.perf_counter() - started)


def fit_on_labels(
    ctx: JobContext, pool: Pool, spec: TrainSpec, *, seed: int, track_forgetting: bool = False
) -> tuple[torch.Tensor, Fitted]:
    """Inputs of a pool read without candidates (labelled rows, then test) and a model fitted."""
    assert not pool.candidates, "the labelled rows must come first"
    inputs = load_inputs(ctx, pool, spec)
    fitted = fit(
        ctx,
        spec,
        inputs[: len(pool.labeled)],
        label_tensor(pool.labeled),
        num_classes=len(pool.classes),
        seed=seed,
        track_forgetting=track_forgetting,
    )
    return inputs, fitted
