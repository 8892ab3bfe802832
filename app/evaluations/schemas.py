"""Shapes of evaluation requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.rounds.schemas import check_arch


class EvaluationCreate(BaseModel):
    """Train a target model on every label so far and measure it on the labelled test split."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    image_size: int | None = Field(default=None, ge=8, le=256)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str | None) -> str | None:
        return None if value is None else check_arch(value)
