"""A text project end to end over real processes: ``svplabel serve`` and two ``svplabel worker``.

Import CSVs (the test split labelled in the file), embed them with a text encoder fanned out over
both workers, a cold start on the embeddings, a calibrated ``auto`` round on the labels, labels
through ``queue/next`` and ``POST /api/labels``, a ``fasttext`` round, a core-set, and
evaluations with the ``linear`` and ``vdcnn`` targets (DESIGN 4c). ``glove_6b_50d`` keeps it
quick; ``minilm_l6``, the default encoder, runs one cold start and one round of its own.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.procs import stack
from tests.test_e2e import admin_client, embed_jobs, labelled_ids, run_round, wait_job

pytestmark = pytest.mark.slow

CLASSES = ["sports", "weather", "cooking"]
WORDS = {
    "sports": "football goal match team score player league coach stadium referee season win",
    "weather": "rain storm cloud forecast wind snow temperature sunny humid thunder cold frost",
    "cooking": "recipe oven bake flour butter sauce garlic onion simmer kitchen dinner salt",
}
FILLER = ["the", "a", "today", "we", "it", "was", "this", "and", "very", "then", "of", "some"]


def texts(cls: str, n: int, offset: int = 0) -> list[tuple[str, str]]:
    """``n`` (name, text) pairs of a class: its own words among common ones, each distinct."""
    rng = np.random.default_rng(1000 * CLASSES.index(cls) + offset)
    own = WORDS[cls].split()
    out = []
    for i in range(offset, offset + n):
        words = [str(w) for w in rng.choice(own, size=6)] + [
            str(w) for w in rng.choice(FILLER, size=6)
        ]
        rng.shuffle(words)
        out.append((f"{cls}_{i}", " ".join(words) + f" ({i})"))
    return out


def make_csv(per_class: int, *, offset: int = 0, labelled: bool = False) -> bytes:
    """A CSV with ``name`` and ``text`` columns (and ``label`` when asked)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "text", "label"] if labelled else ["name", "text"])
    for cls in CLASSES:
        for name, text in texts(cls, per_class, offset):
            writer.writerow([name, text, cls] if labelled else [name, text])
    return buf.getvalue().encode()


def upload_csv(c: httpx.Client, pid: int, data: bytes, split: str) -> dict[str, Any]:
    """Upload a CSV and wait for its import job to succeed; the job."""
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": ("texts.csv", data, "text/csv")},
        data={"split": split},
    )
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def newest_embedding(c: httpx.Client, pid: int, count: int) -> dict[str, Any]:
    """The newest of ``count`` embedding jobs once it has succeeded."""
    jobs = embed_jobs(c, pid)
    assert len(jobs) == count, jobs
    job = wait_job(c, jobs[0]["id"], timeout=600)
    assert job["status"] == "succeeded", job
    return job


def label_through_queue(c: httpx.Client, pid: int, expected: int) -> None:
    """Lease the batch through the queue, which carries the whole text, and label each item."""
    done = 0
    while entries := c.post(f"/api/projects/{pid}/queue/next", params={"n": 4}).json():
        for e in entries:
            item = c.get(f"/api/items/{e['item_id']}").json()
            assert e["text"] == item["text"]
            assert e["text_chars"] == len(item["text"])
            cls = item["name"].split("_", 1)[0]
            r = c.post(
                "/api/labels",
                json={"item_id": e["item_id"], "label": cls, "key": f"text-{e['item_id']}"},
            )
            assert r.status_code == 201, r.text
            done += 1
    assert done == expected


def suggested(selection: list[dict[str, Any]]) -> None:
    """Every entry of a trained round's batch carries a suggestion with a confidence."""
    assert all(s["suggestion"]["label"] in CLASSES for s in selection), selection
    assert all(0 < s["suggestion"]["confidence"] <= 1 for s in selection)


def run_job(c: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a job-starting request; the job once it has succeeded."""
    r = c.post(path, json=body)
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", job
    return job


def test_text_project_over_serve_and_two_workers(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    # Chunks of 8 texts and one torch thread a worker: the pool's embedding fans out.
    env = {
        "SVP_WORKER_HEARTBEAT_SECONDS": "1",
        "SVP_EMBED_CHUNK_SIZE": "8",
        "SVP_TORCH_THREADS": "1",
    }
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        s.worker("worker-1")
        s.worker("worker-2")
        c = admin_client(s)
        r = c.post(
            "/api/projects",
            json={
                "name": "topics",
                "kind": "text",
                "classes": CLASSES,
                "settings": {"backbone": "glove_6b_50d"},
            },
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert r.json()["settings"]["default_proxy"] == "linear"

        upload_csv(c, pid, make_csv(5, offset=500, labelled=True), "test")
        first = newest_embedding(c, pid, 1)
        assert (first["result"]["backbone"], first["result"]["image_size"]) == ("glove_6b_50d", 0)
        upload_csv(c, pid, make_csv(40), "pool")
        pool_job = newest_embedding(c, pid, 2)
        result = pool_job["result"]
        assert (result["images"], result["total"]) == (120, 135)
        assert result["chunks"] == 15
        assert sum(result["workers"].values()) == 15

        # Cold start: typical points of the encoder's embeddings, warm from the import's job.
        cold, selection, _ = run_round(c, pid, "auto", 6, {})
        assert cold["proxy"] == {"arch": "linear", "backbone": "glove_6b_50d", "image_size": 0}
        assert (cold["metrics"]["cold_start"], cold["metrics"]["embedding"]) == ("typiclust", None)
        assert all(s["suggestion"]["label"] is None for s in selection)
        assert all(s["text"] and s["text_chars"] for s in selection)
        label_through_queue(c, pid, 6)
        assert c.get(f"/api/rounds/{cold['id']}").json()["status"] == "completed"

        # A calibrated linear head on the labels.
        rnd, selection, _ = run_round(c, pid, "auto", 9, {})
        m = rnd["metrics"]
        assert (m["labeled"], m["test_labeled"], m["backbone"]) == (6, 15, "glove_6b_50d")
        assert m["calibration"]
        assert m["calibration"]["temperature"] > 0
        assert m["proxy_test_accuracy"] >= 0.8
        suggested(selection)
        label_through_queue(c, pid, 9)

        # fastText from scratch on the 15 labelled texts; margin reads its probabilities.
        ft, selection, _ = run_round(c, pid, "margin", 6, {"arch": "fasttext", "epochs": 30})
        m = ft["metrics"]
        assert (m["arch"], m["proxy_backend"], m["labeled"]) == ("fasttext", "fasttext", 15)
        assert m["backbone"] == "glove_6b_50d"
        assert m["proxy_test_accuracy"] >= 0.6
        suggested(selection)
        label_through_queue(c, pid, 6)
        # kcenter on a fastText round covers the encoder's embeddings.
        kc, selection, _ = run_round(c, pid, "kcenter", 3, {"arch": "fasttext", "epochs": 5})
        assert (kc["metrics"]["strategy"], kc["metrics"]["labeled"]) == ("kcenter", 21)
        suggested(selection)
        assert not {x["item_id"] for x in selection} & labelled_ids(c, pid)

        linear = run_job(c, f"/api/projects/{pid}/evaluations", {"target": "linear"})
        assert (linear["result"]["target"], linear["result"]["labels"]) == ("linear", 21)
        assert linear["result"]["accuracy"] >= 0.8
        vdcnn = run_job(
            c,
            f"/api/projects/{pid}/evaluations",
            {"target": "vdcnn", "epochs": 1, "batch_size": 8},
        )
        assert vdcnn["result"]["target"] == "vdcnn"
        assert 0 <= vdcnn["result"]["accuracy"] <= 1

        for proxy in ({}, {"arch": "fasttext", "epochs": 5}):
            core = run_job(
                c,
                f"/api/projects/{pid}/coresets",
                {"fraction": 0.5, "strategy": "margin", "proxy": proxy, "seed": 3},
            )
            assert core["result"]["size"] == 10 or core["result"]["size"] == 11
            assert set(core["result"]["items"]) <= labelled_ids(c, pid)


def test_text_project_on_the_default_encoder(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    env = {"SVP_WORKER_HEARTBEAT_SECONDS": "1", "SVP_TORCH_THREADS": "1"}
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        s.serve()
        s.worker()
        c = admin_client(s)
        r = c.post("/api/projects", json={"name": "minilm", "kind": "text", "classes": CLASSES})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert r.json()["settings"]["backbone"] == "minilm_l6"
        upload_csv(c, pid, make_csv(3, offset=500, labelled=True), "test")
        upload_csv(c, pid, make_csv(10), "pool")
        newest_embedding(c, pid, 2)
        cold, _, _ = run_round(c, pid, "auto", 6, {})
        assert cold["metrics"]["cold_start"] == "typiclust"
        label_through_queue(c, pid, 6)
        rnd, selection, _ = run_round(c, pid, "least_confidence", 3, {})
        assert rnd["metrics"]["backbone"] == "minilm_l6"
        assert rnd["metrics"]["proxy_test_accuracy"] >= 0.6
        suggested(selection)
        # An image backbone on a text project is refused where it is named.
        r = c.post(f"/api/projects/{pid}/embeddings", json={"backbone": "efficientnet_lite0"})
        assert r.status_code == 422, r.text
        job = run_job(c, f"/api/projects/{pid}/embeddings", {})
        assert (job["result"]["backbone"], job["result"]["images"]) == ("minilm_l6", 0)
