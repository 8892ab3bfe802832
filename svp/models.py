"""The model zoo: pre-activation ResNets for 32x32 inputs and small CPU proxies, by name.

Every model normalises its own input (per-channel mean/std kept as buffers, so they travel with
the state dict and scoring can never forget them) and its forward returns
``(logits, penultimate features)`` from the same pass: no hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# CIFAR-10 training-set statistics, the fallback when no data is at hand to compute them.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std on inputs in [0, 1]; the statistics are buffers."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        mean = CIFAR_MEAN if channels == 3 else (0.5,) * channels
        std = CIFAR_STD if channels == 3 else (0.25,) * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1))

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the statistics (e.g. with those of the training data)."""
        c = self.mean.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"expected {c} channel statistics, got {len(mean)} and {len(std)}")
        self.mean.copy_(torch.tensor(mean, dtype=self.mean.dtype).view(1, c, 1, 1))
        self.std.copy_(torch.tensor(std, dtype=self.std.dtype).view(1, c, 1, 1).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise a float batch in [0, 1]."""
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base of every registered model: ``forward(x) -> (logits, features)``."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of a normalised batch."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and penultimate features of a float batch in [0, 1]."""
        feats = self.features(self.normalize(x))
        return self.fc(feats), feats

    fc: nn.Linear


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings")."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual step."""
        out = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the paper's reference code.
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        # Named with its type: torch's stubs type Tensor + Tensor as Any.
        summed: Tensor = out + skip
        return summed


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck block (1x1, 3x3, 1x1; 4x expansion)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual step."""
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        summed: Tensor = out + skip
        return summed


class PreActResNet(Classifier):
    """CIFAR-style pre-activation ResNet: 3 stages of 16/32/64 planes, n blocks each."""

    def __init__(
        self,
        depth: int,
        bottleneck: bool,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__(in_channels)
        # depth = 6n + 2 for basic blocks, 9n + 2 for bottlenecks (He et al.).
        per = 9 if bottleneck else 6
        if (depth - 2) % per:
            raise ValueError(f"depth {depth} is not {per}n + 2")
        n = (depth - 2) // per
        block: type[PreActBlock] | type[PreActBottleneck] = (
            PreActBottleneck if bottleneck else PreActBlock
        )
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_planes = width
        for stage, planes in enumerate((width, width * 2, width * 4)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """Global-average-pooled final activations."""
        out = self.layers(self.conv(x))
        out = F.relu(self.bn(out))
        # Adaptive pooling lets the same model run at any image size setting.
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class SimpleCNN(Classifier):
    """A plain conv-BN-ReLU-pool stack: the cheapest proxies on a CPU."""

    def __init__(
        self, widths: Sequence[int], hidden: int, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__(in_channels)
        layers: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            layers += [
                nn.Conv2d(prev, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(prev, hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def features(self, x: Tensor) -> Tensor:
        """Pooled conv features through one hidden layer."""
        out = F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)
        # Named with its type: calling an nn.Module is typed as Any.
        features: Tensor = self.head(out)
        return features


ModelFactory = Callable[[int, int], Classifier]

MODELS: dict[str, ModelFactory] = {
    "preact8": lambda k, c: PreActResNet(8, False, k, c),
    "preact20": lambda k, c: PreActResNet(20, False, k, c),
    "preact56": lambda k, c: PreActResNet(56, False, k, c),
    "preact110": lambda k, c: PreActResNet(110, False, k, c),
    "preact164": lambda k, c: PreActResNet(164, True, k, c),
    "tiny_cnn": lambda k, c: SimpleCNN((16, 32, 64), 64, k, c),
    "small_cnn": lambda k, c: SimpleCNN((32, 64, 128), 128, k, c),
}


def model_names() -> list[str]:
    """Names the registry answers to."""
    return list(MODELS)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """Build a registered model, freshly initialised (seed torch first for reproducibility)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return factory(num_classes, in_channels)
