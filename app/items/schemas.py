"""Shapes of items, item pages and an item's label history."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


def image_url(item_id: int) -> str:
    """Where clients fetch an item's image (``GET /api/items/{id}/image``)."""
    return f"/api/items/{item_id}/image"


class ItemRead(BaseModel):
    """An item as clients rely on it: ``name`` is its path in the upload, ``label`` its class."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    split: str
    width: int
    height: int
    label: str | None


class ItemPage(BaseModel):
    """One keyset page; ``next`` is an opaque cursor for the following page, null on the last."""

    items: list[ItemRead]
    next: str | None


class SplitCounts(BaseModel):
    """How many items of each split."""

    pool: int
    test: int


class ClassCount(SplitCounts):
    """How many items of each split carry ``label`` as their current label."""

    label: str


class ClassCounts(BaseModel):
    """Items per current label and split, in the project's class order, and the unlabelled.

    A label no longer among the classes (none can be today: classes only grow) follows them.
    """

    counts: list[ClassCount]
    unlabeled: SplitCounts


class ItemLabelRead(BaseModel):
    """One live label of an item's history; ``user`` is the author's username."""

    id: int
    item_id: int
    label: str
    user: str | None
    source: str
    created_at: datetime


class ItemDetail(ItemRead):
    """An item with its stored facts and its label history, newest first (undone ones left out)."""

    project_id: int
    media_type: str
    content_hash: str
    created_at: datetime
    image_url: str
    labels: list[ItemLabelRead]
