"""Text import end to end: a CSV of N short generated texts through ``svplabel serve`` and a worker.

Makes the CSV (``--rows``, default 1,000,000; ~60 characters a text, one in ten labelled), starts
its own server and worker (embedded SQLite and broker by default, or ``--database-url`` /
``--broker-url``), creates a text project, uploads the file (streamed by the client), waits for
the import job, then reads item pages. Prints the upload and import seconds, the peak RSS of the
server's and the worker's process trees (VmHWM, read from /proc while they run), and page times.

    python bench/text_import.py --rows 200000
    python bench/text_import.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench \\
        --broker-url redis://127.0.0.1:6379/14 --out text_import.json
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.procs import Stack, stack  # noqa: E402

ADMIN = {"username": "admin", "password": "admin-password"}
WORDS = [
    "the",
    "battery",
    "screen",
    "price",
    "delivery",
    "support",
    "great",
    "poor",
    "fast",
    "slow",
    "works",
    "broke",
    "again",
    "never",
    "always",
    "love",
    "hate",
    "refund",
    "quality",
    "box",
    "arrived",
    "late",
    "early",
    "charger",
    "cable",
    "app",
    "update",
    "crash",
]


def make_csv(path: Path, rows: int, seed: int = 0) -> int:
    """Write ``rows`` short texts with a header; return the file's size in bytes."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            words = " ".join(rng.choices(WORDS, k=rng.randint(5, 12)))
            label = rng.choice(("pos", "neg")) if i % 10 == 0 else ""
            writer.writerow([f"#{i} {words}", label])
    return path.stat().st_size


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def tree_peak_mib(pid: int, field: str = "VmHWM") -> float:
    """The largest ``field`` (VmHWM: peak resident set; VmRSS: now) among a process and its
    descendants, in MiB."""
    peak, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
        todo.extend(_children(current))
    return peak / 1024


def run(s: Stack, csv_path: Path, rows: int) -> dict[str, Any]:
    """Upload, import and page through; the figures."""
    server = s.serve()
    worker = s.worker()
    c = httpx.Client(base_url=s.url, timeout=600)
    deadline = time.monotonic() + 180
    while c.get("/api/health").json().get("worker_count", 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no worker came up:\n{worker.log()}")
        time.sleep(0.5)
    # What each tree holds before the import: the worker has its engine (torch) loaded.
    before = {
        "server_idle_rss_mib": round(tree_peak_mib(server.popen.pid, "VmRSS"), 1),
        "worker_idle_rss_mib": round(tree_peak_mib(worker.popen.pid, "VmRSS"), 1),
    }
    during = {"server": 0.0, "worker": 0.0}

    def sample() -> None:
        during["server"] = max(during["server"], tree_peak_mib(server.popen.pid, "VmRSS"))
        during["worker"] = max(during["worker"], tree_peak_mib(worker.popen.pid, "VmRSS"))

    r = c.post("/api/auth/login", json=ADMIN)
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    r = c.post(
        "/api/projects", json={"name": "bench texts", "classes": ["pos", "neg"], "kind": "text"}
    )
    r.raise_for_status()
    pid = r.json()["id"]
    started = time.perf_counter()
    with csv_path.open("rb") as f:
        r = c.post(f"/api/projects/{pid}/items", files={"file": ("texts.csv", f, "text/csv")})
    r.raise_for_status()
    sample()
    uploaded = time.perf_counter()
    job_id = r.json()["id"]
    while True:
        job = c.get(f"/api/jobs/{job_id}").json()
        sample()
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.5)
    done = time.perf_counter()
    figures: dict[str, Any] = {
        "rows": rows,
        "status": job["status"],
        "error": job["error"],
        "upload_s": round(uploaded - started, 1),
        "import_s": round(done - uploaded, 1),
        "end_to_end_s": round(done - started, 1),
        "rows_per_s": round(rows / (done - started)),
        **before,
        # Sampled every half second while the import ran (largest process of each tree), and
        # each tree's lifetime peak (VmHWM) at the end.
        "server_rss_during_import_mib": round(during["server"], 1),
        "worker_rss_during_import_mib": round(during["worker"], 1),
        "server_peak_rss_mib": round(tree_peak_mib(server.popen.pid), 1),
        "worker_peak_rss_mib": round(tree_peak_mib(worker.popen.pid), 1),
        "result": {k: v for k, v in (job["result"] or {}).items() if k != "rejected"},
    }
    pages: dict[str, float] = {}
    first = c.get(f"/api/projects/{pid}/items", params={"limit": 500}).json()["items"]
    for label, params in (
        ("first_page_500_ms", {"limit": 500}),
        ("unlabeled_page_500_ms", {"limit": 500, "status": "unlabeled"}),
        ("labeled_page_500_ms", {"limit": 500, "status": "labeled"}),
    ):
        t = time.perf_counter()
        c.get(f"/api/projects/{pid}/items", params=params).raise_for_status()
        pages[label] = round((time.perf_counter() - t) * 1000, 1)
    # A page deep in the pool: the cursor after the item ~90% of the way in.
    deep = first[0]["id"] + int(rows * 0.9) if first else 1
    cursor = base64.urlsafe_b64encode(str(deep).encode()).decode().rstrip("=")
    t = time.perf_counter()
    c.get(f"/api/projects/{pid}/items", params={"limit": 500, "after": cursor}).raise_for_status()
    pages["deep_page_500_ms"] = round((time.perf_counter() - t) * 1000, 1)
    figures["pages"] = pages
    return figures


def main() -> int:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--broker-url", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="svp-text-bench-") as tmp:
        tmp_path = Path(tmp)
        csv_path = tmp_path / "texts.csv"
        size = make_csv(csv_path, args.rows)
        database_url = args.database_url or f"sqlite:///{tmp_path / 'stack' / 'svp.sqlite3'}"
        with stack(tmp_path, database_url=database_url, broker_url=args.broker_url) as s:
            figures = {"csv_mib": round(size / (1 << 20), 1), **run(s, csv_path, args.rows)}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if figures["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
