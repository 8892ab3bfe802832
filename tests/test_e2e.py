"""End to end over real processes: ``svplabel serve`` and ``svplabel worker``, HTTP only.

Upload a zip, run a cold-start round, label its batch through the queue, then least-confidence
and k-centre rounds with a small proxy, watching one of them over the events stream. And the
fault a deployment meets: a worker killed mid-training, whose round must not stay running.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.procs import Stack, stack, wait_for

pytestmark = pytest.mark.slow

CLASSES = ["red", "green", "blue"]
ADMIN = {"username": "admin", "password": "admin-password"}


def colour_png(cls: int, i: int, size: int = 16) -> bytes:
    """An image mostly of its class's colour, with noise so each one is distinct."""
    rng = np.random.default_rng(1000 * cls + i)
    base = np.zeros((size, size, 3), dtype=np.int16)
    base[..., cls] = 200
    pixels = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(per_class: int, offset: int = 0, folders: bool = False) -> bytes:
    """A zip of generated images; the class is in each name (and in its folder when asked)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, name in enumerate(CLASSES):
            for i in range(per_class):
                path = f"{name}/{name}_{offset + i}.png" if folders else f"{name}_{offset + i}.png"
                zf.writestr(path, colour_png(cls, offset + i))
    return buf.getvalue()


def true_class(name: str) -> str:
    """The class an item's name says (``red_3.png`` or ``red/red_3.png``)."""
    return name.rsplit("/", 1)[-1].split("_", 1)[0]


def admin_client(s: Stack) -> httpx.Client:
    """Signed in as the stack's admin by cookie, sending the CSRF token."""
    c = httpx.Client(base_url=s.url, timeout=60)
    r = c.post("/api/auth/login", json=ADMIN)
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def wait_job(c: httpx.Client, job_id: int, timeout: float = 180) -> dict[str, Any]:
    """Poll a job until it finishes; return it."""
    box: dict[str, Any] = {}

    def done() -> bool:
        box["job"] = c.get(f"/api/jobs/{job_id}").json()
        return box["job"]["status"] in ("succeeded", "failed", "canceled")

    wait_for(done, timeout, f"job {job_id} did not finish: {box}", interval=0.5)
    return box["job"]


def wait_round(c: httpx.Client, rid: int, timeout: float = 300) -> dict[str, Any]:
    """Poll a round until it has left queued and running; return it."""
    box: dict[str, Any] = {}

    def settled() -> bool:
        box["round"] = c.get(f"/api/rounds/{rid}").json()
        return box["round"]["status"] not in ("queued", "running")

    wait_for(settled, timeout, f"round {rid} did not settle: {box}", interval=0.5)
    return box["round"]


def upload(c: httpx.Client, pid: int, data: bytes, split: str, folders: bool = False) -> None:
    """Upload a zip and wait for its import job to succeed."""
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": ("images.zip", data, "application/zip")},
        data={"split": split, "labels_from_folders": "true" if folders else "false"},
    )
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["status"] == "succeeded", job


def label_batch(c: httpx.Client, pid: int, expected: int) -> None:
    """Lease the batch through the queue and label each item with its true class."""
    done = 0
    while True:
        entries = c.post(f"/api/projects/{pid}/queue/next", params={"n": 5}).json()
        if not entries:
            break
        for e in entries:
            name = c.get(f"/api/items/{e['item_id']}").json()["name"]
            r = c.post(
                "/api/labels",
                json={
                    "item_id": e["item_id"],
                    "label": true_class(name),
                    "key": f"e2e-{e['item_id']}",
                },
            )
            assert r.status_code == 201, r.text
            done += 1
    assert done == expected


def labelled_ids(c: httpx.Client, pid: int) -> set[int]:
    """Ids of the project's labelled pool items."""
    out: set[int] = set()
    after = None
    while True:
        params: dict[str, Any] = {"status": "labeled", "split": "pool", "limit": 500}
        if after:
            params["after"] = after
        page = c.get(f"/api/projects/{pid}/items", params=params).json()
        out |= {it["id"] for it in page["items"]}
        after = page["next"]
        if not after:
            return out


def read_events(c: httpx.Client, rid: int, into: list[dict[str, Any]]) -> None:
    """Read a round's SSE stream to its end, appending each event's JSON."""
    with c.stream("GET", f"/api/rounds/{rid}/events", timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                into.append(json.loads(line[5:].strip()))


def run_round(
    c: httpx.Client, pid: int, strategy: str, batch: int, proxy: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Start a round, follow its events to the end; return (round, batch, events)."""
    labelled = labelled_ids(c, pid)
    r = c.post(
        f"/api/projects/{pid}/rounds",
        json={"strategy": strategy, "batch_size": batch, "proxy": proxy, "seed": 11},
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    events: list[dict[str, Any]] = []
    reader = threading.Thread(target=read_events, args=(c, r.json()["id"], events))
    reader.start()
    rnd = wait_round(c, r.json()["id"])
    reader.join(60)
    assert rnd["status"] == "labeling", rnd
    selection = c.get(f"/api/rounds/{rnd['id']}/selection").json()
    assert len(selection) == batch
    assert [s["rank"] for s in selection] == list(range(batch))
    assert not {s["item_id"] for s in selection} & labelled
    assert events
    assert events[-1]["status"] == "labeling"
    return rnd, selection, events


def test_rounds_end_to_end(tmp_path: Path, database_url: str, broker_url: str) -> None:
    env = {"SVP_WORKER_HEARTBEAT_SECONDS": "1"}
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        s.worker()
        c = admin_client(s)
        r = c.post(
            "/api/projects",
            json={"name": "colours", "classes": CLASSES, "settings": {"image_size": 16}},
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        upload(c, pid, make_zip(20), "pool")
        upload(c, pid, make_zip(3, offset=500, folders=True), "test", folders=True)

        # Cold start: no labels, so a random batch and no suggestions.
        cold, selection, _ = run_round(c, pid, "least_confidence", 6, {"arch": "tiny_cnn"})
        assert cold["metrics"]["cold_start"] == "random"
        assert all(s["suggestion"]["label"] is None for s in selection)
        label_batch(c, pid, 6)
        assert c.get(f"/api/rounds/{cold['id']}").json()["status"] == "completed"

        # Enough epochs that training spans several polls of the events stream.
        proxy = {"arch": "small_cnn", "epochs": 60, "batch_size": 16, "image_size": 16}
        lc, selection, events = run_round(c, pid, "least_confidence", 6, proxy)
        assert any(e["stage"] == "training" and e["status"] == "running" for e in events), events
        check_trained(lc, selection, labelled=6)
        label_batch(c, pid, 6)

        kc, selection, _ = run_round(c, pid, "kcenter", 6, {**proxy, "epochs": 5})
        check_trained(kc, selection, labelled=12)
        assert kc["metrics"]["strategy"] == "kcenter"


def check_trained(rnd: dict[str, Any], selection: list[dict[str, Any]], labelled: int) -> None:
    """A round that trained its proxy: suggestions on every item, the metrics the design lists."""
    assert all(s["suggestion"]["label"] in CLASSES for s in selection)
    assert all(0 < s["suggestion"]["confidence"] <= 1 for s in selection)
    assert all(s["image_url"] == f"/api/items/{s['item_id']}/image" for s in selection)
    m = rnd["metrics"]
    assert (m["labeled"], m["pool"], m["test_labeled"]) == (labelled, 60 - labelled, 9)
    assert (m["seed"], m["cold_start"]) == (11, None)
    assert 0 <= m["proxy_test_accuracy"] <= 1
    assert m["seconds_training"] > 0


def test_a_worker_killed_mid_training_does_not_leave_its_round_running(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    env = {"SVP_WORKER_HEARTBEAT_SECONDS": "0.5", "SVP_WORKER_DEAD_AFTER_SECONDS": "3"}
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        first = s.worker("worker-1")
        c = admin_client(s)
        r = c.post("/api/projects", json={"name": "faults", "classes": CLASSES})
        pid = r.json()["id"]
        upload(c, pid, make_zip(30, folders=True), "pool", folders=True)
        upload(c, pid, make_zip(4, offset=700), "pool")
        # 90 labelled images at 32 px through preact20: long enough to be killed mid-way.
        proxy = {"arch": "preact20", "epochs": 40, "batch_size": 32, "image_size": 32}
        r = c.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": "entropy", "batch_size": 4, "proxy": proxy, "seed": 5},
        )
        assert r.status_code == 202, r.text
        rid, jid = r.json()["id"], r.json()["job_id"]

        def training() -> bool:
            rnd = c.get(f"/api/rounds/{rid}").json()
            return rnd["stage"] == "training" and rnd["progress"] > 0

        wait_for(training, 180, "the round never reached training", first)
        first.kill()  # SIGKILL to the process group: no chance to clean up
        first.popen.wait(10)
        assert c.get(f"/api/rounds/{rid}").json()["status"] == "running"
        s.worker("worker-2")
        rnd = wait_round(c, rid, timeout=400)
        job = c.get(f"/api/jobs/{jid}").json()
        # Redelivered and finished by the second worker, or given up with a reason: never stuck.
        if rnd["status"] == "labeling":
            assert job["status"] == "succeeded"
            assert len(c.get(f"/api/rounds/{rid}/selection").json()) == 4
        else:
            assert rnd["status"] == "failed", rnd
            assert rnd["error"]


def embed_jobs(c: httpx.Client, pid: int) -> list[dict[str, Any]]:
    """The project's embedding jobs, newest first."""
    r = c.get(f"/api/projects/{pid}/embeddings")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_linear_auto_rounds_with_embedding_fanned_out_over_two_workers(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    # Small chunks and one torch thread a worker: the pool's embedding job is long enough, and
    # split finely enough, that the second worker's help arrives while chunks are left.
    env = {
        "SVP_WORKER_HEARTBEAT_SECONDS": "1",
        "SVP_EMBED_CHUNK_SIZE": "8",
        "SVP_TORCH_THREADS": "1",
        # Torch: through ONNX Runtime one worker finishes before the other has its model.
        "SVP_EMBED_RUNTIME": "torch",
    }
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        s.worker("worker-1")
        s.worker("worker-2")
        c = admin_client(s)
        # The product's defaults: a linear head on EfficientNet-Lite0 embeddings, auto.
        r = c.post("/api/projects", json={"name": "colours-linear", "classes": CLASSES})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert (r.json()["settings"]["default_proxy"], r.json()["settings"]["strategy"]) == (
            "linear",
            "auto",
        )
        upload(c, pid, make_zip(5, offset=500, folders=True), "test", folders=True)
        first = embed_jobs(c, pid)
        assert len(first) == 1
        assert wait_job(c, first[0]["id"])["status"] == "succeeded"
        # Each import queues the embedding of what it added; this one fans out.
        upload(c, pid, make_zip(120), "pool")
        jobs = embed_jobs(c, pid)
        assert len(jobs) == 2
        pool_job = wait_job(c, jobs[0]["id"], timeout=600)
        assert pool_job["status"] == "succeeded", pool_job
        result = pool_job["result"]
        assert (result["images"], result["total"]) == (360, 375)
        assert result["chunks"] == 45
        assert sum(result["workers"].values()) == 45
        assert len(result["workers"]) == 2, result

        cold, selection, _ = run_round(c, pid, "auto", 6, {})
        assert cold["proxy"]["arch"] == "linear"
        assert cold["metrics"]["cold_start"] == "typiclust"
        assert cold["metrics"]["embedding"] is None  # warm: the import's job did it
        assert all(s["suggestion"]["label"] is None for s in selection)
        names = {
            e["item_id"]: c.get(f"/api/items/{e['item_id']}").json()["name"] for e in selection
        }
        assert {true_class(n) for n in names.values()} == set(CLASSES)
        label_batch(c, pid, 6)

        rnd, selection, _ = run_round(c, pid, "auto", 9, {})
        m = rnd["metrics"]
        assert (m["labeled"], m["test_labeled"], m["backbone"]) == (6, 15, "efficientnet_lite0")
        assert m["selection"]["auto_choice"] == "typiclust"
        assert m["proxy_test_accuracy"] >= 0.8
        assert all(s["suggestion"]["label"] in CLASSES for s in selection)
        label_batch(c, pid, 9)
        done = c.get(f"/api/rounds/{rnd['id']}").json()
        assert done["status"] == "completed"
        assert done["metrics"]["suggestion_accuracy"] >= 0.7
