"""Prometheus metrics of the server, exposed at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
