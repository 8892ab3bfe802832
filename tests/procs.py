"""Real processes for end-to-end tests: ``svplabel serve`` and ``svplabel worker`` as subprocesses.

Each test gets its own data dir, database and port; processes are stopped (and their logs shown
on failure) when the context exits. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SVPLABEL = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A running subprocess with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the whole process group (a Celery worker has children)."""
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        """Ask politely, then kill."""
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Stack:
    """The environment shared by a test's server and workers."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str) -> Proc:
        """Start ``svplabel ARGS`` in its own process group, logging to the data dir."""
        log_path = self.data_dir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                [*SVPLABEL, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name=name, popen=popen, log_path=log_path)
        self.procs.append(proc)
        return proc

    def serve(self, *extra: str) -> Proc:
        """Start the server and wait until it answers its health check."""
        proc = self.spawn(
            "server", "serve", "--host", "127.0.0.1", "--port", str(self.port), *extra
        )
        wait_for(lambda: _healthy(self.url), 60, f"server did not start:\n{proc.log()}", proc)
        return proc

    def worker(self, name: str = "worker", *extra: str) -> Proc:
        """Start a Celery worker (``svplabel worker``)."""
        return self.spawn(name, "worker", *extra)

    def logs(self) -> str:
        """Every process's log, for a failure message."""
        return "\n".join(f"----- {p.name} -----\n{p.log()[-6000:]}" for p in self.procs)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(
    check: object, timeout: float, message: str, proc: Proc | None = None, interval: float = 0.2
) -> None:
    """Poll ``check()`` until true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited early:\n{proc.log()}")
        time.sleep(interval)
    raise AssertionError(message)


@contextmanager
def stack(
    tmp_path: Path,
    *,
    database_url: str,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A data dir and environment for real processes; stops every process at exit."""
    data_dir = tmp_path / "stack"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
    env.update(
        SVP_ENVIRONMENT="test",
        SVP_DATA_DIR=str(data_dir),
        SVP_DATABASE_URL=database_url,
        SVP_ADMIN_USERNAME="admin",
        SVP_ADMIN_PASSWORD="admin-password",
        PYTHONUNBUFFERED="1",
    )
    if broker_url:
        env["SVP_BROKER_URL"] = broker_url
    env.update(extra_env or {})
    s = Stack(data_dir=data_dir, env=env)
    try:
        yield s
    except BaseException:
        print(s.logs(), file=sys.stderr)
        raise
    finally:
        for p in reversed(s.procs):
            p.stop()
