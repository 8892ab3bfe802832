"""The rounds' events streams are bounded: per user, in time, and in the request slots (#6)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import db as app_db
from app.settings import get_settings
from tests import procs
from tests.factories import PASSWORD, Factory

PER_USER = 3
LIFETIME = 4.0


def _signed_in(url: str, username: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    r = c.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c


class _Listener:
    """One open events stream in a thread: its status, its events, and when it ended."""

    def __init__(self, c: httpx.Client, round_id: int) -> None:
        self.status: int | None = None
        self.events: list[str] = []
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(c, round_id), daemon=True)
        self.thread.start()
        assert self.opened.wait(20), "no answer to the events request"

    def _run(self, c: httpx.Client, round_id: int) -> None:
        with c.stream("GET", f"/api/rounds/{round_id}/events") as r:
            self.status = r.status_code
            self.opened.set()
            if r.status_code == 200:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(line)
                    if self.stop.is_set():
                        break
            else:
                r.read()
        self.ended.set()

    def close(self) -> None:
        self.stop.set()


def test_events_streams_are_capped_per_user_and_end_after_their_lifetime(
    factory: Factory, tmp_path: Path, database_url: str
) -> None:
    """Past SVP_EVENTS_PER_USER a user's next stream is 429 (another user's is not); a closed
    stream gives its place back; a stream of a round that keeps running ends by itself."""
    annotator = factory.user("annotator")
    other = factory.user("annotator")
    engineer = factory.user("engineer")
    project = factory.project(engineer, members={annotator: "annotator", other: "annotator"})
    rnd = factory.round_with_selection(project, factory.items(project, 2), status="running")
    env = {"SVP_EVENTS_PER_USER": str(PER_USER), "SVP_EVENTS_MAX_SECONDS": str(LIFETIME)}
    with procs.stack(tmp_path, database_url=database_url, extra_env=env) as s:
        s.serve()
        c = _signed_in(s.url, annotator.username)
        started = time.monotonic()
        held = [_Listener(c, rnd.id) for _ in range(PER_USER)]
        assert [h.status for h in held] == [200] * PER_USER
        refused = _Listener(c, rnd.id)
        assert refused.status == 429
        assert refused.ended.wait(5)
        # Per user: someone else still gets theirs.
        assert _Listener(_signed_in(s.url, other.username), rnd.id).status == 200
        # Each stream ends by itself once its lifetime is over, the round still running, and
        # gives its place back.
        for h in held:
            assert h.ended.wait(LIFETIME + 10), "a stream outlived SVP_EVENTS_MAX_SECONDS"
            assert h.events, "a held stream got no event"
        assert time.monotonic() - started >= LIFETIME - 0.5
        again = [_Listener(c, rnd.id) for _ in range(PER_USER)]
        assert [h.status for h in again] == [200] * PER_USER
        for h in again:
            h.close()
        c.close()


def test_an_events_stream_polls_within_the_request_slots(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every request slot taken, a stream waits for one before it reads the database:
    its polls went around the slots and could take the pool's last connections (issue 17 #6)."""
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    rnd = factory.round_with_selection(project, factory.items(project, 2), status="running")
    authorization = factory.token_client(engineer).headers["Authorization"]
    monkeypatch.setenv("SVP_DB_CONCURRENCY", "1")
    get_settings.cache_clear()
    sent: list[str] = []

    async def drive() -> None:
        slots = app_db._loop_slots()
        path = f"/api/rounds/{rnd.id}/events"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"authorization", authorization.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        requests = [{"type": "http.request", "body": b"", "more_body": False}]
        gone = asyncio.Event()
        first_event = asyncio.Event()

        async def receive() -> dict[str, object]:
            if requests:
                return requests.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])
            if b"data:" in message.get("body", b""):
                first_event.set()

        await slots.connections.acquire()  # every slot taken, as by long requests
        task = asyncio.create_task(factory.app(scope, receive, send))
        await asyncio.sleep(1.5)
        assert sent == [], "the stream read the database with no slot free"
        slots.connections.release()
        await asyncio.wait_for(first_event.wait(), 10)
        gone.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(drive())
    assert sent[0] == "http.response.start"
