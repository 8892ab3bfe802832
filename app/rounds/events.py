"""Bounds on the rounds' ``events`` streams: how many per user, how long each, and where they
wait for the database (issue 17 #6).

A stream polls its round's state twice a second for as long as it is open. Unbounded, one
member opening streams could occupy the server's cores (about 1.5 ms of CPU per stream-second:
some 1,300 streams fill two cores) and, polling outside the request slots, the connection
pool that the slots otherwise keep from running dry.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.db import run_in_unit_of_work
from app.errors import TooManyRequests
from app.settings import get_settings

T = TypeVar("T")

_lock = threading.Lock()
_open: Counter[int] = Counter()


def take_stream(user_id: int) -> None:
    """Count one more open stream for this user, or 429 when they hold the most allowed."""
    limit = get_settings().events_per_user
    with _lock:
        if _open[user_id] >= limit:
            raise TooManyRequests(
                f"at most {limit} open events streams per user; close one (another tab?) first"
            )
        _open[user_id] += 1


def give_back_stream(user_id: int) -> None:
    """Count one stream of this user as closed."""
    with _lock:
        _open[user_id] -= 1
        if _open[user_id] <= 0:
            del _open[user_id]


class CountedEventSource(EventSourceResponse):
    """An events response that gives its user's stream back however it ends.

    Released when the response finishes, not in the generator's ``finally``: a client that
    leaves before the first event closes a generator that never started, whose ``finally``
    would never run.
    """

    def __init__(self, *args: object, user_id: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.user_id = user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            give_back_stream(self.user_id)


async def poll(fn: Callable[[Session], T]) -> T:
    """One poll of a stream, in a read-only unit of work that waits for a request slot."""
    return await run_in_unit_of_work(fn, write=False)
