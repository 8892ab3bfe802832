"""Login storm: how a flood of bad sign-ins slows an engineer's ``queue/next``.

Starts a real ``svplabel serve`` on 127.0.0.1 on SQLite (the embedded default, where writers
share one queue), seeds a project with a batch (as ``bench/api_load.py`` does), then measures an
engineer looping ``queue/next?n=1``: first alone, then while N threads send bad sign-ins, each
with a new username (the spray a per-username limit never stopped). Bounded in threads and time.

Prints the engineer's p50/p99 in both phases and the storm's answers by status.

    python bench/login_storm.py --threads 6 --duration 10
    python bench/login_storm.py --threads 6 --duration 10 --address-limit 1000000  # argon2 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import (  # noqa: E402
    PASSWORD,
    _free_port,
    fresh_database,
    percentile,
    seed,
    wait_healthy,
)

SERVE = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]


def engineer_loop(base: str, pid: int, deadline: float) -> list[float]:
    """``queue/next?n=1`` as the project's engineer until the deadline; latencies in ms."""
    times: list[float] = []
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/api/auth/login", json={"username": "bench-owner", "password": PASSWORD})
        r.raise_for_status()
        c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = c.post(f"/api/projects/{pid}/queue/next", params={"n": 1})
            times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return times


def storm(base: str, k: int, deadline: float, statuses: Counter[int], lock: threading.Lock) -> None:
    """Bad sign-ins, a new username each time, until the deadline."""
    n = 0
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < deadline:
            n += 1
            body = {"username": f"storm-{k}-{n}", "password": "not-the-password"}
            try:
                code = c.post("/api/auth/login", json=body).status_code
            except httpx.HTTPError:
                code = 0
            with lock:
                statuses[code] += 1


def summary(times: list[float]) -> dict[str, Any]:
    """p50/p99 and the count."""
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "count": len(times)}


def main() -> int:
    """Run both phases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=6, help="threads of bad sign-ins")
    parser.add_argument("--duration", type=float, default=10, help="seconds per phase")
    parser.add_argument("--pair-limit", type=int, help="SVP_LOGIN_ATTEMPTS_PER_MINUTE")
    parser.add_argument("--address-limit", type=int, help="SVP_LOGIN_ADDRESS_ATTEMPTS_PER_MINUTE")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if not 1 <= args.threads <= 32 or not 0 < args.duration <= 60:
        parser.error("--threads must be 1..32 and --duration 0..60 seconds")

    with tempfile.TemporaryDirectory(prefix="svp-storm-") as data_dir:
        url = f"sqlite:///{data_dir}/svp.sqlite3"
        fresh_database(url)
        pid = seed(url, pool=5000, batch=5000, annotators=1, lease_seconds=600)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
        env.update(SVP_DATA_DIR=data_dir, SVP_DATABASE_URL=url, SVP_LOG_LEVEL="WARNING")
        if args.pair_limit:
            env["SVP_LOGIN_ATTEMPTS_PER_MINUTE"] = str(args.pair_limit)
        if args.address_limit:
            env["SVP_LOGIN_ADDRESS_ATTEMPTS_PER_MINUTE"] = str(args.address_limit)
        log_path = Path(data_dir) / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [*SERVE, "--port", str(port), "--no-migrate"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            wait_healthy(base, server, log_path)
            alone = engineer_loop(base, pid, time.monotonic() + args.duration)
            statuses: Counter[int] = Counter()
            lock = threading.Lock()
            deadline = time.monotonic() + args.duration
            threads = [
                threading.Thread(target=storm, args=(base, k, deadline, statuses, lock))
                for k in range(args.threads)
            ]
            for t in threads:
                t.start()
            time.sleep(min(1.0, args.duration / 4))  # let the storm build up first
            stormy = engineer_loop(base, pid, deadline)
            for t in threads:
                t.join()
        finally:
            server.terminate()
            server.wait(30)
    figures = {
        "threads": args.threads,
        "duration_s": args.duration,
        "queue_next_ms_alone": summary(alone),
        "queue_next_ms_during_storm": summary(stormy),
        "storm_statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
