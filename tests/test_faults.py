"""Faults a deployment meets, with real processes on PostgreSQL and Redis (issue 9, item 1).

Each fault ends with every label that got a 201 stored exactly once and no round or job left
queued or running: the server SIGKILLed under annotator load; a worker SIGKILLed while training,
while embedding and inside the transaction that writes a batch; Redis restarted with a round
queued and with one running; PostgreSQL restarted under load (503s meanwhile, then recovery with
no restart of server or worker); a lease that runs out while its annotator still looks.

The shared PostgreSQL and Redis are never restarted: the broker and database faults start their
own private instances on free ports. These tests run in the PostgreSQL + Redis pass of
scripts/test (the lease test, in-process, on both back ends).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text, update

from app.db import unit_of_work, utcnow
from app.labeling.models import Lease
from tests.conftest import BACKEND
from tests.factories import PASSWORD, Factory
from tests.procs import Stack, free_port, stack, wait_for
from tests.test_e2e import CLASSES, admin_client, make_zip, upload, wait_job, wait_round

_PG_AND_REDIS = (
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(
        BACKEND != "postgres" or not os.environ.get("SVP_TEST_REDIS_URL"),
        reason="fault tests run in the PostgreSQL + Redis pass of scripts/test "
        "(SVP_TEST_DATABASE=postgres and SVP_TEST_REDIS_URL set)",
    ),
)
F = TypeVar("F", bound=Callable[..., None])


def pg_and_redis(fn: F) -> F:
    """Mark a fault test: slow, PostgreSQL and Redis, skipped outside that pass."""
    for mark in _PG_AND_REDIS:
        fn = mark(fn)
    return fn


# Dead workers are noticed in seconds, not minutes.
FAST_RECOVERY = {"SVP_WORKER_HEARTBEAT_SECONDS": "0.5", "SVP_WORKER_DEAD_AFTER_SECONDS": "3"}
UNAVAILABLE = "the database is unavailable right now; try again in a few seconds"


# ---- what every fault must leave behind ---------------------------------------------------


def check_settled(database_url: str, acked: dict[str, int], *, labels_per_item: int = 1) -> None:
    """Every acknowledged label stored once under its key; no round or job queued or running."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            # Labels from an import carry no key; every label sent by a client has one.
            rows = conn.execute(text("SELECT id, key FROM labels WHERE key IS NOT NULL")).all()
            per_item = conn.execute(
                text("SELECT item_id, count(*) FROM labels GROUP BY item_id HAVING count(*) > :n"),
                {"n": labels_per_item},
            ).all()
            stuck_rounds = conn.execute(
                text("SELECT id, status FROM rounds WHERE status IN ('queued', 'running')")
            ).all()
            stuck_jobs = conn.execute(
                text("SELECT id, kind, status FROM jobs WHERE status IN ('queued', 'running')")
            ).all()
    finally:
        engine.dispose()
    by_key = Counter(key for _, key in rows)
    assert not [k for k, n in by_key.items() if n > 1], "a key stored twice"
    stored = {key: lid for lid, key in rows}
    missing = {k: lid for k, lid in acked.items() if stored.get(k) != lid}
    assert not missing, f"acknowledged labels lost: {missing}"
    assert not per_item, f"items labelled by more than one annotator: {per_item}"
    assert not stuck_rounds, stuck_rounds
    assert not stuck_jobs, stuck_jobs


def wait_no_live_jobs(c: httpx.Client, timeout: float = 60) -> None:
    """Wait until no job is queued or running (an import's embed job, a redelivery...)."""

    def idle() -> bool:
        jobs = c.get("/api/jobs", params={"limit": 500}).json()
        return all(j["status"] not in ("queued", "running") for j in jobs)

    wait_for(idle, timeout, "jobs still queued or running", interval=0.5)


# ---- annotators under load ----------------------------------------------------------------


@dataclass(eq=False)
class Annotator(threading.Thread):
    """An annotator's client in a thread: lease, label, retry what did not get an answer.

    A request that failed in transit (the server killed) or got 503 (the database down) is
    sent again with the same label key, as the front end's outbox does; ``acked`` holds every
    key answered 201 or 200, with the label's id.
    """

    url: str
    username: str
    project_id: int
    acked: dict[str, int] = field(default_factory=dict)
    statuses: Counter[int | str] = field(default_factory=Counter)
    unavailable: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    labelled: int = 0

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name=self.username, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=15)

    def send(self, method: str, path: str, *, login: bool = False, **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = self.client.request(method, path, **kw)
            except httpx.TransportError:
                self.statuses["transport"] += 1
                time.sleep(0.2)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 503:
                self.unavailable.append((r.json(), r.headers.get("retry-after")))
                time.sleep(0.3)
                continue
            if r.status_code == 401 and not login:
                self.login()
                continue
            return r
        raise AssertionError(f"{self.username}: {method} {path} got no answer in 120 s")

    def login(self) -> None:
        body = {"username": self.username, "password": PASSWORD}
        r = self.send("POST", "/api/auth/login", login=True, json=body)
        assert r.status_code == 200, r.text
        self.client.headers["X-CSRF-Token"] = r.json()["csrf_token"]

    def run(self) -> None:
        try:
            self.login()
            while True:
                r = self.send(
                    "POST", f"/api/projects/{self.project_id}/queue/next", params={"n": 3}
                )
                assert r.status_code == 200, r.text
                if not r.json():
                    return
                for entry in r.json():
                    key = f"{self.username}-{entry['item_id']}"
                    body = {"item_id": entry["item_id"], "label": CLASSES[0], "key": key}
                    r = self.send("POST", "/api/labels", json=body)
                    assert r.status_code in (200, 201), r.text
                    self.acked[key] = r.json()["id"]
                    self.labelled += 1
        except Exception as exc:
            self.errors.append(repr(exc))


def add_annotators(c: httpx.Client, pid: int, n: int) -> list[str]:
    names = [f"ann{i}" for i in range(n)]
    for name in names:
        r = c.post("/api/users", json={"username": name, "password": PASSWORD, "role": "annotator"})
        assert r.status_code == 201, r.text
        r = c.put(f"/api/projects/{pid}/members", json={"username": name, "role": "annotator"})
        assert r.status_code == 200, r.text
    return names


def labelling_project(s: Stack, *, per_class: int, batch: int) -> tuple[httpx.Client, int, int]:
    """A project whose first (random) batch is being labelled; (admin, project id, round id)."""
    c = admin_client(s)
    body = {
        "name": "faults",
        "classes": CLASSES,
        "settings": {"image_size": 16, "default_proxy": "tiny_cnn"},
    }
    r = c.post("/api/projects", json=body)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    upload(c, pid, make_zip(per_class), "pool")
    r = c.post(
        f"/api/projects/{pid}/rounds",
        json={"strategy": "random", "batch_size": batch, "proxy": {"arch": "tiny_cnn"}},
    )
    assert r.status_code == 202, r.text
    rnd = wait_round(c, r.json()["id"], timeout=120)
    assert rnd["status"] == "labeling", rnd
    return c, pid, rnd["id"]


def finish(annotators: list[Annotator], timeout: float = 120) -> dict[str, int]:
    for a in annotators:
        a.join(timeout)
        assert not a.is_alive(), f"{a.username} still labelling"
        assert not a.errors, a.errors
        assert 500 not in a.statuses, a.statuses
    return {k: v for a in annotators for k, v in a.acked.items()}


# ---- a. the server SIGKILLed under annotator load ------------------------------------------


@pg_and_redis
def test_server_killed_under_annotator_load(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    with stack(tmp_path, database_url=database_url, broker_url=broker_url) as s:
        server = s.serve()
        s.worker()
        c, pid, rid = labelling_project(s, per_class=20, batch=48)
        annotators = [Annotator(s.url, n, pid) for n in add_annotators(c, pid, 4)]
        for a in annotators:
            a.start()
        wait_for(lambda: sum(a.labelled for a in annotators) >= 12, 60, "no labels came in")
        server.kill()  # SIGKILL mid-traffic: requests in flight get no answer
        server.popen.wait(10)
        time.sleep(1)
        s.serve()
        acked = finish(annotators)
        assert sum(a.statuses["transport"] for a in annotators) > 0, "the kill hit no request"
        assert len(acked) == 48
        assert c.get(f"/api/rounds/{rid}").json()["status"] == "completed"
        wait_no_live_jobs(c)
        check_settled(database_url, acked)


# ---- b. a worker SIGKILLed while training, embedding, writing a batch ----------------------


def embed_jobs(c: httpx.Client, pid: int) -> list[dict[str, Any]]:
    r = c.get(f"/api/projects/{pid}/embeddings")
    assert r.status_code == 200, r.text
    return list(r.json())


@pg_and_redis
@pytest.mark.parametrize("point", ["round:training", "round:save-batch", "embed:embedding"])
def test_a_worker_killed_mid_job_leaves_nothing_stuck_or_doubled(
    tmp_path: Path, database_url: str, broker_url: str, point: str
) -> None:
    # One chunk of 8 images at a time, no helpers: the embed job is killed with chunks left.
    env = {**FAST_RECOVERY, "SVP_EMBED_CHUNK_SIZE": "8", "SVP_EMBED_FANOUT": "0"}
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        # The first worker stops for good at the point (test-only SVP_TEST_PAUSE_AT), its
        # job's heartbeat still beating, and is SIGKILLed there.
        s.env["SVP_TEST_PAUSE_AT"] = point
        first = s.worker("worker-1")
        del s.env["SVP_TEST_PAUSE_AT"]
        c = admin_client(s)
        if point.startswith("embed"):
            # The product's default proxy: an import queues the embedding of what it added.
            r = c.post("/api/projects", json={"name": "embed", "classes": CLASSES})
            pid = r.json()["id"]
            upload(c, pid, make_zip(8), "pool")
            (job,) = embed_jobs(c, pid)
            rid, jid = None, job["id"]
        else:
            body = {
                "name": "rounds",
                "classes": CLASSES,
                "settings": {"image_size": 16, "default_proxy": "tiny_cnn"},
            }
            pid = c.post("/api/projects", json=body).json()["id"]
            upload(c, pid, make_zip(6, folders=True), "pool", folders=True)
            upload(c, pid, make_zip(6, offset=100), "pool")
            proxy = {"arch": "tiny_cnn", "epochs": 3, "batch_size": 8, "image_size": 16}
            r = c.post(
                f"/api/projects/{pid}/rounds",
                json={"strategy": "least_confidence", "batch_size": 5, "proxy": proxy},
            )
            assert r.status_code == 202, r.text
            rid, jid = r.json()["id"], r.json()["job_id"]
        paused = f"event=paused point={point}"
        wait_for(lambda: paused in first.log(), 90, f"worker-1 never reached {point}", first)
        stage = point.split(":")[1]
        job = c.get(f"/api/jobs/{jid}").json()
        assert (job["status"], job["stage"] if stage != "save-batch" else stage) == (
            "running",
            stage,
        ), job
        first.kill()  # SIGKILL to the worker and its pool child: no clean-up runs
        first.popen.wait(10)
        if rid is not None:
            assert c.get(f"/api/rounds/{rid}").json()["status"] == "running"
            # Killed inside the batch's transaction: nothing of it was committed.
            assert c.get(f"/api/rounds/{rid}/selection").json() == []
        s.worker("worker-2")
        job = wait_job(c, jid, timeout=120)
        assert job["status"] == "succeeded", job
        if rid is None:
            # The chunk finished before the kill is kept; the other two are embedded now.
            assert (job["result"]["images"], job["result"]["total"]) == (16, 24), job
        else:
            rnd = wait_round(c, rid, timeout=60)
            assert rnd["status"] == "labeling", rnd
            selection = c.get(f"/api/rounds/{rid}/selection").json()
            assert [e["rank"] for e in selection] == list(range(5))
            assert len({e["item_id"] for e in selection}) == 5
        wait_no_live_jobs(c)
        check_settled(database_url, {})


# ---- c. Redis restarted with a round queued, and with one running ---------------------------


@dataclass
class PrivateRedis:
    """A Redis of the test's own, without persistence: a restart loses every message."""

    exe: str
    log_path: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    self.exe,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_for(answers, 20, f"redis did not start: {self.log_path.read_text()}")

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def restart(self) -> None:
        """SIGKILL and start again on the same port: every queued message is gone."""
        self.kill()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed: the broker restart needs a private Redis")
    r = PrivateRedis(exe=exe, log_path=tmp_path / "redis.log")
    r.start()
    try:
        yield r
    finally:
        r.kill()


def test_a_running_worker_resends_queued_jobs_when_redis_comes_back_empty(
    factory: Factory, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that stays up while Redis restarts without persistence: the messages of jobs
    # still queued are gone, and its next beat must see the new Redis (another run_id) and send
    # them again, not leave them for job_resend_after_seconds (30 minutes by default).
    from app.jobs.models import Job
    from app.jobs.service import create_job
    from app.settings import get_settings
    from worker.heartbeat import Heartbeat

    monkeypatch.setenv("SVP_BROKER_URL", private_redis.url)
    monkeypatch.setenv("SVP_INLINE_JOBS", "false")
    get_settings.cache_clear()
    with unit_of_work() as db:
        job_id = create_job(db, kind="evaluate", project_id=None, params={}, created_by=None).id
    assert private_redis.client().dbsize() > 0  # sent after the commit: its message waits
    beat = Heartbeat(name="fault-beat", concurrency=1, interval=60)
    beat.register()
    # A second worker up all along: it sees the new Redis too, but only one of them re-sends.
    other = Heartbeat(name="fault-beat-2", concurrency=1, interval=60)
    other.register()
    other.tick()

    def sent_at() -> Any:
        with unit_of_work(write=False) as db:
            return db.get(Job, job_id).sent_at  # type: ignore[union-attr]

    beat.tick()
    first = sent_at()
    assert first is not None
    beat.tick()  # the same Redis: nothing is due, nothing is resent
    assert sent_at() == first
    private_redis.restart()
    assert private_redis.client().dbsize() == 0  # the message is gone
    beat.tick()
    assert sent_at() > first
    assert private_redis.client().dbsize() > 0  # its message waits in the new Redis
    resent = sent_at()
    other.tick()
    assert sent_at() == resent


def rounds_project(c: httpx.Client) -> int:
    body = {
        "name": "broker",
        "classes": CLASSES,
        "settings": {"image_size": 16, "default_proxy": "tiny_cnn"},
    }
    r = c.post("/api/projects", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


@pg_and_redis
def test_redis_restarted_with_a_round_queued(
    tmp_path: Path, database_url: str, private_redis: PrivateRedis
) -> None:
    with stack(
        tmp_path, database_url=database_url, broker_url=private_redis.url, extra_env=FAST_RECOVERY
    ) as s:
        s.serve()
        importer = s.worker("importer")
        c = admin_client(s)
        pid = rounds_project(c)
        upload(c, pid, make_zip(10), "pool")
        importer.stop()  # a clean stop: no worker runs when the round is queued
        r = c.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": "random", "batch_size": 5, "proxy": {"arch": "tiny_cnn"}},
        )
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        assert private_redis.client().dbsize() > 0  # the round's message waits in Redis
        private_redis.restart()
        assert private_redis.client().dbsize() == 0  # and is gone
        s.worker()
        rnd = wait_round(c, rid, timeout=60)
        assert rnd["status"] == "labeling", rnd
        assert len(c.get(f"/api/rounds/{rid}/selection").json()) == 5
        wait_no_live_jobs(c)
        check_settled(database_url, {})


@pg_and_redis
def test_redis_restarted_with_a_round_running(
    tmp_path: Path, database_url: str, private_redis: PrivateRedis
) -> None:
    with stack(
        tmp_path, database_url=database_url, broker_url=private_redis.url, extra_env=FAST_RECOVERY
    ) as s:
        server = s.serve()
        worker = s.worker()
        c = admin_client(s)
        pid = rounds_project(c)
        upload(c, pid, make_zip(10, folders=True), "pool", folders=True)
        upload(c, pid, make_zip(10, offset=100), "pool")
        # Long enough to be running while Redis goes away and comes back.
        proxy = {"arch": "small_cnn", "epochs": 25, "batch_size": 8, "image_size": 16}
        r = c.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": "entropy", "batch_size": 5, "proxy": proxy},
        )
        assert r.status_code == 202, r.text
        rid = r.json()["id"]

        def training() -> bool:
            rnd = c.get(f"/api/rounds/{rid}").json()
            return bool(rnd["stage"] == "training" and rnd["progress"] > 0)

        wait_for(training, 60, "the round never trained", worker)
        private_redis.restart()
        assert c.get(f"/api/rounds/{rid}").json()["status"] == "running"
        rnd = wait_round(c, rid, timeout=90)
        assert rnd["status"] == "labeling", rnd
        # Server and worker found the new Redis by themselves: the next round goes through.
        r = c.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": "random", "batch_size": 3, "supersede": True},
        )
        assert r.status_code == 202, r.text
        assert wait_round(c, r.json()["id"], timeout=60)["status"] == "labeling"
        assert server.alive()
        assert worker.alive()
        wait_no_live_jobs(c)
        check_settled(database_url, {})


# ---- d. PostgreSQL restarted under load ------------------------------------------------------


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (run as the postgres user when we are root)."""

    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
            "--auth=trust", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
            "-l", str(self.root / "postgres.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"
        )


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = Path(shutil.which("initdb") or (found[-1] if found else "initdb"))
    if not initdb.exists() or not (initdb.parent / "pg_ctl").exists():
        pytest.skip("initdb and pg_ctl are not installed: the restart needs a private PostgreSQL")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses to run as root")
    # Outside pytest's tmp dir, which the postgres user may not enter.
    root = Path(tempfile.mkdtemp(prefix="svp-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    pg = PrivatePostgres(bin_dir=initdb.parent, root=root)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pg_and_redis
def test_postgres_restarted_under_load(
    tmp_path: Path, private_postgres: PrivatePostgres, broker_url: str
) -> None:
    url = private_postgres.url
    with stack(tmp_path, database_url=url, broker_url=broker_url, extra_env=FAST_RECOVERY) as s:
        server = s.serve()
        worker = s.worker()
        c, pid, rid = labelling_project(s, per_class=20, batch=48)
        annotators = [Annotator(s.url, n, pid) for n in add_annotators(c, pid, 3)]
        for a in annotators:
            a.start()
        wait_for(lambda: sum(a.labelled for a in annotators) >= 8, 60, "no labels came in")
        private_postgres.stop()
        health = httpx.get(f"{s.url}/api/health", timeout=10)
        down = c.get(f"/api/projects/{pid}")
        wait_for(lambda: sum(len(a.unavailable) for a in annotators) >= 3, 30, "no 503 seen")
        private_postgres.start()
        acked = finish(annotators)
        assert health.status_code == 503, health.text
        assert (down.status_code, down.json()) == (503, {"detail": UNAVAILABLE}), down.text
        seen = [u for a in annotators for u in a.unavailable]
        assert all(u == ({"detail": UNAVAILABLE}, "2") for u in seen), seen[:3]
        assert len(acked) == 48
        assert c.get(f"/api/rounds/{rid}").json()["status"] == "completed"
        # Neither process was restarted: the same server takes requests, the same worker jobs.
        r = c.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": "random", "batch_size": 3, "proxy": {"arch": "tiny_cnn"}},
        )
        assert r.status_code == 202, r.text
        assert wait_round(c, r.json()["id"], timeout=60)["status"] == "labeling"
        assert server.alive()
        assert worker.alive()
        assert len([p for p in s.procs if p.name in ("server", "worker")]) == 2
        wait_no_live_jobs(c)
        check_settled(url, acked)


# ---- e. a lease that runs out while its annotator still looks -------------------------------


def test_a_late_label_never_overwrites_the_annotator_who_took_the_item_over(
    factory: Factory,
) -> None:
    eng, first, second = (factory.user(r) for r in ("engineer", "annotator", "annotator"))
    project = factory.project(eng, members={first: "annotator", second: "annotator"})
    items = factory.items(project, 3)
    factory.round_with_selection(project, items)
    a, b = factory.client(first), factory.client(second)

    def next_ids(c: Any, n: int) -> list[int]:
        r = c.post(f"/api/projects/{project.id}/queue/next", params={"n": n})
        assert r.status_code == 200, r.text
        return [e["item_id"] for e in r.json()]

    def label(c: Any, item: int, key: str) -> httpx.Response:
        return c.post("/api/labels", json={"item_id": item, "label": "cat", "key": key})

    def expire(item: int) -> None:
        with unit_of_work() as db:
            db.execute(
                update(Lease)
                .where(Lease.item_id == item)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

    x, y = items[0].id, items[1].id
    assert next_ids(a, 2) == [x, y]
    expire(x)
    # The item goes to the next annotator who asks; the first does not hold it any more.
    assert next_ids(b, 1) == [x]
    assert x not in next_ids(a, 3)
    # The first annotator's late label while the second holds it: 409, nothing stored.
    assert label(a, x, "late-1").status_code == 409
    assert label(b, x, "b-1").status_code == 201
    # Sent again once the second annotator labelled it: still refused, the item keeps the
    # second annotator's label (before, this answered 201 and replaced it).
    r = label(a, x, "late-1")
    assert r.status_code == 409, r.text
    # A lease that ran out while its annotator looked and that nobody took: still theirs.
    expire(y)
    assert label(a, y, "late-2").status_code == 201
    with unit_of_work(write=False) as db:
        rows = db.execute(text("SELECT item_id, key FROM labels ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(x, "b-1"), (y, "late-2")]
