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


def tree_mib(pid: int, field: str = "VmRSS") -> dict[int, float]:
    """``field`` (VmRSS: resident now; VmHWM: its peak) of a process and each descendant, MiB."""
    found, todo = {}, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    found[current] = int(line.split()[1]) / 1024
        except OSError:
            continue
        todo.extend(_children(current))
    return found


class Watch:
    """The resident set of each process of a tree, when idle and at its largest since."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle = tree_mib(pid)
        self.peak = dict(self.idle)

    def sample(self) -> None:
        """Note each process's resident set now."""
        for p, mib in tree_mib(self.pid).items():
            self.peak[p] = max(self.peak.get(p, 0.0), mib)

    def figures(self) -> dict[str, float]:
        """The largest process idle and at peak, and the most any one process grew."""
        grown = max((self.peak[p] - self.idle.get(p, 0.0) for p in self.peak), default=0.0)
        return {
            "largest_idle_mib": round(max(self.idle.values(), default=0.0), 1),
            "largest_peak_mib": round(max(self.peak.values(), default=0.0), 1),
            "most_grown_mib": round(grown, 1),
            "processes": len(self.peak),
        }


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
    # Each process's resident set before the import (a worker holds its engine, torch, loaded)
    # and at its largest while the upload streams and the job runs, sampled every half second.
    watches = {"server": Watch(server.popen.pid), "worker": Watch(worker.popen.pid)}

    def sample() -> None:
        for watch in watches.values():
            watch.sample()

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
        "rss": {name: watch.figures() for name, watch in watches.items()},
        # Each tree's lifetime peak (VmHWM of its largest process), read at the end.
        "server_vmhwm_mib": round(max(tree_mib(server.popen.pid, "VmHWM").values()), 1),
        "worker_vmhwm_mib": round(max(tree_mib(worker.popen.pid, "VmHWM").values()), 1),
        "result": {k: v for k, v in (job["result"] or {}).items() if k != "rejected"},
    }
    first = c.get(f"/api/projects/{pid}/items", params={"limit": 1}).json()["items"]
    # A page deep in the pool: the cursor after the item ~90% of the way in.
    deep = first[0]["id"] + int(rows * 0.9) if first else 1
    cursor = base64.urlsafe_b64encode(str(deep).encode()).decode().rstrip("=")
    pages: dict[str, float] = {}
    for label, params in (
        ("first_page_500_ms", {"limit": 500}),
        ("unlabeled_page_500_ms", {"limit": 500, "status": "unlabeled"}),
        ("labeled_page_500_ms", {"limit": 500, "status": "labeled"}),
        ("deep_page_500_ms", {"limit": 500, "after": cursor}),
    ):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            c.get(f"/api/projects/{pid}/items", params=params).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
        pages[label] = round(sorted(times)[2], 1)  # the median of five
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
