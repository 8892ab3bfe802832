"""Engine settings as frozen dataclasses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

# The paper's schedule for its 181-epoch ResNets: 0.01 for one warm-up epoch, then 0.1,
# divided by 10 at epochs 91 and 136 (Coleman et al. 2020, after He et al. 2016).
PAPER_SCHEDULE: tuple[tuple[int, float], ...] = ((1, 0.01), (91, 0.1), (136, 0.01), (181, 0.001))


def scaled_schedule(
    epochs: int, lr: float = 0.1, warmup: bool = True
) -> tuple[tuple[int, float], ...]:
    """The paper's piecewise schedule shrunk to ``epochs``: decays at 1/2 and 3/4 of the run."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    steps: list[tuple[int, float]] = []
    # The warm-up only pays when there are epochs left after it to use the full rate.
    if warmup and epochs >= 4:
        steps.append((1, lr / 10))
    for end, rate in (
        (round(epochs * 0.5), lr),
        (round(epochs * 0.75), lr / 10),
        (epochs, lr / 100),
    ):
        if end > (steps[-1][0] if steps else 0):
            steps.append((end, rate))
    return tuple(steps)


# scikit-learn's OpenMP and BLAS threads for PCA, k-means and the heads. Measured on 2 shared
# cores with other jobs running: k-means of 50,000 x 128 into 500 clusters took 1.4 s on one
# thread and 20-44 s on two (OpenMP threads spin while they wait for a busy core). A worker
# runs one process a core, so one thread is the robust default.
SKLEARN_THREADS = 1


@dataclass(frozen=True)
class TrainConfig:
    """How to train a model: SGD with momentum, a piecewise-constant learning rate, seeded."""

    # (last epoch, learning rate) pairs, epochs counted from 1: lr applies up to that epoch.
    lr_schedule: tuple[tuple[int, float], ...] = PAPER_SCHEDULE
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    seed: int = 0
    augment: bool = True
    # "data": per-channel statistics of the training images; "cifar": CIFAR-10's, fixed.
    normalize: str = "data"
    # None leaves torch's own thread count alone (a worker may set it once for the process).
    num_threads: int | None = None
    # None: CUDA when available, else CPU.
    device: str | None = None
    # NHWC memory helps oneDNN's convolutions on CPU for most of the zoo (see bench/svp_kernels).
    channels_last: bool = True
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if not self.lr_schedule:
            raise ValueError("lr_schedule needs at least one (epoch, lr) step")
        ends = [e for e, _ in self.lr_schedule]
        if ends[0] < 1 or any(b <= a for a, b in itertools.pairwise(ends)):
            raise ValueError(f"lr_schedule epochs must increase from 1: {ends}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        if self.normalize not in ("data", "cifar"):
            raise ValueError(f"normalize must be 'data' or 'cifar', not {self.normalize!r}")

    @property
    def epochs(self) -> int:
        """Total epochs: the end of the last schedule step."""
        return self.lr_schedule[-1][0]

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a 1-based epoch."""
        for end, lr in self.lr_schedule:
            if epoch <= end:
                return lr
        return self.lr_schedule[-1][1]

    @classmethod
    def paper(cls, **overrides: Any) -> TrainConfig:
        """The paper's full schedule for targets: 181 epochs with a one-epoch warm-up."""
        return replace(cls(), **overrides)

    @classmethod
    def truncated(cls, epochs: int, lr: float = 0.1, **overrides: Any) -> TrainConfig:
        """A shortened schedule of the same shape, as the paper trains its proxies."""
        return replace(cls(lr_schedule=scaled_schedule(epochs, lr)), **overrides)
