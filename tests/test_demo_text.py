"""The demo's two projects: the digits and the support messages, the latter a text project whose
first round runs as it comes (issue 16 part 8).

The messages are made by app/demo_texts.py and read here by the server's own CSV reader; then a
real ``svplabel demo`` sets both projects up through the import API and a round on the text
project, with the project's own settings, reaches a batch of texts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.demo import DEMO_PROJECTS, PROJECT_NAME, TEXT_PROJECT_NAME, USERS
from app.demo_texts import CLASSES, POOL_PER_CLASS, TEST_PER_CLASS, support_csvs
from app.items.text_reader import TextReader
from tests.procs import free_port, wait_for
from tests.test_demo import running_on

DIGITS = 1797


def _read(tmp_path: Path, name: str, data: bytes) -> list[Any]:
    path = tmp_path / name
    path.write_bytes(data)
    reader = TextReader(classes=set(CLASSES), max_chars=100_000, from_folders=False)
    return list(reader.records([(path, name)]))


@pytest.mark.database_free
def test_the_support_messages_import_whole_and_the_same_every_time(tmp_path: Path) -> None:
    pool_csv, test_csv = support_csvs()
    assert support_csvs() == (pool_csv, test_csv)
    pool = _read(tmp_path, "support-pool.csv", pool_csv)
    test = _read(tmp_path, "support-test.csv", test_csv)
    assert [r.problem for r in pool + test if r.problem] == []
    texts = [r.text for r in pool + test]
    assert len(texts) == len(set(texts)) == len(CLASSES) * (POOL_PER_CLASS + TEST_PER_CLASS)
    # The pool is for the annotators: unlabelled. The test split is labelled, every class alike.
    assert {r.label for r in pool} == {None}
    labels = [r.label for r in test]
    assert {c: labels.count(c) for c in CLASSES} == dict.fromkeys(CLASSES, TEST_PER_CLASS)
    assert max(len(t) for t in texts) < 200


def _demo_client(base: str, username: str) -> httpx.Client:
    password = next(u.password for u in USERS if u.username == username)
    c = httpx.Client(base_url=base, timeout=60)
    r = c.post("/api/auth/login", json={"username": username, "password": password})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


@pytest.mark.slow
@pytest.mark.database_free
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_demo_sets_up_both_projects_and_the_text_round_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
    env.update(SVP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    demo = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console: list[str] = []
    reader = threading.Thread(target=lambda: console.extend(demo.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("is running at" in line for line in console):
            assert demo.poll() is None, "".join(console)
            assert time.monotonic() < deadline, "".join(console)
            time.sleep(0.5)
        text = "".join(console)
        assert "importing the support messages on the worker, 400 to label and 100" in text
        assert "400 added, 0 duplicates, 0 rejected" in text
        eng = _demo_client(base, "engineer")
        projects = {p["name"]: p for p in eng.get("/api/projects").raise_for_status().json()}
        assert set(projects) == {d.name for d in DEMO_PROJECTS} == {PROJECT_NAME, TEXT_PROJECT_NAME}
        digits, support = projects[PROJECT_NAME], projects[TEXT_PROJECT_NAME]
        assert (digits["kind"], digits["counts"]["items"]) == ("image", DIGITS)
        assert support["kind"] == "text"
        assert support["classes"] == CLASSES
        assert support["counts"]["items"] == len(CLASSES) * (POOL_PER_CLASS + TEST_PER_CLASS)
        assert support["counts"]["labeled"] == len(CLASSES) * TEST_PER_CLASS

        # The text project's first round with its own settings, as an engineer starts it from
        # the project view: embeddings, a cold start, a batch in labelling.
        pid = support["id"]
        settings = support["settings"]
        r = eng.post(
            f"/api/projects/{pid}/rounds",
            json={"strategy": settings["strategy"], "batch_size": settings["batch_size"]},
        ).raise_for_status()
        round_id = r.json()["id"]
        wait_for(
            lambda: eng.get(f"/api/rounds/{round_id}").json()["status"] in ("labeling", "failed"),
            300,
            "the demo's text round did not reach its batch",
        )
        assert eng.get(f"/api/rounds/{round_id}").json()["status"] == "labeling"
        ann = _demo_client(base, "annotator")
        entries = ann.post(f"/api/projects/{pid}/queue/next?n=5").raise_for_status().json()
        assert len(entries) == 5
        assert all(e["image_url"] is None and e["text"] for e in entries)
        first = entries[0]
        ann.post(
            "/api/labels", json={"item_id": first["item_id"], "label": "billing", "key": "demo-1"}
        ).raise_for_status()
        assert ann.get(f"/api/items/{first['item_id']}").json()["label"] == "billing"
        eng.close()
        ann.close()
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
        for leftover in running_on(data_dir):
            os.kill(leftover, signal.SIGKILL)
    reader.join(timeout=10)
