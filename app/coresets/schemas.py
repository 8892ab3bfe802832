"""Shapes of core-set requests."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import ConfigDict, Field

from app.fields import RequestBody
from app.rounds.schemas import ProxyConfig, RoundStrategy

# Core-set selection ranks labelled items: the round strategies plus forgetting events (DESIGN 4).
CoresetStrategy = Literal[RoundStrategy, "forgetting"]
CORESET_STRATEGIES: tuple[str, ...] = get_args(CoresetStrategy)


class CoresetCreate(RequestBody):
    """Ask for a core-set: the fraction of labelled pool items to keep, and how to choose them."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(gt=0, le=1)
    strategy: CoresetStrategy
    proxy: ProxyConfig | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
