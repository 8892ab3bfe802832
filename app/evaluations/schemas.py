"""Shapes of evaluation requests."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from app.fields import RequestBody
from app.rounds.schemas import ScratchArch


class EvaluationCreate(RequestBody):
    """Train a target model on every label so far and measure it on the labelled test split."""

    model_config = ConfigDict(extra="forbid")

    # Targets are trained from scratch on the images (a linear head is a proxy, not a target).
    target: ScratchArch | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    image_size: int | None = Field(default=None, ge=8, le=256)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
