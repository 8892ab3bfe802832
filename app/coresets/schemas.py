"""Shapes of core-set requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.rounds.schemas import ROUND_STRATEGIES, ProxyConfig

# Core-set selection ranks labelled items: the round strategies plus forgetting events (DESIGN 4).
CORESET_STRATEGIES = (*ROUND_STRATEGIES, "forgetting")


class CoresetCreate(BaseModel):
    """Ask for a core-set: the fraction of labelled pool items to keep, and how to choose them."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(gt=0, le=1)
    strategy: str
    proxy: ProxyConfig | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in CORESET_STRATEGIES:
            known = ", ".join(CORESET_STRATEGIES)
            raise ValueError(f"unknown core-set strategy {value!r}; known: {known}")
        return value
