"""Metrics: accuracy, Spearman rank correlation (ties averaged), batch overlap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy from class indices (N) or scores/probabilities (N x K)."""
    pred = predictions.argmax(1) if predictions.ndim == 2 else predictions
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise ValueError("accuracy of nothing is undefined")
    return float((pred.cpu() == labels.cpu()).double().mean().item())


def rankdata(values: ArrayLike) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's 'average')."""
    x = _np(values).ravel()
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_group = np.empty(n, dtype=bool)
    if n:
        new_group[0] = True
        new_group[1:] = xs[1:] != xs[:-1]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    mean_rank = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman's rank correlation of two score vectors of the same items (NaN if constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.shape != rb.shape:
        raise ValueError(f"score vectors differ in length: {ra.size} and {rb.size}")
    if ra.size < 2:
        return float("nan")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def overlap(a: Sequence[int] | Tensor, b: Sequence[int] | Tensor) -> float:
    """|A ∩ B| / |A| for two selected batches of item indices."""
    sa = set(torch.as_tensor(a).tolist()) if isinstance(a, Tensor) else set(a)
    sb = set(torch.as_tensor(b).tolist()) if isinstance(b, Tensor) else set(b)
    if not sa:
        raise ValueError("overlap with an empty batch is undefined")
    return len(sa & sb) / len(sa)
