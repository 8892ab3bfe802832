"""The round runners' thin adapter over the engine (svp/): one call per step, with defaults.

It keeps worker/rounds.py free of the engine's configuration details: a proxy setting of the
API (``{arch, epochs, batch_size, lr, image_size}``) becomes a ``TrainConfig`` here, and the
selection call has one shape for every strategy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from svp.config import TrainConfig
from svp.data import ImageStore
from svp.train import TrainResult, pick_device
from svp.train import predict as svp_predict
from svp.train import train as svp_train

# The paper's proxies train with SGD at 0.1 on batches of 128 (Coleman et al. 2020).
DEFAULT_LR = 0.1
# Entropy and friends take a log of probabilities; a clamp keeps a hard zero from turning NaN.
EPS = 1e-12
# k-centre distances are computed against this many candidates at a time, so memory stays
# O(pool) whatever the batch size (the reference code keeps |selected| x |pool|).
KCENTER_CHUNK = 65_536


@lru_cache(maxsize=8)
def _store(cache_dir: str, image_size: int) -> ImageStore:
    return ImageStore(cache_dir, image_size)


def image_store(cache_dir: Path | str, image_size: int) -> ImageStore:
    """The content-keyed image cache of one size, shared by the jobs of this process."""
    store = _store(str(cache_dir), image_size)
    # Another worker may have appended rows since this process last looked.
    store.refresh()
    return store


def empty_images(image_size: int) -> Tensor:
    """A batch of no images, shaped like the cache's."""
    return torch.empty((0, 3, image_size, image_size), dtype=torch.uint8)


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return pick_device(os.environ.get("SVP_TORCH_DEVICE") or None)


def train(
    arch: str,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[int], None],
    track_forgetting: bool = False,
) -> TrainResult:
    """Train ``arch`` from scratch in train mode with augmentation; ``on_epoch`` may raise."""
    config = TrainConfig.truncated(
        epochs,
        lr or DEFAULT_LR,
        batch_size=min(batch_size, max(len(images), 2)),
        seed=seed,
        device=str(device),
    )
    return svp_train(
        arch,
        images,
        labels,
        config,
        num_classes=num_classes,
        progress=lambda epoch, total, loss, acc: on_epoch(epoch),
        track_forgetting=track_forgetting,
    )


@dataclass(frozen=True)
class Scored:
    """Softmax probabilities and penultimate features, on the CPU."""

    probs: Tensor
    features: Tensor


def predict(model: torch.nn.Module, images: Tensor, *, device: torch.device) -> Scored:
    """Score images in eval mode without augmentation."""
    p = svp_predict(model, images, device=device)
    return Scored(probs=p.probs, features=p.features)


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy."""
    if len(labels) == 0:
        return float("nan")
    return float((probs.argmax(1) == labels).double().mean().item())


def pixel_features(images: Tensor, side: int = 8) -> Tensor:
    """Cold-start features: images pooled to ``side`` x ``side``, flattened, on [0, 1]."""
    x = images.to(torch.float32) / 255.0
    if x.shape[-1] > side:
        x = torch.nn.functional.adaptive_avg_pool2d(x, side)
    return x.flatten(1)


def top_k(scores: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest scores, highest first (ties by index), and their scores."""
    s = scores.double().numpy()
    # A stable sort on the negated scores breaks ties by position: reproducible batches.
    order = np.argsort(-s, kind="stable")[:k]
    return order, s[order]


def uncertainty(strategy: str, probs: Tensor) -> Tensor:
    """Higher is more worth labelling: least confidence, entropy or (small) margin."""
    p = probs.double()
    if strategy == "least_confidence":
        return 1.0 - p.max(dim=1).values
    if strategy == "entropy":
        return -(p * p.clamp_min(EPS).log()).sum(dim=1)
    if strategy == "margin":
        if p.shape[1] < 2:
            return torch.zeros(p.shape[0], dtype=torch.float64)
        top2 = p.topk(2, dim=1).values
        return 1.0 - (top2[:, 0] - top2[:, 1])
    raise ValueError(f"{strategy!r} is not an uncertainty strategy")


def kcenter(
    features: Tensor, k: int, *, centres: Tensor | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-centres: repeatedly take the point farthest from every centre so far.

    ``centres`` (the labelled set) start the cover; without any, the first pick is random. The
    score of a pick is its distance to the nearest centre when it was taken.
    """
    x = features.double()
    n = x.shape[0]
    if k > n:
        raise ValueError(f"cannot pick {k} of {n} points")
    min_d = torch.full((n,), float("inf"), dtype=torch.float64)
    if centres is not None and len(centres):
        c = centres.double()
        for i in range(0, n, KCENTER_CHUNK):
            d = torch.cdist(x[i : i + KCENTER_CHUNK], c).min(dim=1).values
            min_d[i : i + KCENTER_CHUNK] = d
    chosen: list[int] = []
    scores: list[float] = []
    rng = np.random.default_rng(seed)
    for _ in range(k):
        # With no centre yet every distance is infinite: the first pick is a seeded draw.
        unseeded = bool(torch.isinf(min_d).all())
        pick = int(rng.integers(n)) if unseeded else int(torch.argmax(min_d).item())
        chosen.append(pick)
        scores.append(float(min_d[pick]) if not torch.isinf(min_d[pick]) else 0.0)
        d = (x - x[pick]).pow(2).sum(dim=1).sqrt()
        torch.minimum(min_d, d, out=min_d)
        # Never again: a chosen point is its own centre, at distance zero.
        min_d[pick] = -1.0
    out = np.asarray(chosen, dtype=np.int64)
    assert len(set(chosen)) == len(chosen), "k-centres picked a point twice"
    return out, np.asarray(scores)


def select(
    strategy: str,
    k: int,
    *,
    probs: Tensor | None = None,
    features: Tensor | None = None,
    labeled_features: Tensor | None = None,
    seed: int,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the candidates with a strategy; returns (indices of the ``k`` chosen, their scores)."""
    size = n
    for t in (probs, features):
        if t is not None:
            size = t.shape[0]
    if size is None:
        raise ValueError("select needs probabilities, features or n")
    if not 1 <= k <= size:
        raise ValueError(f"cannot select {k} of {size} candidates")
    if strategy == "random":
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(size)[:k]
        return chosen, np.zeros(k)
    if strategy == "kcenter":
        if features is None:
            raise ValueError("kcenter needs features")
        chosen, scores = kcenter(features, k, centres=labeled_features, seed=seed)
    else:
        if probs is None:
            raise ValueError(f"{strategy} needs probabilities")
        chosen, scores = top_k(uncertainty(strategy, probs), k)
    assert len(np.unique(chosen)) == len(chosen), "a candidate was selected twice"
    return chosen, scores
