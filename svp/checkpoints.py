"""A user's own network: a torchvision (or timm) architecture, a local weights file loaded
strictly, and the classifier removed so that ``forward`` ends at the pooled features."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# torchvision's convention, for user backbones trained the usual way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from the usual training-script containers."""
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


def load_trunk(arch: str, path: Path) -> nn.Module:
    """``arch`` with the weights at ``path`` (strictly), its final Linear replaced by Identity."""
    state = read_state_dict(path)
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
