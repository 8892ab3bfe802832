"""Prometheus metrics of the server, exposed at ``GET /metrics``."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "svp_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "svp_http_request_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LABELS_SUBMITTED = Counter("svp_labels_submitted_total", "Labels stored (replays not counted)")
ITEMS_LEASED = Counter("svp_items_leased_total", "Items leased to annotators")
JOBS_ENQUEUED = Counter("svp_jobs_enqueued_total", "Background jobs sent", ["kind"])


class RequestMetrics:
    """Pure ASGI middleware: count and time every HTTP answer by method, route and status.

    Labelled by the route's template, not the raw path, so ids do not explode the series. Pure
    ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs the app in
    a task of its own and re-streams the body, about a tenth of the CPU of a label request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers: an exception escaping it is a 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The router puts the matched route into this same scope dict.
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            method = scope["method"]
            LATENCY.labels(method, route).observe(time.perf_counter() - started)
            REQUESTS.labels(method, route, str(status)).inc()
