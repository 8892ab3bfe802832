"""Shapes of items, item pages and an item's label history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


def image_url(item_id: int) -> str:
    """Where clients fetch an item's image (``GET /api/items/{id}/image``)."""
    return f"/api/items/{item_id}/image"


class TextFields(BaseModel):
    """A text item's ``text`` and ``text_chars`` (DESIGN 4c); left out of an image's JSON, so
    image items keep exactly the shape clients already rely on."""

    text: str | None = None
    text_chars: int | None = None

    # No return annotation: the JSON schema stays the model's own, not a bare object.
    @model_serializer(mode="wrap")
    def _images_without_text(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]  # see above
        data: dict[str, Any] = handler(self)
        if self.text_chars is None:
            data.pop("text", None)
            data.pop("text_chars", None)
        return data


class ItemRead(TextFields):
    """An item as clients rely on it: ``name`` is its path in the upload, ``label`` its class.

    An image has its ``width`` and ``height`` (``text`` and ``text_chars`` null); a text item
    has ``text`` (its first 280 characters in a page, the whole text alone) and its full
    length in ``text_chars`` (``width`` and ``height`` null).
    """

    id: int
    name: str
    split: str
    width: int | None
    height: int | None
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
    """An item with its stored facts and its label history, newest first (undone ones left out).

    A text item carries its whole text; its ``image_url`` is null.
    """

    project_id: int
    media_type: str
    content_hash: str
    created_at: datetime
    image_url: str | None
    labels: list[ItemLabelRead]
