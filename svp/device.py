"""Where torch runs: the device a caller names (or the best one here), and its thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def pick_device(name: str | None = None) -> torch.device:
    """The named device, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_key(device: torch.device) -> torch.device:
    """The device with its index filled in, so "cuda" and "cuda:0" name one cache slot."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch threads (None: leave the count alone)."""
    # torch's thread count is process-wide: put back what the caller had.
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
