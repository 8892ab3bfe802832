"""Shapes of evaluation requests."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from app.fields import RequestBody
from app.rounds.schemas import TargetArch


class EvaluationCreate(RequestBody):
    """Train a target model on every label so far and measure it on the labelled test split."""

    model_config = ConfigDict(extra="forbid")

    # Targets train from scratch: image models on images; on text, VDCNN or a linear head
    # (app/projects/kinds.py says which fits which project).
    target: TargetArch | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    image_size: int | None = Field(default=None, ge=8, le=256)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
