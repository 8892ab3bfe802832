"""Prometheus metrics of the server, exposed at ``GET /metrics``."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
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


# prometheus_client's switch: set, every metric of a process is a file in this folder, and a
# scrape sums the files of every process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def multiprocess_dir(workers: int) -> Iterator[None]:
    """For ``serve --workers N`` (N > 1): a fresh metrics folder of this server, for its life.

    With several server processes a scrape reached one of them and read its counters alone
    (issue 17). The variable is read when prometheus_client is imported, so it is set here,
    before uvicorn starts the worker processes (fresh interpreters) that inherit it. The folder
    is new and empty at each start (files left by an earlier run would be summed in) and
    removed at exit. One process needs none of this and keeps the in-memory values.
    """
    if workers <= 1:
        yield
        return
    chosen = os.environ.get(MULTIPROC_ENV)
    path = chosen or tempfile.mkdtemp(prefix="svp-metrics-")
    if chosen:
        # The operator's folder: emptied, as the files of a past run would count again.
        shutil.rmtree(chosen, ignore_errors=True)
        os.makedirs(chosen, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        if chosen is None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(path, ignore_errors=True)


def exposition() -> tuple[bytes, str]:
    """The metrics text of the whole server: every process's under ``serve --workers N``."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


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
