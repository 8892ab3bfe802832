"""Soak: N annotators and an engineer starting rounds, for minutes, on PostgreSQL + Redis.

Starts a real ``svplabel serve`` and two ``svplabel worker`` processes on 127.0.0.1 against a
database of its own (dropped and recreated: PostgreSQL ``svp_soak`` by default) and Redis under a
key prefix of its own. Seeds a pool of real PNG files, a round in labelling and its batch with
bench/api_load.py's set-based seeding, then runs for ``--minutes``:

- N annotators (asyncio + httpx), each looping ``queue/next?n=5``, the image bytes of each item,
  a pause (``--think``), and one label per item with a unique key;
- an engineer who starts the next round (``supersede``, a from-scratch ``tiny_cnn`` proxy) once the
  open batch is labelled or ``--round-every`` seconds after the last one became ready, and polls
  it until its batch is ready.

Prints, each minute: labels/s, p50/p99 per endpoint (queue/next, POST labels, image bytes, rounds:
POST and GET, and the rounds' turnaround), the 4xx and 5xx counts, and the memory (RSS, and PSS,
which counts a page shared with a forked child once) of the server and of each worker. At the end:
memory at start and end, and its growth since the first minute (warm-up: the first round loads
torch's kernels and the image cache), and the checks: no 5xx; every label answered 201 is in the
database exactly once and no other label is there; no item labelled twice; no round or job left
queued or running once the last round had time to finish. Labels refused with 403 are expected
when a round supersedes the batch an annotator still held items of.

    python bench/soak.py                         # 10 minutes, 50 annotators
    python bench/soak.py --minutes 1 --annotators 10
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import (  # noqa: E402
    CLASSES,
    PASSWORD,
    Record,
    check_database,
    fresh_database,
    percentile,
    seed,
    sign_in_httpx,
)
from tests.procs import Proc, Stack, stack  # noqa: E402

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/svp_soak"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
ENDPOINTS = ("queue/next", "labels", "image", "rounds POST", "rounds GET", "round turnaround")
PROXY = {"arch": "tiny_cnn", "epochs": 1, "batch_size": 128, "image_size": 32}
PAGE = 5


def true_class(item_id: int) -> int:
    """The class an annotator gives an item (the one its image is drawn in): a fixed function."""
    return (item_id * 7) % len(CLASSES)


def class_png(item_id: int) -> bytes:
    """A 32x32 PNG whose colour says its class, with a pixel that makes every image distinct."""
    k = true_class(item_id)
    image = Image.new("RGB", (32, 32), ((k * 25) % 256, (k * 67) % 256, (255 - k * 25) % 256))
    image.putpixel((item_id % 32, (item_id // 32) % 32), (item_id % 251, item_id % 241, 7))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_images(database_url: str, images_dir: Path, project_id: int) -> int:
    """A real PNG file for every item seeded, where the server and the workers read images."""
    from app.items.storage import ImageFiles

    engine = create_engine(database_url)
    with engine.connect() as db:
        rows = db.execute(
            text("SELECT id, content_hash FROM items WHERE project_id = :p"), {"p": project_id}
        ).all()
    engine.dispose()
    store = ImageFiles(images_dir)
    for item_id, content_hash in rows:
        store.put(content_hash, class_png(item_id))
    return len(rows)


@dataclass
class Soak:
    """What the clients saw, each sample stamped with the minute it ended in."""

    started: float
    record: Record = field(default_factory=Record)  # api_load's: statuses and the 201s
    samples: list[tuple[int, str, float]] = field(default_factory=list)  # minute, endpoint, ms
    statuses: list[tuple[int, int]] = field(default_factory=list)  # minute, status
    labels: Counter[int] = field(default_factory=Counter)  # labels answered 201 per minute
    rounds: list[dict[str, Any]] = field(default_factory=list)
    idle_polls: int = 0

    def minute(self) -> int:
        """The minute of the run it is now (0-based)."""
        return int((time.monotonic() - self.started) // 60)

    def note(self, endpoint: str, t0: float, r: httpx.Response | None) -> None:
        """One answer (or ``None``: a transport error): its latency and its status."""
        m = self.minute()
        if r is None:
            self.record.statuses[f"{endpoint} transport error"] += 1
            return
        self.samples.append((m, endpoint, (time.perf_counter() - t0) * 1000))
        self.statuses.append((m, r.status_code))
        self.record.statuses[f"{endpoint} {r.status_code}"] += 1


async def call(
    soak: Soak, c: httpx.AsyncClient, endpoint: str, method: str, url: str, **kw: Any
) -> httpx.Response | None:
    """Send one request and note it; ``None`` when it got no answer."""
    t0 = time.perf_counter()
    try:
        r = await c.request(method, url, **kw)
    except httpx.HTTPError:
        soak.note(endpoint, t0, None)
        return None
    soak.note(endpoint, t0, r)
    return r


async def annotator(
    k: int, c: httpx.AsyncClient, pid: int, deadline: float, think: float, soak: Soak
) -> None:
    """Lease, look at the image, think, label; until the deadline."""
    seq = 0
    while time.monotonic() < deadline:
        r = await call(soak, c, "queue/next", "POST", f"/api/projects/{pid}/queue/next?n={PAGE}")
        if r is None or r.status_code != 200 or not r.json():
            # No batch open (a round is running) or an error: ask again in a while.
            soak.idle_polls += 1
            await asyncio.sleep(1.0)
            continue
        for entry in r.json():
            if time.monotonic() >= deadline:
                return
            await call(soak, c, "image", "GET", entry["image_url"])
            await asyncio.sleep(think)
            seq += 1
            item = entry["item_id"]
            body = {"item_id": item, "label": CLASSES[true_class(item)], "key": f"{k}-{seq}"}
            lr = await call(soak, c, "labels", "POST", "/api/labels", json=body)
            if lr is not None and lr.status_code == 201:
                soak.record.created[lr.json()["id"]] = item
                soak.labels[soak.minute()] += 1


async def wait_round(soak: Soak, c: httpx.AsyncClient, rid: int, limit: float) -> dict[str, Any]:
    """Poll a round until it leaves queued/running (or ``limit`` seconds pass)."""
    end = time.monotonic() + limit
    rnd: dict[str, Any] = {}
    while time.monotonic() < end:
        r = await call(soak, c, "rounds GET", "GET", f"/api/rounds/{rid}")
        if r is not None and r.status_code == 200:
            rnd = r.json()
            if rnd["status"] not in ("queued", "running"):
                return rnd
        await asyncio.sleep(1.0)
    return rnd


async def engineer(
    c: httpx.AsyncClient,
    pid: int,
    first_round: int,
    deadline: float,
    args: argparse.Namespace,
    soak: Soak,
) -> None:
    """Start the next round when the batch is labelled or ``--round-every`` s have passed."""
    current, ready_at = first_round, time.monotonic()
    seed_no = 1
    while time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        r = await call(soak, c, "rounds GET", "GET", f"/api/rounds/{current}")
        done = r is not None and r.status_code == 200 and r.json()["status"] == "completed"
        if not done and time.monotonic() - ready_at < args.round_every:
            continue
        if time.monotonic() >= deadline:
            return
        seed_no += 1
        body = {
            "strategy": "least_confidence",
            "batch_size": args.batch,
            "proxy": PROXY,
            "seed": seed_no,
            "supersede": True,
        }
        t0 = time.perf_counter()
        r = await call(soak, c, "rounds POST", "POST", f"/api/projects/{pid}/rounds", json=body)
        if r is None or r.status_code != 202:
            soak.rounds.append({"error": r.text if r is not None else "no answer"})
            ready_at = time.monotonic()
            continue
        rid = r.json()["id"]
        # Past the deadline too: the last round gets up to five minutes to finish.
        rnd = await wait_round(soak, c, rid, limit=300)
        turnaround = (time.perf_counter() - t0) * 1000
        soak.samples.append((soak.minute(), "round turnaround", turnaround))
        soak.rounds.append(
            {"id": rid, "status": rnd.get("status"), "seconds": round(turnaround / 1000, 1)}
        )
        current, ready_at = rid, time.monotonic()


def group_memory_mb(proc: Proc) -> tuple[float, float]:
    """RSS and PSS of a process and everything in its process group (a worker's pool), MiB.

    RSS counts a page shared by a worker and its forked pool child twice; PSS splits it, so the
    PSS sum is what the group really holds.
    """
    rss_kb = pss_kb = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != proc.popen.pid:  # the process group: spawned as its leader
                continue
            rollup = (stat.parent / "smaps_rollup").read_text()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        for line in rollup.splitlines():
            if line.startswith("Rss:"):
                rss_kb += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss_kb += int(line.split()[1])
    return round(rss_kb / 1024, 1), round(pss_kb / 1024, 1)


def memory(server: Proc, workers: list[Proc]) -> dict[str, dict[str, float]]:
    """RSS and PSS of the server and of each worker, MiB."""
    out = {}
    for p in (server, *workers):
        rss, pss = group_memory_mb(p)
        out[p.name] = {"rss": rss, "pss": pss}
    return out


def minute_line(
    soak: Soak, m: int, seconds: float, mem: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The figures of minute ``m``, which lasted ``seconds``."""
    rate = soak.labels[m] / max(seconds, 1e-9)
    row: dict[str, Any] = {"minute": m + 1, "labels_per_s": round(rate, 1)}
    for endpoint in ENDPOINTS:
        ms = [v for mm, e, v in soak.samples if mm == m and e == endpoint]
        if ms:
            row[endpoint] = {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99)}
    statuses = [s for mm, s in soak.statuses if mm == m]
    row["4xx"] = sum(1 for s in statuses if 400 <= s < 500)
    row["5xx"] = sum(1 for s in statuses if s >= 500)
    row["memory_mb"] = mem
    return row


async def reporter(
    soak: Soak, deadline: float, server: Proc, workers: list[Proc], rows: list[dict[str, Any]]
) -> None:
    """Print each minute's figures as it ends (the last one may be shorter)."""
    m = 0
    while True:
        end = min(soak.started + 60 * (m + 1), deadline)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        row = minute_line(soak, m, end - (soak.started + 60 * m), memory(server, workers))
        rows.append(row)
        print(json.dumps(row), flush=True)
        m += 1
        if end >= deadline:
            return


async def run_load(
    args: argparse.Namespace, s: Stack, pid: int, round_id: int, server: Proc, workers: list[Proc]
) -> tuple[Soak, list[dict[str, Any]]]:
    """Annotators, the engineer and the reporter, until the deadline."""
    clients = await asyncio.gather(*(sign_in_httpx(s.url, k) for k in range(args.annotators)))
    eng = httpx.AsyncClient(base_url=s.url, timeout=120)
    r = await eng.post("/api/auth/login", json={"username": "bench-owner", "password": PASSWORD})
    r.raise_for_status()
    eng.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    soak = Soak(started=time.monotonic())
    deadline = soak.started + args.minutes * 60
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.gather(
            *(annotator(k, c, pid, deadline, args.think, soak) for k, c in enumerate(clients)),
            engineer(eng, pid, round_id, deadline, args, soak),
            reporter(soak, deadline, server, workers, rows),
        )
    finally:
        for c in [*clients, eng]:
            await c.aclose()
    return soak, rows


def stuck(database_url: str, pid: int) -> dict[str, int]:
    """Rounds and jobs still queued or running once everything had time to finish."""
    engine = create_engine(database_url)
    with engine.connect() as db:
        rounds = db.scalar(
            text(
                "SELECT count(*) FROM rounds WHERE project_id = :p "
                "AND status IN ('queued', 'running')"
            ),
            {"p": pid},
        )
        jobs = db.scalar(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"))
        by_status = dict(
            db.execute(text("SELECT status, count(*) FROM rounds GROUP BY status")).all()
        )
    engine.dispose()
    return {
        "rounds_stuck": int(rounds or 0),
        "jobs_stuck": int(jobs or 0),
        **{f"rounds_{k}": int(v) for k, v in sorted(by_status.items())},
    }


def wait_stuck(database_url: str, pid: int, limit: float) -> dict[str, int]:
    """``stuck`` once nothing is queued or running, or after ``limit`` seconds."""
    end = time.monotonic() + limit
    while True:
        found = stuck(database_url, pid)
        if (found["rounds_stuck"] == 0 and found["jobs_stuck"] == 0) or time.monotonic() > end:
            return found
        time.sleep(2)


def drop_keys(redis_url: str, prefix: str) -> None:
    """Remove the soak's keys (queues, bindings) from a Redis others may share."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def main() -> int:
    """Run the soak and print its figures; exit 1 when a check fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--database-url", default=DEFAULT_DATABASE, help="dropped and recreated")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="a key prefix of its own is added")
    p.add_argument("--pool", type=int, default=30_000, help="pool images")
    p.add_argument("--batch", type=int, default=1500, help="items per round's batch")
    p.add_argument("--think", type=float, default=1.0, help="seconds an annotator looks")
    p.add_argument("--round-every", type=float, default=120, help="seconds between rounds")
    p.add_argument("--server-workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    if not 0 < args.minutes <= 120 or not 1 <= args.annotators <= 500:
        p.error("--minutes must be in (0, 120] and --annotators in 1..500")
    if not 1 <= args.batch <= args.pool <= 1_000_000:
        p.error("need 1 <= --batch <= --pool <= 1,000,000")
    if make_url(args.database_url).get_backend_name() != "postgresql":
        p.error("the soak runs on PostgreSQL (--database-url postgresql+psycopg://...)")
    for url in (args.database_url, args.redis_url):
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
            p.error(f"the soak stays on this machine: {url} is not on 127.0.0.1")

    fresh_database(args.database_url)
    pid = seed(
        args.database_url,
        pool=args.pool,
        batch=args.batch,
        annotators=args.annotators,
        lease_seconds=120,
    )
    engine = create_engine(args.database_url)
    with engine.connect() as db:
        round_id = int(db.scalar(text("SELECT id FROM rounds WHERE project_id = :p"), {"p": pid}))
    engine.dispose()
    prefix = f"svpsoak-{uuid.uuid4().hex[:10]}-"
    sep = "&" if "?" in args.redis_url else "?"
    broker = f"{args.redis_url}{sep}global_keyprefix={prefix}"
    base = Path(tempfile.mkdtemp(prefix="svp-soak-"))
    # No access log: the soak measures the service, not its logging.
    env = {"SVP_LOG_LEVEL": "WARNING"}
    figures: dict[str, Any] = {}
    with stack(base, database_url=args.database_url, broker_url=broker, extra_env=env) as s:
        started = time.perf_counter()
        n = write_images(args.database_url, s.data_dir / "images", pid)
        print(f"wrote {n} images in {time.perf_counter() - started:.1f}s", flush=True)
        server = s.serve("--no-migrate", "--workers", str(args.server_workers))
        workers = [s.worker("worker1"), s.worker("worker2")]
        time.sleep(5)  # the workers connect to the broker and send their first heartbeat
        mem_start = memory(server, workers)
        print(f"memory at start (MiB): {mem_start}", flush=True)
        soak, rows = asyncio.run(run_load(args, s, pid, round_id, server, workers))
        mem_end = memory(server, workers)
        found = wait_stuck(args.database_url, pid, limit=120)
        tracebacks = {p.name: p.log().count("Traceback") for p in s.procs}
    drop_keys(args.redis_url, prefix)
    checks = check_database(args.database_url, pid, soak.record)
    all_5xx = sum(1 for _, st in soak.statuses if st >= 500)
    figures = {
        "minutes": args.minutes,
        "annotators": args.annotators,
        "pool": args.pool,
        "batch": args.batch,
        "labels_201": len(soak.record.created),
        "labels_per_s": round(len(soak.record.created) / (args.minutes * 60), 1),
        "per_minute": rows,
        "rounds": soak.rounds,
        "statuses": dict(sorted(soak.record.statuses.items())),
        "idle_queue_polls": soak.idle_polls,
        "memory_mb_start": mem_start,
        "memory_mb_end": mem_end,
        "5xx": all_5xx,
        "tracebacks_in_logs": tracebacks,
        **checks,
        **found,
    }
    ok = (
        all_5xx == 0
        and checks["created_missing_in_db"] == 0
        and checks["labels_in_db_not_answered_201"] == 0
        and checks["items_labelled_twice"] == 0
        and found["rounds_stuck"] == 0
        and found["jobs_stuck"] == 0
        and not any("error" in x or x.get("status") == "failed" for x in soak.rounds)
    )
    figures["ok"] = ok
    # Flat or not: growth after the first minute, when every process has done each kind of work.
    # (None in a run of one minute or less: there is no after.)
    after_warmup = rows[0]["memory_mb"] if len(rows) > 1 else None
    figures["pss_growth_after_first_minute_mb"] = after_warmup and {
        name: round(mem_end[name]["pss"] - after_warmup[name]["pss"], 1) for name in mem_end
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "per_minute"}, indent=2))
    for name in mem_start:
        a, b = mem_start[name], mem_end[name]
        print(f"{name}: RSS {a['rss']} -> {b['rss']} MiB, PSS {a['pss']} -> {b['pss']} MiB")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
