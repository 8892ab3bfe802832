"""Training and inference: seeded SGD with a piecewise schedule, forgetting events, scoring."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from svp.config import TrainConfig
from svp.data import augment, channel_stats, to_float
from svp.device import pick_device, torch_threads
from svp.models import CIFAR_MEAN, CIFAR_STD, Classifier, create_model


class ProgressFn(Protocol):
    """Called after each epoch; returning False cancels (so does raising)."""

    def __call__(self, epoch: int, total: int, loss: float, acc: float) -> bool | None: ...


class TrainingCancelled(Exception):
    """The progress callback asked the trainer to stop."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ForgettingTracker:
    """Counts forgetting events per example (Toneva et al. 2019) while a model trains."""

    def __init__(self, n: int) -> None:
        # -1: not presented yet; else correctness at the last presentation.
        self.last = torch.full((n,), -1, dtype=torch.int8)
        self.counts = torch.zeros(n, dtype=torch.int64)
        self.learned = torch.zeros(n, dtype=torch.bool)
        self.presentations = torch.zeros(n, dtype=torch.int64)

    def update(self, indices: Tensor, correct: Tensor) -> None:
        """Record the correctness of one presentation of each of ``indices``."""
        indices = indices.cpu()
        now = correct.cpu().to(torch.int8)
        # A forgetting event is a correct -> incorrect transition between presentations.
        self.counts[indices] += ((self.last[indices] == 1) & (now == 0)).long()
        self.learned[indices] |= now.bool()
        self.last[indices] = now
        self.presentations[indices] += 1

    def scores(self) -> Tensor:
        """Forgetting counts as scores, never-learned examples above any count (they rank first)."""
        never = float(self.presentations.max().item() + 1) if len(self.counts) else 1.0
        return torch.where(
            self.learned, self.counts.double(), torch.tensor(never, dtype=torch.float64)
        )


def forgetting_events(correct: Tensor) -> tuple[Tensor, Tensor]:
    """Counts and learned flags from a (presentations x examples) correctness history."""
    tracker = ForgettingTracker(correct.shape[1])
    idx = torch.arange(correct.shape[1])
    for row in correct:
        tracker.update(idx, row)
    return tracker.counts, tracker.learned


@dataclass(frozen=True)
class TrainStats:
    """What a training run measured."""

    seconds: float
    epochs: int
    examples: int
    final_train_acc: float
    losses: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    device: str = "cpu"


@dataclass(frozen=True)
class TrainResult:
    """A trained model (in eval mode), its stats, and forgetting scores when tracked."""

    model: Classifier
    stats: TrainStats
    forgetting: Tensor | None = None


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Indices 0..n-1 shuffled into batches of batch_size (a lone last one folded in)."""
    perm = torch.randperm(n, generator=generator)
    out = list(perm.split(batch_size))
    # BatchNorm cannot train on a batch of one: fold a lone straggler into the previous batch.
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


def _prepared(
    model: Classifier | str, images: Tensor, config: TrainConfig, *, num_classes: int | None
) -> Classifier:
    """The model to train (built by name after seeding), its input normalisation set."""
    if isinstance(model, str):
        if num_classes is None:
            raise ValueError("num_classes is required when building a model by name")
        net = create_model(model, num_classes, images.shape[1])
    else:
        net = model
    if config.normalize == "data":
        mean, std = channel_stats(images)
        net.normalize.set(mean, std)
    elif images.shape[1] == 3:
        net.normalize.set(CIFAR_MEAN, CIFAR_STD)
    return net


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero while training, and only then.

    Near-zero losses make denormal gradients, which run orders of magnitude slower on x86 CPUs.
    The switch is the whole process's (the CPU's FTZ/DAZ state): left on, it broke code that
    runs after a round in the same process (Hypothesis refuses to generate floats under it).
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def run_epochs(
    net: nn.Module,
    labels: Tensor,
    config: TrainConfig,
    *,
    inputs: Callable[[Tensor], Tensor],
    generator: torch.Generator,
    progress: ProgressFn | Callable[[int, int, float, float], bool | None] | None = None,
    on_batch: Callable[[Tensor, Tensor], None] | None = None,
) -> TrainStats:
    """SGD with the config's schedule over shuffled batches, every epoch; the stats it measured.

    ``inputs`` turns a batch's indices (on the labels' device) into the model's input, so image
    and text trainers share this loop; ``on_batch`` sees each batch's indices and which of them
    the model got right (forgetting events are counted from that).
    """
    n = labels.shape[0]
    device = labels.device
    opt = torch.optim.SGD(
        net.parameters(),
        lr=config.lr_at(1),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    losses: list[float] = []
    accs: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = config.lr_at(epoch)
        net.train()
        total_loss = torch.zeros((), device=device)
        total_correct = torch.zeros((), dtype=torch.int64, device=device)
        for idx in shuffled_batches(n, config.batch_size, generator):
            idx_d = idx.to(device)
            y = labels[idx_d]
            logits, _ = net(inputs(idx_d))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                correct = logits.argmax(1) == y
                total_loss += loss.detach() * len(idx)
                total_correct += correct.sum()
                if on_batch is not None:
                    on_batch(idx, correct)
        # One device sync per epoch, not per batch.
        losses.append(float(total_loss.item()) / n)
        accs.append(float(total_correct.item()) / n)
        if progress is not None and progress(epoch, config.epochs, losses[-1], accs[-1]) is False:
            raise TrainingCancelled(f"cancelled after epoch {epoch} of {config.epochs}")
    return TrainStats(
        seconds=time.perf_counter() - start,
        epochs=config.epochs,
        examples=n,
        final_train_acc=accs[-1],
        losses=losses,
        accs=accs,
        device=str(device),
    )


def train(
    model: Classifier | str,
    images: Tensor,
    labels: Tensor,
    config: TrainConfig,
    *,
    num_classes: int | None = None,
    progress: ProgressFn | Callable[[int, int, float, float], bool | None] | None = None,
    track_forgetting: bool = False,
) -> TrainResult:
    """Train a model (or a registry name, built after seeding) on uint8 images and int labels."""
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError("images must be an N x C x H x W uint8 tensor")
    n = images.shape[0]
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"need one label per image and at least one image (got {n})")
    seed_everything(config.seed)
    with denormals_flushed():
        net = _prepared(model, images, config, num_classes=num_classes)
        device = pick_device(config.device)
        gen = torch.Generator().manual_seed(config.seed)
        memory = torch.channels_last if config.channels_last else torch.contiguous_format
        net = net.to(device).to(memory_format=memory)
        # The set is small next to device memory: move it once, augment there.
        images_d = images.to(device)
        labels_d = labels.to(device=device, dtype=torch.int64)
        tracker = ForgettingTracker(n) if track_forgetting else None

        def batch(idx: Tensor) -> Tensor:
            x = images_d[idx]
            if config.augment:
                x = augment(x, gen)
            return to_float(x).contiguous(memory_format=memory)

        with torch_threads(config.num_threads):
            stats = run_epochs(
                net,
                labels_d,
                config,
                inputs=batch,
                generator=gen,
                progress=progress,
                on_batch=tracker.update if tracker is not None else None,
            )
        net.eval()
        return TrainResult(net, stats, tracker.scores() if tracker is not None else None)


@dataclass(frozen=True)
class Predictions:
    """Softmax probabilities and penultimate features of a batch of images, on the CPU."""

    probs: Tensor
    features: Tensor
    seconds: float


def predict(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
) -> Predictions:
    """Score uint8 images (or float embeddings) in eval mode, unaugmented, under inference_mode."""
    dev = pick_device(str(device) if device is not None else None)
    was_training = model.training
    model.eval()
    model.to(dev)
    # Match the layout the weights are in; a mismatch costs a conversion per layer on CPU.
    first = next(model.parameters(), None)
    cl = (
        first is not None
        and first.ndim == 4
        and first.is_contiguous(memory_format=torch.channels_last)
        and not first.is_contiguous()
    )
    memory = torch.channels_last if cl else torch.contiguous_format
    probs: list[Tensor] = []
    feats: list[Tensor] = []
    start = time.perf_counter()
    with torch_threads(num_threads), torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i : i + batch_size].to(dev)).contiguous(memory_format=memory)
            logits, f = model(x)
            probs.append(F.softmax(logits.float(), dim=1).cpu())
            feats.append(f.float().cpu())
    seconds = time.perf_counter() - start
    model.train(was_training)
    if not probs:
        return Predictions(torch.empty(0, 0), torch.empty(0, 0), seconds)
    return Predictions(torch.cat(probs), torch.cat(feats), seconds)


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of a model on uint8 images (or float embeddings), in eval mode."""
    from svp.metrics import accuracy

    return accuracy(predict(model, images, batch_size=batch_size, device=device).probs, labels)
