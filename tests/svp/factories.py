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
