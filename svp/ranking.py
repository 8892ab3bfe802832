"""Ranking a pool: which of its items are labelled, and positions by score."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def top_k(scores: Tensor, k: int) -> Tensor:
    """Positions of the k highest scores; ties go to the earlier position (stable, reproducible)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def labeled_mask(labeled: Tensor | Sequence[int], n: int) -> Tensor:
    """A boolean mask of length n from a mask or from indices."""
    t = torch.as_tensor(labeled)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ValueError(f"labelled mask has shape {tuple(t.shape)}, pool has {n} items")
        return t.clone()
    mask = torch.zeros(n, dtype=torch.bool)
    idx = t.to(torch.int64).reshape(-1)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError("labelled index out of range of the pool")
    mask[idx] = True
    return mask
