"""One rule for worker identities: only an admin sees which worker ran what (SECURITY.md).

A worker's node name (``svp-<pid>@<host>``) tells where the service runs and with which
process; it reached annotators through a job's ``worker``, an embedding's ``result.workers``
and a round's ``metrics.embedding.workers`` (issue 17 #9). Rather than a check in each route,
every shape that can carry one (``JobRead``, ``RoundRead``) passes through
``hide_worker_identities`` when it is built, unless the request's caller is an admin.

Who the caller is comes from ``ViewerScope``: each request gets a mutable holder in a context
variable, which authentication fills in. The holder, not the variable, is written, so the
value reaches code run in worker threads (their context is a copy that shares the holder).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

_viewer: ContextVar[dict[str, bool] | None] = ContextVar("svp_viewer", default=None)

# Keys whose values name a worker (its node name, host or process), wherever they appear.
_IDENTITY_KEYS = frozenset({"worker", "hostname", "pid"})


class ViewerScope:
    """Pure ASGI middleware: a fresh "who is asking" holder for each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _viewer.set({"admin": False})
        try:
            await self.app(scope, receive, send)
        finally:
            _viewer.reset(token)


def note_viewer(*, admin: bool) -> None:
    """Record whether the request's authenticated caller is an admin."""
    holder = _viewer.get()
    if holder is not None:
        holder["admin"] = admin


def viewer_is_admin() -> bool:
    """Whether the caller of the current request is an admin (False outside a request)."""
    holder = _viewer.get()
    return bool(holder and holder["admin"])


def hide_worker_identities(value: Any) -> Any:
    """``value`` without worker identities: ``workers`` maps keep their counts under neutral
    names (``worker 1``, ...), so the fan-out still shows; names, hosts and PIDs are dropped."""
    if isinstance(value, list):
        return [hide_worker_identities(v) for v in value]
    if not isinstance(value, dict):
        return value
    hidden: dict[str, Any] = {}
    for key, item in value.items():
        if key in _IDENTITY_KEYS:
            continue
        if key == "workers" and isinstance(item, dict):
            hidden[key] = {
                f"worker {i}": count for i, (_, count) in enumerate(sorted(item.items()), 1)
            }
        else:
            hidden[key] = hide_worker_identities(item)
    return hidden


def for_viewer(value: Any) -> Any:
    """``value`` as the current caller may see it: whole for an admin, else without identities."""
    return value if viewer_is_admin() else hide_worker_identities(value)
