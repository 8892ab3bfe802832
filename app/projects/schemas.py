"""Shapes of projects and memberships."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.embeddings.schemas import DEFAULT_BACKBONE, check_backbone
from app.fields import RequestBody
from app.projects.models import MemberRole, ProjectKind
from app.rounds.schemas import ProxyArch, RoundStrategy, TargetArch

MAX_CLASSES = 1000


class ProjectSettings(BaseModel):
    """A project's settings; unknown keys are refused so typos surface."""

    model_config = ConfigDict(extra="forbid")

    # A linear head on a pretrained backbone's embeddings picks well from the first labels
    # (DESIGN 4b); the paper's from-scratch proxies stay available by name.
    default_proxy: ProxyArch = "linear"
    backbone: str = DEFAULT_BACKBONE
    # A text project's defaults differ (minilm_l6, vdcnn): app/projects/kinds.py fills them.
    default_target: TargetArch = "preact20"
    # The side images are trained at by from-scratch proxies (a backbone has its own).
    image_size: int = Field(default=32, ge=8, le=256)
    strategy: RoundStrategy = "auto"
    batch_size: int = Field(default=20, ge=1, le=100_000)
    proxy_epochs: int = Field(default=10, ge=1, le=500)
    proxy_batch_size: int = Field(default=128, ge=1, le=4096)
    # None: the engine's own default for the architecture.
    proxy_lr: float | None = Field(default=None, gt=0, le=10)
    # The fastText proxy (text projects): word vectors' dimension, epochs, longest word n-gram;
    # the engine's defaults, measured on 20 Newsgroups (svp/fasttext_proxy.py). Its learning
    # rate is proxy_lr, the engine's own (1.0) when unset.
    fasttext_dim: int = Field(default=50, ge=2, le=1000)
    fasttext_epochs: int = Field(default=50, ge=1, le=500)
    fasttext_word_ngrams: int = Field(default=2, ge=1, le=6)
    # The first batch, before any label. auto: typiclust on embeddings when the proxy is linear,
    # random otherwise; kcenter covers the embeddings (linear) or the pixels (from scratch).
    cold_start: Literal["auto", "random", "kcenter", "typiclust"] = "auto"
    # How long an annotator holds an item of the batch before it returns to the queue.
    lease_seconds: int = Field(default=600, ge=10, le=86_400)
    # Off by default, as the contract says: a finished batch does not start a round by itself.
    auto_next_round: bool = False
    # Off: annotators label the open batch only (the items the rounds chose). On: any unlabelled
    # or labelled pool item too. The test split stays the engineers' either way.
    annotators_label_any_pool_item: bool = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return check_backbone(value)


class ProjectCreate(RequestBody):
    """A new project; ``kind`` (image or text) is fixed once it is made."""

    name: str = Field(min_length=1, max_length=200)
    kind: ProjectKind = ProjectKind.image
    classes: list[str] = Field(min_length=1, max_length=MAX_CLASSES)
    description: str = Field(default="", max_length=10_000)
    settings: ProjectSettings = Field(default_factory=ProjectSettings)

    @field_validator("classes")
    @classmethod
    def _clean_classes(cls, value: list[str]) -> list[str]:
        cleaned = [c.strip() for c in value]
        # Class names become folder names in image-folder exports and imports: no path tricks.
        if any(not c or len(c) > 200 or "/" in c or "\\" in c or c in (".", "..") for c in cleaned):
            raise ValueError("class names must be 1-200 characters, without slashes, not . or ..")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("class names must be unique")
        return cleaned


class ProjectUpdate(RequestBody):
    """Changes to a project: absent fields stay as they are, and so do settings not named.

    ``kind`` is accepted only as the project's own (a client sending back what it read); any
    other value is a 422: a project's kind is fixed when it is made.
    """

    description: str | None = Field(default=None, max_length=10_000)
    kind: ProjectKind | None = None
    # Merged into the stored settings key by key (``exclude_unset``): the defaults this model
    # shows are not applied to the keys a PATCH leaves out.
    settings: ProjectSettings | None = None


class ProjectCounts(BaseModel):
    """How much of the project is labelled."""

    items: int
    labeled: int
    unlabeled: int
    rounds: int


class ProjectRead(BaseModel):
    """A project with its counts and the caller's role in it."""

    id: int
    name: str
    kind: ProjectKind
    description: str
    classes: list[str]
    settings: ProjectSettings
    created_at: datetime
    counts: ProjectCounts
    role: str | None
    # The same counts flat, for clients that read them at the top level.
    items: int
    labeled: int
    unlabeled: int
    rounds: int


class MemberSet(RequestBody):
    """Add a member or change their role."""

    username: str = Field(min_length=1, max_length=64)
    role: MemberRole


class MemberRead(BaseModel):
    """A member of a project."""

    user_id: int
    username: str
    role: str
