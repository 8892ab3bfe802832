"""``/metrics`` under ``serve --workers N`` counts the whole server, not one process (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.procs import stack

REQUESTS = 60
_SERIES = re.compile(
    r'^svp_http_requests_total\{method="GET",route="/api/me",status="401"\} (\S+)$'
)


def _count(url: str) -> float:
    """The server's count of anonymous ``GET /api/me``, read by one scrape on a new connection."""
    r = httpx.get(f"{url}/metrics", timeout=30)  # from loopback: allowed without a token
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        found = _SERIES.match(line)
        if found:
            return float(found.group(1))
    return 0.0


def test_a_scrape_sees_every_server_process(tmp_path: Path, database_url: str) -> None:
    with stack(tmp_path, database_url=database_url) as s:
        s.serve("--workers", "2")
        before = _count(s.url)
        for _ in range(REQUESTS):
            # A new connection each: the server's processes share the listening socket, so
            # requests spread over both (one keep-alive connection would stay on one).
            r = httpx.get(f"{s.url}/api/me", headers={"connection": "close"}, timeout=30)
            assert r.status_code == 401
        # Whichever process answers each scrape, it reports the sum.
        for _ in range(6):
            assert _count(s.url) - before == REQUESTS
