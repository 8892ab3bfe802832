"""Shapes of rounds, their proxy configuration and their frozen batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.embeddings.schemas import check_backbone
from app.fields import RequestBody
from app.items.schemas import TextFields
from app.visibility import for_viewer

# The names the engine's model registry answers to. Kept here as plain strings because the
# server never imports svp/ (torch); tests/test_round_runner.py checks both lists agree.
ScratchArch = Literal[
    "tiny_cnn",
    "small_cnn",
    "preact8",
    "preact20",
    "preact56",
    "preact110",
    "preact164",
]
SCRATCH_ARCHS: tuple[str, ...] = get_args(ScratchArch)
# A proxy is trained from scratch on the images, or is ``linear``: a head on a frozen
# backbone's embeddings (DESIGN 4b); on text, ``fasttext`` is trained from scratch each round
# with word n-grams, as in the paper (DESIGN 4c). Which fits which project kind:
# app/projects/kinds.py.
ProxyArch = Literal["linear", "fasttext", ScratchArch]
PROXY_ARCHS: tuple[str, ...] = ("linear", "fasttext", *SCRATCH_ARCHS)
# Evaluation targets on text: the character-level VDCNN at depth 9 (``vdcnn``), 17 and 29.
TextTargetArch = Literal["vdcnn", "vdcnn17", "vdcnn29"]
TEXT_TARGET_ARCHS: tuple[str, ...] = get_args(TextTargetArch)
# What an evaluation trains: a from-scratch image model, a text target, or (text) ``linear``.
TargetArch = Literal[ScratchArch, TextTargetArch, "linear"]

# Active-learning strategies a round can rank the unlabelled pool with (DESIGN 4 and 4b); the
# engine's svp.Strategy has each of these (tests/test_round_runner.py checks).
RoundStrategy = Literal[
    "random",
    "least_confidence",
    "entropy",
    "margin",
    "kcenter",
    "typiclust",
    "margin_clusters",
    "auto",
]
ROUND_STRATEGIES: tuple[str, ...] = get_args(RoundStrategy)
# Strategies that need embeddings whatever the proxy: they cluster the pool's features.
EMBEDDING_STRATEGIES = ("typiclust", "margin_clusters", "auto")


class ProxyConfig(BaseModel):
    """The proxy a round trains; fields left out take the project's settings."""

    model_config = ConfigDict(extra="forbid")

    arch: ProxyArch | None = None
    # With ``linear``: the registered frozen backbone whose embeddings the head is trained on.
    backbone: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    # fastText only: the word vectors' dimension and the longest word n-gram.
    dim: int | None = Field(default=None, ge=2, le=1000)
    word_ngrams: int | None = Field(default=None, ge=1, le=6)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str | None) -> str | None:
        return None if value is None else check_backbone(value)


class RoundCreate(RequestBody):
    """Start a round: a strategy, a batch size, optionally a proxy and a seed."""

    model_config = ConfigDict(extra="forbid")

    strategy: RoundStrategy
    batch_size: int = Field(ge=1, le=100_000)
    proxy: ProxyConfig | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    # Close the batch still being labelled (its open items return to the pool) and start anyway.
    supersede: bool = False


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

    @model_validator(mode="after")
    def _worker_identities_for_admins(self) -> RoundRead:
        # The embedding's report in the metrics names its workers (app.visibility).
        self.metrics = for_viewer(self.metrics)
        return self


class Suggestion(BaseModel):
    """The proxy's guess for an item: a class and its probability."""

    label: str | None
    confidence: float | None


class SelectionEntry(TextFields):
    """One item of a round's batch, in rank order.

    A text item has no image (``image_url`` null) and carries its text instead: the first
    280 characters in a selection, the whole text in ``queue/next``; ``text_chars`` is its
    full length. Both are null for an image item.
    """

    item_id: int
    name: str
    rank: int
    score: float
    image_url: str | None
    suggestion: Suggestion


class RoundEvent(BaseModel):
    """What the events stream sends: the round's state."""

    status: str
    stage: str | None
    progress: float
