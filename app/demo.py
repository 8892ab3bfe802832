"""``svplabel demo``: the embedded default in one command.

Migrates the database in the data dir, makes the demo users, starts the server and one worker
(both as ``svplabel`` subprocesses on the embedded broker), and on the first run creates a
project from scikit-learn's bundled digits and a text project of short support messages made by
app/demo_texts.py, both uploaded through the real import API and imported by the worker. The
console shows what a person needs (the steps, the address and the logins, and
errors); everything the processes log goes to ``demo.log`` in the data dir, which the banner
names. Ctrl-C or SIGTERM stops the server, the worker and every process they started (a second
one stops them at once). Nothing here reaches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import select

from app.auth.models import Role, User
from app.auth.service import create_user
from app.db import unit_of_work
from app.demo_texts import CLASSES as TEXT_CLASSES
from app.demo_texts import POOL_PER_CLASS, TEST_PER_CLASS, support_csvs
from app.settings import Settings, get_settings

PROJECT_NAME = "Digits (demo)"
TEXT_PROJECT_NAME = "Support messages (demo)"
CLASSES = [str(d) for d in range(10)]
# Of the 1,797 digits, this many go to the unlabelled pool; the rest, labelled, to the test split.
POOL_SIZE = 1500
# 8x8 is unreadable on a screen; nearest-neighbour keeps the pixels honest.
IMAGE_SIZE = 64
START_TIMEOUT_S = 90
IMPORT_TIMEOUT_S = 300
# How long the server and the worker may take to stop before they are killed: the worker
# finishes the job in hand first (a warm shutdown).
STOP_TIMEOUT_S = 20
# Lines of the log shown on the console when a process fails at start.
LOG_TAIL_LINES = 30
LOG_NAME = "demo.log"
# While the first run imports, what the worker does is said at most this often.
PROGRESS_EVERY_S = 15


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

    def stop(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM ends the demo as Ctrl-C does: through the same clean-up.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / LOG_NAME
    _log_to(log_path)
    say(f"SVP Label demo: data in {settings.data_dir}, the full log in {log_path}")
    say("migrating the database ...")
    # Imported once logging goes to the file: Alembic logs as it loads its plugins.
    from app.migrate import upgrade

    upgrade()
    ensure_users()
    env = dict(os.environ, SVP_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1")
    env.pop("SVP_INLINE_JOBS", None)
    children = Children(log_path)

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    try:
        say(f"starting the server on {base} and a worker ...")
        children.spawn("worker", ["worker"], env)
        children.spawn(
            "server", ["serve", "--no-migrate", "--host", host, "--port", str(port)], env
        )
        _wait_healthy(base, children)
        ensure_project(base)
        _print_banner(base, log_path)
        while (exited := children.exited()) is None:
            time.sleep(0.5)
        children.fail(f"the {exited} exited")
        return 1
    except KeyboardInterrupt:
        say("\nstopping the server and the worker ...")
        return 0
    finally:
        children.stop(STOP_TIMEOUT_S)


def say(line: str) -> None:
    """A line for the person at the console (the log file gets everything else)."""
    print(line, flush=True)


def _log_to(path: Path) -> None:
    """Send this process's logging (Alembic's, httpx's) to the log file, not the console."""
    with open(path, "a") as f:
        f.write(f"\n---- svplabel demo started {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n")
    logging.basicConfig(
        filename=path,
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise here


class Children:
    """The demo's server and worker: their output to the log file, each in a process group of
    its own, so that stopping them reaches what they started too (a worker's pool processes)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        """Start ``svplabel <args>`` as the process called ``name``."""
        with open(self.log_path, "ab") as log:
            self.procs[name] = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "app.cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own group: a signal to the group reaches its children as well. Ctrl-C at
                # the console reaches only the demo, which stops the groups in order.
                start_new_session=True,
                # Run between fork and exec, which is safe while no other thread runs: the demo
                # starts none before its children.
                preexec_fn=_end_with_parent,
            )

    def exited(self) -> str | None:
        """The name of a process that has exited, or None while all run."""
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def fail(self, why: str) -> None:
        """Say on the console why the demo stops, with the end of the log."""
        with open(self.log_path, errors="replace") as f:
            tail = f.readlines()[-LOG_TAIL_LINES:]
        print(f"{why}; the end of {self.log_path}:\n{''.join(tail)}", file=sys.stderr, flush=True)

    def stop(self, timeout: float) -> None:
        """Ask every group to stop, wait up to ``timeout`` (cut short by another Ctrl-C or
        SIGTERM), then kill whatever is left of each group."""
        hurry = False

        def _hurry(signum: int, _frame: FrameType | None) -> None:
            nonlocal hurry
            hurry = True

        # A second signal must not abandon the clean-up halfway: it only ends the wait.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _hurry)
        for p in self.procs.values():
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not hurry and time.monotonic() < deadline and not self.exited_all():
            time.sleep(0.1)
        # The whole group, its leader gone or not: a child it left behind goes too.
        for p in self.procs.values():
            _signal_group(p, signal.SIGKILL)
        for p in self.procs.values():
            p.wait()

    def exited_all(self) -> bool:
        """Whether every process has exited."""
        return all(p.poll() is not None for p in self.procs.values())


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    # An empty group is gone already (macOS answers EPERM for a group of one zombie).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _end_with_parent() -> None:
    """In a child, before exec: die with the demo even if the demo is killed outright."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def ensure_users() -> None:
    """Create the demo users; on a later run the existing ones are kept as they are."""
    with unit_of_work() as db:
        for u in USERS:
            if db.scalar(select(User.id).where(User.username == u.username)) is None:
                create_user(db, username=u.username, password=u.password, role=u.role)


@dataclass(frozen=True)
class Upload:
    """One file the demo uploads into a project, with the form's fields."""

    name: str
    data: bytes
    media_type: str
    split: str
    labels_from_folders: bool = False


@dataclass(frozen=True)
class DemoProject:
    """A project the demo makes on its first run: what to create and what to upload."""

    create: dict[str, Any]
    # For the console, after "importing": what, how many to label and how many to test on.
    what: str
    uploads: Callable[[], list[Upload]]

    @property
    def name(self) -> str:
        """The project's name, by which a later run finds it."""
        return str(self.create["name"])


def _digit_uploads() -> list[Upload]:
    pool, test = digits_zips()
    return [
        Upload("digits-pool.zip", pool, "application/zip", "pool"),
        Upload("digits-test.zip", test, "application/zip", "test", labels_from_folders=True),
    ]


def _text_uploads() -> list[Upload]:
    # The pool's CSV has no label column; the test split's labels come from its own.
    pool, test = support_csvs()
    return [
        Upload("support-pool.csv", pool, "text/csv", "pool"),
        Upload("support-test.csv", test, "text/csv", "test"),
    ]


# The settings say what each round uses, so the demo shows it whatever the defaults become:
# a linear head on frozen embeddings, typical points first (a cold start) and uncertainty
# across clusters once labels per class grow.
DEMO_PROJECTS = (
    DemoProject(
        create={
            "name": PROJECT_NAME,
            "classes": CLASSES,
            "description": "Handwritten digits from scikit-learn, 8x8 shown at 64x64.",
            "settings": {
                "default_proxy": "linear",
                "backbone": "efficientnet_lite0",
                "strategy": "auto",
                "cold_start": "auto",
                "batch_size": 20,
            },
        },
        what=f"the digits on the worker, {POOL_SIZE} to label and the rest labelled for testing",
        uploads=_digit_uploads,
    ),
    DemoProject(
        create={
            "name": TEXT_PROJECT_NAME,
            "kind": "text",
            "classes": TEXT_CLASSES,
            "description": "Short customer-support messages written for the demo: "
            "is each about billing, a delivery, an account or a product?",
            "settings": {
                "default_proxy": "linear",
                # GloVe means: its first round embeds the 500 messages in about a second
                # where MiniLM, the text default, takes tens of seconds on a busy laptop CPU.
                "backbone": "glove_6b_50d",
                "strategy": "auto",
                "cold_start": "auto",
                "batch_size": 20,
            },
        },
        what=f"the support messages on the worker, {len(TEXT_CLASSES) * POOL_PER_CLASS} to label "
        f"and {len(TEXT_CLASSES) * TEST_PER_CLASS} labelled for testing",
        uploads=_text_uploads,
    ),
)


def ensure_project(base: str) -> None:
    """Create the demo's projects and import their items through the API, once each."""
    c = _login(base, "engineer")
    try:
        existing = {p["name"] for p in c.get("/api/projects").raise_for_status().json()}
        for demo in DEMO_PROJECTS:
            if demo.name in existing:
                say(f"project {demo.name!r} exists; reusing it")
            else:
                _make_project(c, demo)
    finally:
        c.close()


def _make_project(c: httpx.Client, demo: DemoProject) -> None:
    project = c.post("/api/projects", json=demo.create).raise_for_status().json()
    pid = project["id"]
    c.put(
        f"/api/projects/{pid}/members", json={"username": "annotator", "role": "annotator"}
    ).raise_for_status()
    jobs = [_upload(c, pid, u) for u in demo.uploads()]
    say(f"importing {demo.what} (the first run only) ...")
    for job in jobs:
        done = _wait_job(c, job["id"])
        result = done.get("result") or {}
        say(
            f"  job {done['id']} {done['status']}: {result.get('added', 0)} added, "
            f"{result.get('duplicates', 0)} duplicates, "
            f"{len(result.get('rejected', []))} rejected"
        )


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


def _upload(c: httpx.Client, pid: int, upload: Upload) -> dict[str, Any]:
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": (upload.name, upload.data, upload.media_type)},
        data={
            "split": upload.split,
            "labels_from_folders": "true" if upload.labels_from_folders else "false",
        },
    )
    r.raise_for_status()
    job: dict[str, Any] = r.json()
    return job


def _wait_job(c: httpx.Client, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + IMPORT_TIMEOUT_S
    said, next_report = "", time.monotonic() + PROGRESS_EVERY_S
    while True:
        job: dict[str, Any] = c.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        if time.monotonic() >= next_report:
            # What the worker is busy with: this job, or one before it (the pool's embedding).
            running = c.get(
                "/api/jobs", params={"project_id": job["project_id"], "status": "running"}
            ).json()
            line = ", ".join(
                f"{j['kind']} job {j['id']} {j['stage'] or 'running'} {j['progress']:.0%}"
                for j in running
            )
            if line and line != said:
                say(f"  the worker: {line}")
                said = line
            next_report = time.monotonic() + PROGRESS_EVERY_S
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


def _wait_healthy(base: str, children: Children) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if (exited := children.exited()) is not None:
            children.fail(f"the {exited} exited at start")
            raise SystemExit(1)
        try:
            health = httpx.get(f"{base}/api/health", timeout=2)
            if health.status_code == 200 and health.json().get("workers"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    children.fail(f"the server did not answer at {base} within {START_TIMEOUT_S}s")
    raise SystemExit(1)


def _print_banner(base: str, log_path: Path) -> None:
    logins = "\n".join(f"    {u.role:<10} {u.username} / {u.password}" for u in USERS)
    say(
        f"\nSVP Label demo is running at {base}/\n"
        f"  logins:\n{logins}\n"
        f"  API docs: {base}/docs\n"
        f"  log: {log_path}\n"
        "  Ctrl-C stops the server and the worker.\n"
    )
