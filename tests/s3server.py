"""A real S3 API on 127.0.0.1 for tests: moto in server mode, as a subprocess on a free port.

The product's own client talks to it over HTTP like to any store; nothing is patched inside the
process under test. Each test makes its own bucket (``bucket()``), so one server serves a whole
test session.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.procs import free_port

# moto accepts any credentials; these keep boto3 from looking for real ones.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running moto server: its endpoint, and a client of the tests' own to arrange buckets."""

    endpoint: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> object:
        """A plain boto3 client (the tests' own hands, not the product's code path)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def bucket(self, name: str | None = None) -> str:
        """A fresh, empty bucket; its name."""
        name = name or f"t-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def env(self) -> dict[str, str]:
        """What a server or worker process needs in its environment to reach this store."""
        return {**CREDENTIALS, "SVP_S3_ENDPOINT_URL": self.endpoint}

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.popen.poll() is None

    def stop(self) -> None:
        """Stop the server (a fault test stops it mid-job)."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _start(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
            start_new_session=True,
        )


def _wait_ready(server: S3Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"moto server exited:\n{server.log_path.read_text()[-2000:]}")
        try:
            httpx.get(server.endpoint + "/moto-api/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer in {timeout}s")


@contextmanager
def s3_server(folder: Path, port: int | None = None) -> Iterator[S3Server]:
    """Run a moto S3 server until the block ends."""
    port = port or free_port()
    log_path = folder / f"moto-{port}.log"
    server = S3Server(f"http://127.0.0.1:{port}", _start(port, log_path), log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()


def restart(server: S3Server) -> None:
    """Start a stopped server again on the same port (its buckets are gone: moto keeps them in
    memory)."""
    server.stop()
    port = int(server.endpoint.rsplit(":", 1)[1])
    server.popen = _start(port, server.log_path)
    _wait_ready(server)
