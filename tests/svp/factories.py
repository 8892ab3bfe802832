"""Small generated data for the engine's tests."""

from __future__ import annotations

import torch


def blobs(
    n: int = 240, k: int = 3, side: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: each class brightens its own colour channel (survives crops and flips)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    x = torch.randint(0, 60, (n, 3, side, side), generator=g).to(torch.uint8)
    q = side // 4
    for i in range(n):
        x[i, int(labels[i]) % 3, q : side - q, q : side - q] = 220
    return x, labels


# Synthetic features standing in for a backbone's embeddings: well-separated Gaussian blobs (one
# per class) plus a few far outliers, wider than the PCA's 128 dimensions so the projection runs.
BLOBS = 8
PER_BLOB = 40
DIM = 160
OUTLIERS = 6


def blob_pool(
    seed: int = 0, spread: float = 1.0, outliers: int = OUTLIERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and blob ids (-1 for outliers): blobs far apart, outliers farther still."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(BLOBS, DIM, generator=g)
    centres = 12.0 * centres / centres.norm(dim=1, keepdim=True)
    ids = torch.arange(BLOBS).repeat_interleave(PER_BLOB)
    x = centres[ids] + spread * torch.randn(len(ids), DIM, generator=g) / DIM**0.5 * 4
    # Outliers: each off in its own random direction, far from every blob.
    out = torch.randn(outliers, DIM, generator=g)
    out = 40.0 * out / out.norm(dim=1, keepdim=True)
    return torch.cat([x, out]), torch.cat([ids, torch.full((outliers,), -1)])


def blob_of(ids: torch.Tensor, picks: list[int]) -> list[int]:
    return [int(ids[i]) for i in picks]
