"""Text targets: VDCNN (Conneau et al. 2017), character-level, and ``linear`` on text embeddings.

Texts are quantised once into an ``N x L`` uint8 tensor of character codes (the paper's alphabet,
lower-cased, truncated or padded to ``max_length``; 1014 in the paper). That tensor is a pool the
rest of the engine already takes: ``predict``, ``evaluate`` and ``select`` hand uint8 inputs to
the model scaled to [0, 1] as they do pixels, and ``VDCNN.forward`` turns them back into codes.

The network: a 16-d character embedding, a 64-filter temporal convolution, four levels of
convolutional blocks (64, 128, 256, 512 filters; each block two size-3 convolutions with batch
norm and ReLU; a stride-2 max-pool between levels), k-max pooling (k = 8), and three fully
connected layers (2048, 2048, classes). Depth 9, 17 and 29 are the paper's block counts per
level: (1, 1, 1, 1), (2, 2, 2, 2) and (5, 5, 2, 2), i.e. 2 x blocks convolutions plus the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from svp.config import TrainConfig
from svp.device import pick_device, torch_threads
from svp.heads import fit_linear_head
from svp.train import (
    ProgressFn,
    TrainStats,
    denormals_flushed,
    run_epochs,
    seed_everything,
)

# The paper's alphabet; with padding (0), unknown (1) and space (2) it makes 69 tokens.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/|_#$%^&*~`+=<>()[]{}"
PAD, UNKNOWN, SPACE = 0, 1, 2
VOCAB = len(ALPHABET) + 3
PAPER_MAX_LENGTH = 1014
# Conv blocks per level (64, 128, 256, 512 filters) by depth, from the paper's Table 2.
DEPTH_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    9: (1, 1, 1, 1),
    17: (2, 2, 2, 2),
    29: (5, 5, 2, 2),
}
TEXT_TARGETS = {"vdcnn": 9, "vdcnn9": 9, "vdcnn17": 17, "vdcnn29": 29}
LINEAR_TARGET = "linear"


def _lookup() -> np.ndarray:
    table = np.full(128, UNKNOWN, dtype=np.uint8)
    for i, ch in enumerate(ALPHABET):
        table[ord(ch)] = i + 3
    for ch in " \t\n\r\x0b\x0c":
        table[ord(ch)] = SPACE
    return table


_LOOKUP = _lookup()


def encode_texts(texts: Sequence[str], max_length: int = PAPER_MAX_LENGTH) -> Tensor:
    """Quantise texts into an ``N x max_length`` uint8 tensor of character codes (0 pads)."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    out = np.zeros((len(texts), max_length), dtype=np.uint8)
    for row, text in enumerate(texts):
        # UTF-32 gives one code point per character without a Python loop over characters.
        cps = np.frombuffer(text[:max_length].lower().encode("utf-32-le"), dtype=np.uint32)
        out[row, : cps.size] = np.where(cps < 128, _LOOKUP[np.minimum(cps, 127)], UNKNOWN)
    return torch.from_numpy(out)


class ConvBlock(nn.Module):
    """Two temporal convolutions of size 3, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Same length, ``out_channels`` filters."""
        out: Tensor = self.body(x)
        return out


def kmax_pool(x: Tensor, k: int) -> Tensor:
    """The k largest values of each channel over time, kept in their temporal order."""
    idx = x.topk(k, dim=2).indices.sort(dim=2).values
    return x.gather(2, idx)


class VDCNN(nn.Module):
    """Very deep character-level CNN; ``forward`` returns ``(logits, penultimate features)``."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 9,
        *,
        embed_dim: int = 16,
        k: int = 8,
        hidden: int = 2048,
        width: int = 64,
    ) -> None:
        super().__init__()
        if depth not in DEPTH_BLOCKS:
            raise ValueError(f"VDCNN depth is one of {sorted(DEPTH_BLOCKS)}, not {depth}")
        self.depth = depth
        self.k = k
        self.embed = nn.Embedding(VOCAB, embed_dim, padding_idx=PAD)
        # width is the paper's 64 filters at the first level (doubling at each); smaller widths
        # are for quick CPU checks, not the paper's network.
        layers: list[nn.Module] = [nn.Conv1d(embed_dim, width, 3, padding=1)]
        channels = width
        for level, blocks in enumerate(DEPTH_BLOCKS[depth]):
            if level:
                layers.append(nn.MaxPool1d(3, stride=2, padding=1))
            for _ in range(blocks):
                layers.append(ConvBlock(channels, width << level))
                channels = width << level
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(channels * k, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, num_classes)

    @property
    def min_length(self) -> int:
        """Shortest input that leaves k positions after the three halvings."""
        return self.k * 8

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features of character codes (integers, or uint8 codes scaled by 1/255)."""
        # predict/evaluate/select pass uint8 pools through to_float (x / 255), as for pixels.
        codes = (x * 255).round().long() if x.is_floating_point() else x.long()
        if codes.shape[1] < self.min_length:
            codes = F.pad(codes, (0, self.min_length - codes.shape[1]), value=PAD)
        h = self.conv(self.embed(codes).transpose(1, 2))
        feats: Tensor = self.head(kmax_pool(h, self.k).flatten(1))
        return self.fc(feats), feats


def create_text_target(name: str, num_classes: int, **sizes: int) -> VDCNN:
    """A VDCNN by target name: ``vdcnn`` (depth 9), ``vdcnn9``, ``vdcnn17``, ``vdcnn29``;
    ``sizes`` (width, hidden, k, embed_dim) default to the paper's."""
    if name not in TEXT_TARGETS:
        raise KeyError(f"unknown text target {name!r}; known: {text_target_names()}")
    return VDCNN(num_classes, TEXT_TARGETS[name], **sizes)


def text_target_names() -> list[str]:
    """Targets an evaluation on text may name."""
    return sorted([*TEXT_TARGETS, LINEAR_TARGET])


def vdcnn_config(epochs: int, **overrides: object) -> TrainConfig:
    """The paper's optimiser for VDCNN (SGD, lr 0.01, momentum 0.9, batch 128), over ``epochs``
    with the engine's truncated schedule; no augmentation."""
    base = {"batch_size": 128, "augment": False, "channels_last": False, **overrides}
    lr = float(base.pop("lr", 0.01))  # type: ignore[arg-type]
    return TrainConfig.truncated(epochs, lr=lr, **base)


@dataclass(frozen=True)
class TextFit:
    """A trained text target (in eval mode) and its stats."""

    model: nn.Module
    stats: TrainStats


def train_vdcnn(
    model: VDCNN | str,
    codes: Tensor,
    labels: Tensor,
    config: TrainConfig,
    *,
    num_classes: int | None = None,
    progress: ProgressFn | Callable[[int, int, float, float], bool | None] | None = None,
) -> TextFit:
    """Train a VDCNN (or a target name, built after seeding) on ``N x L`` character codes."""
    if codes.ndim != 2 or codes.dtype != torch.uint8:
        raise ValueError("codes must be an N x L uint8 tensor (encode_texts)")
    n = codes.shape[0]
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"need one label per text and at least one text (got {n})")
    seed_everything(config.seed)
    if isinstance(model, str):
        if num_classes is None:
            raise ValueError("num_classes is required when building a model by name")
        model = create_text_target(model, num_classes)
    net: VDCNN = model
    with denormals_flushed(), torch_threads(config.num_threads):
        device = pick_device(config.device)
        gen = torch.Generator().manual_seed(config.seed)
        net = net.to(device)
        codes_d = codes.to(device)
        labels_d = labels.to(device=device, dtype=torch.int64)
        stats = run_epochs(
            net, labels_d, config, inputs=lambda idx: codes_d[idx], generator=gen, progress=progress
        )
    net.eval()
    return TextFit(net, stats)


def fit_text_target(
    name: str,
    labels: Tensor,
    num_classes: int,
    config: TrainConfig,
    *,
    codes: Tensor | None = None,
    features: Tensor | None = None,
    progress: ProgressFn | Callable[[int, int, float, float], bool | None] | None = None,
) -> TextFit:
    """Train an evaluation's text target: a VDCNN on character codes, or ``linear`` (the
    calibrated logistic head of ``svp.heads``) on the backbone's text embeddings."""
    if name == LINEAR_TARGET:
        if features is None:
            raise ValueError("the linear target trains on text embeddings: pass features")
        start = time.perf_counter()
        head = fit_linear_head(features, labels, num_classes, seed=config.seed)
        stats = TrainStats(
            seconds=time.perf_counter() - start,
            epochs=1,
            examples=int(labels.shape[0]),
            final_train_acc=float("nan"),
        )
        return TextFit(head.model, stats)
    if codes is None:
        raise ValueError(f"{name} trains on character codes: pass codes (encode_texts)")
    return train_vdcnn(name, codes, labels, config, num_classes=num_classes, progress=progress)
