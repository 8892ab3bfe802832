"""SQLite's single writer across server processes: a write waits for the lock file's flock."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest
from sqlalchemy import make_url

from app.settings import get_settings
from tests.conftest import BACKEND
from tests.factories import Factory

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="the lock file is SQLite's")


def test_a_write_waits_while_another_process_holds_the_writer_lock(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    assert c.get("/api/me").status_code == 200  # the app and its settings are up
    database = make_url(get_settings().database_url).database
    assert database
    # A descriptor of its own: flock treats it as another process would.
    fd = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    answers: list[int] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = threading.Thread(
            target=lambda: answers.append(
                c.post("/api/projects", json={"name": "p", "classes": ["a", "b"]}).status_code
            )
        )
        writer.start()
        time.sleep(1.0)
        assert answers == []  # still waiting for the other "process"
        assert c.get("/api/me").status_code == 200  # reads do not wait
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    writer.join(30)
    assert answers == [201]
