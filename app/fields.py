"""Types every router and request body shares, so bad input is a 4xx before it reaches SQL.

- ids: PostgreSQL's ``integer`` holds up to 2^31 - 1 and SQLite's up to 2^63 - 1; an id past
  the smaller bound cannot exist, and sent to the database it was a 500 (PostgreSQL: integer out
  of range; SQLite past 2^63: an OverflowError in the driver). Typed here, it is a 422.
- text: a NUL character cannot be stored in PostgreSQL text; every request body refuses one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

# The largest id any table can hold on both back ends (PostgreSQL integer).
MAX_ID = 2**31 - 1

# An id in a request body.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# An id in a path: /api/items/{item_id}, ... (422 when out of range, as DESIGN 5 allows).
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
# An id in a query string: project_id filters, keyset ``after``.
QueryId = Annotated[int, Query(ge=1, le=MAX_ID)]

NUL_MESSAGE = "text must not contain NUL characters"


def has_nul(value: Any) -> bool:
    """Whether a string anywhere in a JSON-like value (keys included) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


class RequestBody(BaseModel):
    """Base of every request body: an unknown field or a NUL in any text of it is a 422.

    Unknown fields are refused, not dropped: ``{"activ": false}`` on a user was a 200 that
    disabled nobody (issue 17 #5). The 422 names the field (``loc``), never its value.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        if has_nul(data):
            raise ValueError(NUL_MESSAGE)
        return data
