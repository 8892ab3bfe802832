"""``svplabel demo``: the embedded default in one command.

Migrates the database in the data dir, makes the demo users, starts the server and one worker
(both as ``svplabel`` subprocesses on the embedded broker), and on the first run creates a
project from scikit-learn's bundled digits, uploaded through the real import API and imported by
the worker. Prints the address and the logins, and stops both processes on Ctrl-C or SIGTERM.
Nothing here reaches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import select

from app.auth.models import Role, User
from app.auth.service import create_user
from app.db import unit_of_work
from app.settings import Settings, get_settings

PROJECT_NAME = "Digits (demo)"
CLASSES = [str(d) for d in range(10)]
# Of the 1,797 digits, this many go to the unlabelled pool; the rest, labelled, to the test split.
POOL_SIZE = 1500
# 8x8 is unreadable on a screen; nearest-neighbour keeps the pixels honest.
IMAGE_SIZE = 64
START_TIMEOUT_S = 90
IMPORT_TIMEOUT_S = 300


@dataclass(frozen=True)
class DemoUser:
    """A demo login, printed at start."""

    username: str
    password: str
    role: str


USERS = (
    DemoUser("admin", "admin-demo", Role.admin),
    DemoUser("engineer", "engineer-demo", Role.engineer),
    DemoUser("annotator", "annotator-demo", Role.annotator),
)


LOOPBACK_HOSTS = ("localhost", "::1")


def demo_refusal(settings: Settings, *, host: str) -> str | None:
    """Why the demo must not run here, or None.

    Its logins are printed in the README: on a production setting, a shared database or a
    reachable address they would be anyone's admin account. Each refusal can be overridden
    with ``--allow-demo-logins``.
    """
    if settings.environment == "production":
        return "SVP_ENVIRONMENT is production"
    if not settings.is_sqlite:
        return "the database is not the embedded SQLite file (SVP_DATABASE_URL is set)"
    if not (host in LOOPBACK_HOSTS or host.startswith("127.")):
        return f"--host {host} makes the server reachable from other machines"
    return None


def run_demo(*, host: str = "127.0.0.1", port: int = 8000, allow_demo_logins: bool = False) -> int:
    """Run the demo until interrupted; the exit status."""
    from app.migrate import upgrade

    settings = get_settings()
    refusal = demo_refusal(settings, host=host)
    if refusal and not allow_demo_logins:
        print(
            f"svplabel demo refuses to run: {refusal}. It creates the users admin, engineer and "
            "annotator with passwords printed in the README. Use `svplabel serve` with "
            "SVP_ADMIN_USERNAME/SVP_ADMIN_PASSWORD instead, or pass --allow-demo-logins if "
            "this really is a throwaway demo.",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise here
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"data dir: {settings.data_dir}", flush=True)
    upgrade()
    ensure_users()
    env = dict(os.environ, SVP_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1")
    env.pop("SVP_INLINE_JOBS", None)
    procs: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM ends the demo as Ctrl-C does: through the same clean-up.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    try:
        procs.append(_spawn(["worker"], env))
        procs.append(_spawn(["serve", "--no-migrate", "--host", host, "--port", str(port)], env))
        _wait_healthy(base, procs)
        ensure_project(base)
        _print_banner(base)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a demo process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the server and the worker", flush=True)
        return 0
    finally:
        _stop_all(procs)


def ensure_users() -> None:
    """Create the demo users; on a later run the existing ones are kept as they are."""
    with unit_of_work() as db:
        for u in USERS:
            if db.scalar(select(User.id).where(User.username == u.username)) is None:
                create_user(db, username=u.username, password=u.password, role=u.role)


def ensure_project(base: str) -> None:
    """Create the digits project and import it through the API, once."""
    c = _login(base, "engineer")
    try:
        projects = c.get("/api/projects").raise_for_status().json()
        if any(p["name"] == PROJECT_NAME for p in projects):
            print(f"project {PROJECT_NAME!r} exists; reusing it", flush=True)
            return
        project = (
            c.post(
                "/api/projects",
                json={
                    "name": PROJECT_NAME,
                    "classes": CLASSES,
                    "description": "Handwritten digits from scikit-learn, 8x8 shown at 64x64.",
                    # The product's default, stated so the demo shows it whatever the defaults
                    # become: a linear head on EfficientNet-Lite0 embeddings, typical points
                    # first and uncertainty across clusters once labels per class grow.
                    "settings": {
                        "default_proxy": "linear",
                        "backbone": "efficientnet_lite0",
                        "strategy": "auto",
                        "cold_start": "auto",
                        "batch_size": 20,
                    },
                },
            )
            .raise_for_status()
            .json()
        )
        pid = project["id"]
        c.put(
            f"/api/projects/{pid}/members", json={"username": "annotator", "role": "annotator"}
        ).raise_for_status()
        pool, test = digits_zips()
        jobs = [
            _upload(c, pid, "digits-pool.zip", pool, split="pool", labels=False),
            _upload(c, pid, "digits-test.zip", test, split="test", labels=True),
        ]
        print("importing the digits on the worker ...", flush=True)
        for job in jobs:
            done = _wait_job(c, job["id"])
            result = done.get("result") or {}
            print(
                f"  job {done['id']} {done['status']}: {result.get('added', 0)} added, "
                f"{result.get('duplicates', 0)} duplicates, "
                f"{len(result.get('rejected', []))} rejected",
                flush=True,
            )
    finally:
        c.close()


def digits_zips() -> tuple[bytes, bytes]:
    """Two zips of scikit-learn's digits as PNGs: the pool (flat) and the test split by class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    pool, test = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(pool, "w") as zp, zipfile.ZipFile(test, "w") as zt:
        for n, i in enumerate(order):
            png = _png(digits.images[i])
            name = f"digit_{i:04d}.png"
            if n < POOL_SIZE:
                zp.writestr(name, png)
            else:
                zt.writestr(f"{digits.target[i]}/{name}", png)
    return pool.getvalue(), test.getvalue()


def _png(pixels: Any) -> bytes:
    # Ink (0..16) as dark on light, as a person would write it.
    grey = (255 - np.asarray(pixels, dtype=np.float64) * (255 / 16)).clip(0, 255)
    image = Image.fromarray(grey.astype(np.uint8), mode="L")
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _upload(
    c: httpx.Client, pid: int, name: str, data: bytes, *, split: str, labels: bool
) -> dict[str, Any]:
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": (name, data, "application/zip")},
        data={"split": split, "labels_from_folders": "true" if labels else "false"},
    )
    r.raise_for_status()
    job: dict[str, Any] = r.json()
    return job


def _wait_job(c: httpx.Client, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + IMPORT_TIMEOUT_S
    while True:
        job: dict[str, Any] = c.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def _login(base: str, username: str) -> httpx.Client:
    password = next(u.password for u in USERS if u.username == username)
    c = httpx.Client(base_url=base, timeout=60)
    r = c.post("/api/auth/login", json={"username": username, "password": password})
    if r.status_code != 200:
        c.close()
        raise SystemExit(
            f"cannot sign in as the demo {username!r} (was its password changed?): {r.text}"
        )
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env)  # noqa: S603


def _wait_healthy(base: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("the server or the worker exited at start; see the log above")
        try:
            health = httpx.get(f"{base}/api/health", timeout=2)
            if health.status_code == 200 and health.json().get("workers"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer at {base} within {START_TIMEOUT_S}s")


def _print_banner(base: str) -> None:
    logins = "\n".join(f"    {u.role:<10} {u.username} / {u.password}" for u in USERS)
    print(
        f"\nSVP Label demo is running at {base}/\n"
        f"  logins:\n{logins}\n"
        f"  API docs: {base}/docs\n"
        "  Ctrl-C stops the server and the worker.\n",
        flush=True,
    )


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
