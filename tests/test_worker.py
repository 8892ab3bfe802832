"""Workers: the claim that makes a job run once, the reconciler, and real worker processes.

The first tests call the task and the reconciler in this process against the test's database;
the ``slow`` ones start ``svplabel serve`` and ``svplabel worker`` as real processes, on the
embedded broker or on Redis when ``SVP_TEST_REDIS_URL`` is set.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select, text

from app.db import unit_of_work, utcnow
from app.items.models import Item
from app.jobs.broker import QUEUES
from app.jobs.models import Job, WorkerNode
from app.jobs.reconcile import reconcile
from app.jobs.runtime import run_job
from app.jobs.service import create_job
from app.rounds.models import Round
from app.settings import Settings, get_settings
from tests.factories import Factory
from tests.procs import Stack, stack, wait_for
from worker.heartbeat import Heartbeat
from worker.tasks import run_job_task


@pytest.fixture
def no_worker(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Jobs go to the embedded broker, where no worker takes them: the test runs them itself."""
    monkeypatch.setenv("SVP_INLINE_JOBS", "false")
    get_settings.cache_clear()
    return get_settings()


def distinct_png(i: int) -> bytes:
    """A tiny PNG unique to ``i`` (its bytes are in the first pixels)."""
    pixels = np.zeros((24, 24), dtype=np.uint8)
    pixels.flat[:4] = np.frombuffer(i.to_bytes(4, "big"), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def images_zip(n: int) -> bytes:
    """A zip of ``n`` distinct images."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            z.writestr(f"img_{i:05d}.png", distinct_png(i))
    return buf.getvalue()


def import_job(project_id: int, n: int) -> int:
    """An import job of ``n`` images written as the upload endpoint writes one."""
    uploads = get_settings().uploads_dir
    folder = uuid.uuid4().hex
    (uploads / folder).mkdir(parents=True)
    data = images_zip(n)
    (uploads / folder / "a.zip").write_bytes(data)
    with unit_of_work() as db:
        job = create_job(
            db,
            kind="import",
            project_id=project_id,
            params={
                "upload_dir": folder,
                "files": [{"path": f"{folder}/a.zip", "name": "a.zip", "size": len(data)}],
                "split": "pool",
                "labels_from_folders": False,
            },
            created_by=None,
        )
        return job.id


def job_row(job_id: int) -> Job:
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        assert job is not None
        return job


def item_count(project_id: int) -> int:
    with unit_of_work(write=False) as db:
        return int(db.scalar(select(func.count()).where(Item.project_id == project_id)) or 0)


def test_a_job_delivered_twice_leaves_one_result(factory: Factory, no_worker: Settings) -> None:
    project = factory.project(factory.user("engineer"))
    job_id = import_job(project.id, 30)
    assert run_job_task(job_id) == "succeeded"
    first = job_row(job_id)
    assert run_job_task(job_id) == "succeeded"
    again = job_row(job_id)
    assert item_count(project.id) == 30
    assert (again.attempts, again.finished_at, again.result) == (1, first.finished_at, first.result)
    assert (again.progress, again.result and again.result["added"]) == (1.0, 30)


def test_a_redelivery_while_the_job_runs_elsewhere_does_nothing(
    factory: Factory, no_worker: Settings
) -> None:
    job = factory.job(None, status="running", attempts=1, worker="w1", heartbeat_at=utcnow())
    assert run_job(job.id, worker="w2") == "running"
    row = job_row(job.id)
    assert (row.status, row.attempts, row.worker) == ("running", 1, "w1")


def test_a_redelivery_after_its_worker_died_runs_the_job(
    factory: Factory, no_worker: Settings
) -> None:
    project = factory.project(factory.user("engineer"))
    job_id = import_job(project.id, 5)
    long_ago = utcnow() - timedelta(hours=1)
    with unit_of_work() as db:
        job = db.get(Job, job_id)
        assert job is not None
        job.status, job.attempts, job.worker, job.heartbeat_at = "running", 1, "w1", long_ago
    assert run_job(job_id, worker="w2") == "succeeded"
    row = job_row(job_id)
    assert (row.attempts, row.worker, item_count(project.id)) == (2, "w2", 5)


def test_reconcile_resends_the_job_of_a_dead_worker(factory: Factory, no_worker: Settings) -> None:
    dead = utcnow() - timedelta(seconds=no_worker.worker_dead_after_seconds + 1)
    lost = factory.job(None, status="running", attempts=1, heartbeat_at=dead)
    alive = factory.job(None, status="running", attempts=1, heartbeat_at=utcnow())
    done = reconcile()
    assert (done.requeued, done.failed) == ([lost.id], [])
    row = job_row(lost.id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.sent_at is not None  # sent again, after the reconciler's commit
    assert job_row(alive.id).status == "running"
    assert not reconcile()  # a second pass finds nothing more to do


def test_reconcile_gives_up_after_three_lost_workers(factory: Factory, no_worker: Settings) -> None:
    dead = utcnow() - timedelta(seconds=no_worker.worker_dead_after_seconds + 1)
    job = factory.job(None, status="running", attempts=3, heartbeat_at=dead)
    assert reconcile().failed == [job.id]
    row = job_row(job.id)
    assert row.status == "failed"
    assert row.error is not None
    assert "worker lost 3 times" in row.error


def test_reconcile_resends_queued_jobs_never_sent(factory: Factory, no_worker: Settings) -> None:
    now = utcnow()
    old = now - timedelta(minutes=5)
    never_sent = factory.job(None, created_at=old)
    sent_long_ago = factory.job(
        None, created_at=old, sent_at=now - timedelta(seconds=no_worker.job_resend_after_seconds)
    )
    just_sent = factory.job(None, created_at=old, sent_at=now)
    just_made = factory.job(None)
    assert sorted(reconcile(now + timedelta(seconds=1)).resent) == [
        never_sent.id,
        sent_long_ago.id,
    ]
    assert job_row(just_sent.id).sent_at == just_sent.sent_at
    assert job_row(just_made.id).sent_at is None


def test_a_starting_worker_resends_every_queued_job(factory: Factory, no_worker: Settings) -> None:
    # A broker restarted without persistence while no worker ran lost these messages.
    now = utcnow()
    just_sent = factory.job(None, created_at=now - timedelta(minutes=5), sent_at=now)
    assert not reconcile(now + timedelta(seconds=1))
    epoch = utcnow()  # the workers' (or the broker's) start, after the job was sent
    assert reconcile(resend_sent_before=epoch).resent == [just_sent.id]
    # Once per epoch: the next worker starting with the same epoch sends nothing again.
    assert not reconcile(resend_sent_before=epoch).resent


def test_workers_starting_together_resend_each_queued_job_once(
    factory: Factory, no_worker: Settings
) -> None:
    """Issue 17: every worker start re-sent one message per queued job, so N workers starting
    sent each job N times. Now the first start of the fleet sends it, the others find it sent."""
    from worker.heartbeat import Heartbeat

    now = utcnow()
    queued = [
        factory.job(None, created_at=now - timedelta(minutes=5), sent_at=now - timedelta(minutes=4))
        for _ in range(3)
    ]
    sent: list[list[datetime | None]] = []
    for k in range(4):
        beat = Heartbeat(name=f"burst-{k}@host", concurrency=1, interval=60)
        beat.register()
        beat.tick(starting=True)
        sent.append([job_row(j.id).sent_at for j in queued])
    first = sent[0]
    assert all(at is not None and at > now - timedelta(minutes=1) for at in first), first
    assert sent == [first] * 4, sent  # no later start sent them again


def test_reconcile_fails_a_round_whose_job_failed(factory: Factory, no_worker: Settings) -> None:
    project = factory.project(factory.user("engineer"))
    dead = utcnow() - timedelta(hours=1)
    job = factory.job(project, kind="round", status="running", attempts=3, heartbeat_at=dead)
    with unit_of_work() as db:
        rnd = Round(
            project_id=project.id,
            number=1,
            status="running",
            strategy="random",
            batch_size=10,
            seed=1,
            job_id=job.id,
        )
        db.add(rnd)
        db.flush()
        round_id = rnd.id
    assert reconcile().rounds == [round_id]
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, round_id)
        assert rnd is not None
        assert (rnd.status, rnd.error) == ("failed", job_row(job.id).error)


def test_heartbeat_registers_beats_and_leaves(no_worker: Settings) -> None:
    beat = Heartbeat(name="w-test@host", concurrency=2, interval=0.05)
    beat.start()
    try:
        with unit_of_work(write=False) as db:
            first = db.get(WorkerNode, "w-test@host")
            assert first is not None
            seen = first.last_seen
        time.sleep(0.3)
        with unit_of_work(write=False) as db:
            node = db.get(WorkerNode, "w-test@host")
            assert node is not None
            assert (node.concurrency, node.last_seen > seen) == (2, True)
    finally:
        beat.stop()
    with unit_of_work(write=False) as db:
        assert db.get(WorkerNode, "w-test@host") is None


# ---- real processes ----


def _client(s: Stack) -> httpx.Client:
    c = httpx.Client(base_url=s.url, timeout=30)
    r = c.post("/api/auth/login", json={"username": "admin", "password": "admin-password"})
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def _upload(c: httpx.Client, n: int) -> tuple[int, dict[str, Any]]:
    r = c.post("/api/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}", "classes": ["a", "b"]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": ("images.zip", images_zip(n), "application/zip")},
        data={"split": "pool"},
    )
    assert r.status_code == 202, r.text
    return pid, r.json()


def _job(c: httpx.Client, job_id: int) -> dict[str, Any]:
    r = c.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _finished(c: httpx.Client, job_id: int) -> bool:
    return _job(c, job_id)["status"] not in ("queued", "running")


WORKER_ENV = {"SVP_WORKER_HEARTBEAT_SECONDS": "0.5", "SVP_WORKER_DEAD_AFTER_SECONDS": "3"}


@pytest.mark.slow
def test_an_import_runs_on_a_real_worker(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    with stack(
        tmp_path, database_url=database_url, broker_url=broker_url, extra_env=WORKER_ENV
    ) as s:
        s.serve()
        worker = s.worker()
        c = _client(s)
        _, job = _upload(c, 40)
        assert job["status"] == "queued"
        wait_for(lambda: _finished(c, job["id"]), 60, f"job not done:\n{s.logs()}", worker)
        done = _job(c, job["id"])
        assert (done["status"], done["progress"]) == ("succeeded", 1.0), done
        assert (done["result"]["added"], done["attempts"]) == (40, 1)
        assert done["worker"]
        health = c.get("/api/health").json()
        assert health["broker"] in ("ok", "ok (embedded)"), health
        assert done["worker"] in [w["name"] for w in health["workers"]], health
        if "global_keyprefix" in broker_url:  # Redis: Celery's ping reaches the worker too
            # Health caches its broker probe for 2 s, and the server's start-up polls cached one
            # taken before the worker existed: wait (bounded) for a fresh probe to see the ping.
            def pinged() -> bool:
                workers = c.get("/api/health").json()["workers"]
                return [w["ping"] for w in workers] == [True]

            wait_for(pinged, 15, f"Celery's ping never reached the worker:\n{s.logs()}", worker)


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_finished_by_another(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    n = 6000  # about 4 s of import here: long enough to be caught running
    with stack(
        tmp_path, database_url=database_url, broker_url=broker_url, extra_env=WORKER_ENV
    ) as s:
        s.serve()
        first = s.worker("worker-1")
        c = _client(s)
        pid, job = _upload(c, n)
        wait_for(lambda: _job(c, job["id"])["status"] != "queued", 60, "never started", first, 0.02)
        first.kill()  # SIGKILL to the worker and its pool child, mid-import
        first.popen.wait(10)
        killed = _job(c, job["id"])
        assert killed["status"] == "running", f"import ended before the kill: {killed}"
        s.worker("worker-2")
        wait_for(lambda: _finished(c, job["id"]), 90, f"job stuck:\n{s.logs()}")
        done = _job(c, job["id"])
        assert (done["status"], done["attempts"]) == ("succeeded", 2), done
        assert done["result"]["added"] + done["result"]["duplicates"] == n
        items = c.get(f"/api/projects/{pid}").json()
        assert items["items"] == n, items


# Each process waits for the go file, then declares the embedded broker's queues (argv[1]: "ours"
# through declare_queues, "kombu" through Celery's own declaration, as a worker's consumer does).
_DECLARE_SCRIPT = """
import os, sys, time
from app.jobs.broker import declare_queues, get_celery
celery = get_celery()
while not os.path.exists(os.environ["GO_FILE"]):
    time.sleep(0.001)
if sys.argv[1] == "ours":
    declare_queues(celery)
else:
    with celery.connection_for_write() as conn:
        for queue in celery.conf.task_queues:
            queue.bind(conn.default_channel).declare()
"""


def declare_together(tmp_path: Path, how: str, processes: int = 6) -> list[int]:
    """Start ``processes`` processes on one fresh embedded broker and let them declare at once."""
    go = tmp_path / "go"
    env = {
        **os.environ,
        "SVP_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker' / 'broker.sqlite3'}",
        "GO_FILE": str(go),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DECLARE_SCRIPT, how],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    time.sleep(3)  # every process imported and waiting
    go.touch()
    return [p.wait(60) for p in procs]


def test_workers_starting_together_all_declare_the_embedded_queues(tmp_path: Path) -> None:
    # kombu's own check-then-insert lost a worker at start-up in CI (a unique-name error);
    # declare_together(tmp_path, "kombu") has one of six processes fail in about half the runs.
    assert declare_together(tmp_path, "ours") == [0] * 6
    broker = tmp_path / "broker" / "broker.sqlite3"
    engine = create_engine(f"sqlite:///{broker}")
    with engine.connect() as conn:
        names = sorted(r[0] for r in conn.execute(text("SELECT name FROM kombu_queue")))
    engine.dispose()
    assert names == sorted(QUEUES)
