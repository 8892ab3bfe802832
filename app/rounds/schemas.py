"""Shapes of rounds, their proxy configuration and their frozen batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The names the engine's model registry answers to. Kept here as plain strings because the
# server never imports svp/ (torch); tests/test_round_runner.py checks both lists agree.
PROXY_ARCHS = (
    "tiny_cnn",
    "small_cnn",
    "preact8",
    "preact20",
    "preact56",
    "preact110",
    "preact164",
)

# Active-learning strategies a round can rank the unlabelled pool with (DESIGN 4).
ROUND_STRATEGIES = ("random", "least_confidence", "entropy", "margin", "kcenter")


def check_arch(value: str) -> str:
    """Refuse an architecture the engine does not know."""
    if value not in PROXY_ARCHS:
        raise ValueError(f"unknown proxy architecture {value!r}; known: {', '.join(PROXY_ARCHS)}")
    return value


class ProxyConfig(BaseModel):
    """The proxy a round trains; fields left out take the project's settings."""

    model_config = ConfigDict(extra="forbid")

    arch: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    image_size: int | None = Field(default=None, ge=8, le=256)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str | None) -> str | None:
        return None if value is None else check_arch(value)


class RoundCreate(BaseModel):
    """Start a round: a strategy, a batch size, optionally a proxy and a seed."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    batch_size: int = Field(ge=1, le=100_000)
    proxy: ProxyConfig | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in ROUND_STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; known: {', '.join(ROUND_STRATEGIES)}")
        return value


class RoundRead(BaseModel):
    """A round as clients see it; stage and progress come from its job."""

    id: int
    project_id: int
    number: int
    status: str
    stage: str | None
    progress: float
    strategy: str
    batch_size: int
    proxy: dict[str, Any]
    seed: int
    # Items of its batch that have a label now (DESIGN 5).
    labeled: int
    metrics: dict[str, Any]
    error: str | None
    job_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Suggestion(BaseModel):
    """The proxy's guess for an item: a class and its probability."""

    label: str | None
    confidence: float | None


class SelectionEntry(BaseModel):
    """One item of a round's batch, in rank order."""

    item_id: int
    name: str
    rank: int
    score: float
    image_url: str
    suggestion: Suggestion


class RoundEvent(BaseModel):
    """What the events stream sends: the round's state."""

    status: str
    stage: str | None
    progress: float
