"""Import by reference (DESIGN 4d) through real processes: items per second, and memory.

Starts a local S3 server (moto in server mode), puts ``--n`` tiny PNGs in a bucket (many
threads), then a real ``svplabel serve`` and ``--workers`` workers on PostgreSQL and Redis, and
imports the bucket's prefix by reference. It prints the objects registered per second (from the
POST to the job's success), and the RSS of the server and of each worker (with its pool),
sampled every half second during the import: the server's stays flat, as no object's bytes pass
through it.

The project's default proxy is a from-scratch one, so the import queues no embedding job and the
figures are the import's alone.

    flock /tmp/bench.lock python bench/import_from.py --n 5000
    flock /tmp/bench.lock python bench/import_from.py --out bench-out/import_from.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.round_turnaround import ADMIN, admin_client, wait_job  # noqa: E402
from bench.soak import group_memory_mb  # noqa: E402
from tests.procs import Proc, stack, wait_for  # noqa: E402
from tests.s3server import s3_server  # noqa: E402

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/h_ref_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/5"


def tiny_png(i: int) -> bytes:
    """A 4x4 PNG (~80 bytes) whose first pixel spells ``i``: distinct below 2**24."""
    image = Image.new("RGB", (4, 4), (90, 90, 90))
    image.putpixel((0, 0), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fresh_database(url: str) -> None:
    """Drop and create this bench's own PostgreSQL database (never another's)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return
    name = parsed.database
    if not (name or "").startswith("h_ref_"):
        raise SystemExit(f"refusing to recreate database {name!r}: this bench's are h_ref_*")
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def fill_bucket(client: Any, bucket: str, n: int, threads: int) -> float:
    """Put ``n`` tiny PNGs under ``img/``; the seconds it took."""
    started = time.perf_counter()

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"img/{i:07d}.png", Body=tiny_png(i))

    with ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(put, range(n)), start=1):
            if done % 20_000 == 0:
                print(f"  {done} objects stored", flush=True)
    return time.perf_counter() - started


def raw_get_rate(client: Any, bucket: str, n: int, threads: int) -> float:
    """GETs per second the S3 server answers a plain boto3 client (``threads`` at once): the
    ceiling an import by reference, one GET per object, can reach on it."""
    started = time.perf_counter()

    def get(i: int) -> None:
        client.get_object(Bucket=bucket, Key=f"img/{i:07d}.png")["Body"].read()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, range(n)))
    return n / (time.perf_counter() - started)


def group_size(proc: Proc) -> int:
    """Processes in a process's group (a worker and its pool children)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == proc.popen.pid:
                count += 1
        except (OSError, IndexError, ValueError):
            continue
    return count


class Sampler:
    """RSS and PSS of each process (with its pool) every ``interval`` seconds, in a thread.

    RSS counts a page shared by a worker and its forked pool child in both, and a shared
    library's pages as the child first touches them; PSS splits shared pages between their
    processes, so it is what the group really holds.
    """

    def __init__(self, procs: list[Proc], interval: float = 0.5) -> None:
        self.procs = procs
        self.interval = interval
        self.samples: dict[str, list[tuple[float, float]]] = {p.name: [] for p in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.procs:
                self.samples[p.name].append(group_memory_mb(p))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, dict[str, float]]:
        """min / median / max RSS and PSS (MiB) per process, and how many samples."""
        out: dict[str, dict[str, float]] = {}
        for name, values in self.samples.items():
            if not values:
                continue
            rss, pss = [v[0] for v in values], [v[1] for v in values]
            out[name] = {
                "samples": len(values),
                "rss_min": min(rss),
                "rss_median": statistics.median(rss),
                "rss_max": max(rss),
                "pss_min": min(pss),
                "pss_median": statistics.median(pss),
                "pss_max": max(pss),
            }
        return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="objects to import")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk", type=int, default=250, help="SVP_IMPORT_CHUNK_SIZE")
    p.add_argument("--put-threads", type=int, default=32, help="threads filling the bucket")
    p.add_argument("--database-url", default=DEFAULT_DATABASE)
    p.add_argument("--broker-url", default=DEFAULT_BROKER)
    p.add_argument("--s3-port", type=int, default=18410)
    p.add_argument("--port", type=int, default=18411, help="the server's port")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="svp-import-from-"))
    fresh_database(args.database_url)
    sep = "&" if "?" in args.broker_url else "?"
    broker = f"{args.broker_url}{sep}global_keyprefix=bench-ref-{uuid.uuid4().hex[:8]}-"
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count()}
    with s3_server(base, port=args.s3_port) as store:
        bucket = store.bucket("bench")
        print(f"filling s3://{bucket}/img/ with {args.n} tiny PNGs...", flush=True)
        fill = fill_bucket(store.client(), bucket, args.n, args.put_threads)
        print(f"  stored in {fill:.1f} s ({args.n / fill:.0f} objects/s)", flush=True)
        ceiling = raw_get_rate(store.client(), bucket, min(args.n, 3000), args.put_threads)
        print(f"  the S3 server answers {ceiling:.0f} GETs/s to a plain boto3 client", flush=True)
        env = {
            **store.env(),
            "SVP_ADMIN_USERNAME": ADMIN["username"],
            "SVP_ADMIN_PASSWORD": ADMIN["password"],
            "SVP_IMPORT_CHUNK_SIZE": str(args.chunk),
            "SVP_LOG_LEVEL": "WARNING",
        }
        with stack(base, database_url=args.database_url, broker_url=broker, extra_env=env) as s:
            s.port = args.port
            server = s.serve()
            workers = [s.worker(f"worker-{i + 1}") for i in range(args.workers)]
            c = admin_client(s)
            r = c.post(
                "/api/projects",
                json={
                    "name": "by-reference",
                    "classes": ["a", "b"],
                    "settings": {"default_proxy": "tiny_cnn"},
                },
            )
            r.raise_for_status()
            pid = r.json()["id"]
            # Idle means the workers' pool children are up (a worker forks them once it has
            # imported torch, seconds after it starts), or the idle figure leaves them out.
            wait_for(lambda: all(group_size(w) >= 2 for w in workers), 120, "no pool child")
            time.sleep(3)
            idle = {proc.name: group_memory_mb(proc) for proc in (server, *workers)}
            with Sampler([server, *workers]) as sampler:
                started = time.perf_counter()
                r = c.post(
                    f"/api/projects/{pid}/items/import-from",
                    json={"source": f"s3://{bucket}/img/"},
                )
                r.raise_for_status()
                job = wait_job(c, r.json()["id"], timeout=3600)
                wall = time.perf_counter() - started
    result = job.get("result") or {}
    memory = sampler.summary()
    report.update(
        {
            "fill_seconds": round(fill, 1),
            "s3_raw_gets_per_second": round(ceiling, 1),
            "status": job["status"],
            "wall_seconds": round(wall, 2),
            "items_per_second": round(args.n / wall, 1),
            "job": {k: result.get(k) for k in ("added", "duplicates", "rejected_count", "total")},
            "job_seconds": result.get("seconds"),
            "chunks_by_worker": result.get("workers"),
            "rss_idle_mib": idle,
            "rss_during_import_mib": memory,
        }
    )
    print(f"\nimport by reference of {args.n} objects, {args.workers} workers: {job['status']}")
    print(
        f"  {wall:.1f} s from the POST to success: {args.n / wall:.0f} items/s "
        f"(the store's own ceiling: {ceiling:.0f} GETs/s)"
    )
    print(f"  result: {report['job']}, chunks by worker: {result.get('workers')}")
    print(f"  MiB, {memory['server']['samples']} samples: idle before, then min / median / max")
    print(f"  {'process':10} {'RSS idle':>9} {'min':>7} {'median':>7} {'max':>7}   ", end="")
    print(f"{'PSS idle':>9} {'min':>7} {'median':>7} {'max':>7}")
    for name, m in memory.items():
        print(
            f"  {name:10} {idle[name][0]:>9.1f} {m['rss_min']:>7.1f} {m['rss_median']:>7.1f} "
            f"{m['rss_max']:>7.1f}   {idle[name][1]:>9.1f} {m['pss_min']:>7.1f} "
            f"{m['pss_median']:>7.1f} {m['pss_max']:>7.1f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
