"""The round runners' thin adapter over the engine (svp/): the cache, the device, training.

It keeps worker/rounds.py free of the engine's configuration details: a proxy setting of the
API (``{arch, epochs, batch_size, lr, image_size}``) becomes a ``TrainConfig`` here. Selection
itself is the engine's own ``svp.select`` / ``svp.cold_start`` / ``svp.coreset``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from app.embeddings.schemas import known_backbones
from app.jobs.broker import EMBED_HELP_TASK_NAME, send_task
from app.jobs.models import JobKind
from app.settings import get_settings
from svp.config import TrainConfig
from svp.data import ImageStore
from svp.device import pick_device
from svp.train import TrainResult
from svp.train import train as svp_train

# The paper's proxies train with SGD at 0.1 on batches of 128 (Coleman et al. 2020).
DEFAULT_LR = 0.1


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
    """The device from ``SVP_TORCH_DEVICE``, else CUDA when available, else the CPU."""
    return pick_device(get_settings().torch_device or None)


def backbone_size(name: str) -> int:
    """The side a backbone embeds at by default (its registry entry on the server's side)."""
    return known_backbones()[name]


def ask_for_help(job_id: int, backbone: str, image_size: int, *, count: int) -> None:
    """Send help requests for a job's embedding chunks through the broker."""
    for _ in range(count):
        send_task(EMBED_HELP_TASK_NAME, [job_id, backbone, image_size], kind=JobKind.embed)


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
