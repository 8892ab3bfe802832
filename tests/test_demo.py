"""``svplabel demo`` as a person runs it: a short console, a log file, and no process left behind.

A real demo on a free port with a data dir of its own: its console is read line by line, its
processes are found in /proc, and it is stopped with SIGTERM, once or twice (an impatient
operator, or a supervisor that repeats itself).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.demo import USERS, _print_banner
from tests.procs import free_port

pytestmark = [pytest.mark.slow, pytest.mark.database_free]
PROC = Path("/proc")
# What only the server's, the worker's or Alembic's own logging prints.
LOG_NOISE = re.compile(r"alembic|celery|uvicorn|INFO|WARNING|\"(GET|POST) /|superuser", re.I)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None when it is gone or a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def alive(pid: int, started: str) -> bool:
    """Whether the process that had this pid and start time still runs."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started


def descendants(root: int) -> set[tuple[int, str]]:
    """Every live process below ``root``, as (pid, start time) so a reused pid is not taken."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: set[tuple[int, str]] = set()
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            found.add((pid, started))
            todo.append(pid)
    return found


def running_on(data_dir: Path) -> set[int]:
    """Live processes whose environment names this data dir: the demo's, however started."""
    needle = f"SVP_DATA_DIR={data_dir}".encode()
    pids = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _stat(int(entry.name)) is not None:
            pids.add(int(entry.name))
    return pids


def test_the_banner_names_the_address_the_logins_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _print_banner("http://127.0.0.1:8123", tmp_path / "demo.log")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/" in out
    assert all(f"{u.username} / {u.password}" in out for u in USERS)
    assert f"log: {tmp_path / 'demo.log'}" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_stops_the_demo_and_every_process_it_started(tmp_path: Path, signals: int) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
    env.update(SVP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    demo = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console: list[str] = []
    # Read aside: the demo's exit is watched, not the end of its output, which a process left
    # running could hold open.
    reader = threading.Thread(target=lambda: console.extend(demo.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        # Up to the first run's import: the server answers and the worker has a job in hand.
        while not any("importing" in line for line in console):
            assert demo.poll() is None, "".join(console)
            assert time.monotonic() < deadline, "".join(console)
            time.sleep(0.2)
        started = descendants(demo.pid)
        assert len(started) >= 3, started  # the server, the worker and its pool process
        for _ in range(signals):
            demo.send_signal(signal.SIGTERM)
            time.sleep(1)
        status = demo.wait(timeout=60)
        # The moment the demo is gone, so is every process it started, however deep.
        assert {(pid, started) for pid, started in started if alive(pid, started)} == set()
        assert running_on(data_dir) == set()
        assert status == 0  # a second signal hurries the clean-up, it does not abandon it
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in running_on(data_dir):
            os.kill(pid, signal.SIGKILL)
    reader.join(timeout=10)
    # The console holds the steps, not the processes' logging; the log file holds that.
    text = "".join(console)
    assert not LOG_NOISE.search(text), text
    assert len(console) <= 10, text
    log = data_dir / "demo.log"
    assert f"the full log in {log}" in console[0]
    written = log.read_text(errors="replace")
    assert "alembic" in written.lower()
    assert "celery" in written.lower()
    assert "Application startup complete" in written
