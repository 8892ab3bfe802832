"""Shapes of the labelling queue and of labels."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.fields import Id, RequestBody
from app.rounds.schemas import SelectionEntry


class QueueEntry(SelectionEntry):
    """A batch entry leased to the caller, with the time its lease runs out."""

    lease_expires_at: datetime


class QueueSkip(RequestBody):
    """Give back the lease on one item."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id


class LabelCreate(RequestBody):
    """A label for one item; ``key`` makes the submission safe to retry."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    label: str = Field(min_length=1, max_length=200)
    # The client's idempotency key: the same key again returns the first label.
    key: str = Field(min_length=1, max_length=128)


class LabelRead(BaseModel):
    """A stored label; ``user`` is the author's username (null once the account is deleted)."""

    id: int
    item_id: int
    label: str
    user: str | None
    created_at: datetime
