"""Training for the torch runners, and the device it and embedding run on.

A proxy setting of the API (``{arch, epochs, batch_size, lr, image_size}``) becomes the engine's
``TrainConfig`` here, so the runners never build one. Selection itself is the engine's own
``svp.select`` / ``svp.cold_start`` / ``svp.coreset``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from app.settings import get_settings
from svp.config import TrainConfig
from svp.device import pick_device
from svp.train import TrainResult
from svp.train import train as svp_train

# The paper's proxies train with SGD at 0.1 on batches of 128 (Coleman et al. 2020).
DEFAULT_LR = 0.1


def device() -> torch.device:
    """The device from ``SVP_TORCH_DEVICE``, else CUDA when available, else the CPU."""
    return pick_device(get_settings().torch_device or None)


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
