"""Embeddings at scale through the object store: how long a fresh worker takes to take a million
vectors in from shards, and what loading them costs in time and memory.

A local S3 server (moto, in server mode over HTTP on 127.0.0.1) gets ``--rows`` synthetic
float16 vectors of ``--dim`` written as shards of ``--chunk`` rows (the product's format and
registration: ``worker.shards``, ``embedding_shards`` in a SQLite database), as embedding workers
would write them. Then, per chunk size, a fresh process with an empty data dir (a new worker):

- pulls every shard into its local ``EmbeddingStore`` (``worker.shards.pull``), timed;
- loads all vectors in the pool's order as float16 and as float32 (``EmbeddingStore.load``,
  which gathers in blocks), timed, with the process's peak RSS after each step.

And once per width, from that warm store, the load as it was before (one fancy-index gather of
float16, then a float32 copy) in a process of its own, for its peak RSS.

    flock /tmp/bench.lock python bench/embedding_shards.py [--rows 1000000] [--dim 384]
        [--chunk 512 2048 8192] [--float32] [--old-load] [--out bench-out/embedding_shards.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# This bench's own port (helpers' port range 18500-18599).
PORT = 18510
BACKBONE = "synthetic"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now, MiB: all of it (``VmRSS``), or its anonymous part
    (``RssAnon``: what it holds itself, not the page cache of the files it maps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def keys_of(start: int, stop: int) -> list[str]:
    """Content-hash-shaped keys (64 hex characters) of rows ``start..stop``."""
    return [f"{i:064x}" for i in range(start, stop)]


def vectors_of(shard: int, rows: int, dim: int) -> np.ndarray:
    """The synthetic vectors of one shard: a function of its number alone."""
    rng = np.random.default_rng(shard)
    return rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)


def environment(data_dir: Path, database: Path, bucket: str) -> dict[str, str]:
    """What a worker needs: its own data dir, the database and the bucket."""
    return {
        **CREDENTIALS,
        "SVP_ENVIRONMENT": "test",
        "SVP_DATA_DIR": str(data_dir),
        "SVP_DATABASE_URL": f"sqlite:///{database}",
        "SVP_STORAGE_URL": f"s3://{bucket}/svp",
        "SVP_S3_ENDPOINT_URL": f"http://127.0.0.1:{PORT}",
    }


def start_moto(log: Path) -> subprocess.Popen[bytes]:
    """A moto S3 server on PORT; objects over 64 KiB spill to temp files, not its memory."""
    env = {**os.environ, **CREDENTIALS, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 << 10)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(PORT)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    import httpx

    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{PORT}/moto-api/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}")


def write(project_id: int, rows: int, dim: int, chunk: int) -> dict[str, Any]:
    """Write the shards as embedding workers would (8 at once) and register them; timings."""
    from sqlalchemy import insert

    from app.db import unit_of_work
    from app.embeddings.models import EmbeddingShard
    from svp.embeddings import EmbeddingStore
    from worker.shards import write_shard

    # Only its name, size and width are used: write_shard encodes and puts.
    store = EmbeddingStore(Path(os.environ["SVP_DATA_DIR"]) / "names", BACKBONE, chunk, dim)
    starts = range(0, rows, chunk)

    def one(shard: int) -> dict[str, Any]:
        start = starts[shard]
        n = min(chunk, rows - start)
        key = write_shard(
            store, keys_of(start, start + n), vectors_of(shard, n, dim), job_id=1, chunk_id=shard
        )
        return {"project_id": project_id, "backbone": BACKBONE, "image_size": chunk,
                "key": key, "rows": n}  # fmt: skip

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        registered = list(pool.map(one, range(len(starts))))
    seconds = time.perf_counter() - began
    with unit_of_work() as db:
        db.execute(insert(EmbeddingShard), registered)
    return {"shards": len(registered), "write_s": round(seconds, 2)}


def timed_steps() -> dict[str, float]:
    """Seconds the pull spends checking shards and appending rows, summed as it runs."""
    from worker import shards

    spent = {"check": 0.0, "append": 0.0}

    def timing(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - began

        return wrapped

    shards._check = timing("check", shards._check)
    shards._append = timing("append", shards._append)
    return spent


def ingest(project_id: int, rows: int, dim: int, chunk: int, float32: bool) -> dict[str, Any]:
    """In a fresh worker process: pull every shard, then load every vector; figures."""
    import torch

    from app.settings import get_settings
    from svp.embeddings import EmbeddingStore
    from worker.shards import pull

    out: dict[str, Any] = {
        "rss_start_mb": round(rss_mb()),
        "anon_start_mb": round(rss_mb("RssAnon")),
    }
    keys = keys_of(0, rows)  # the pool's keys, as a round reads them from the database
    out["rss_keys_mb"] = round(rss_mb())
    store = EmbeddingStore(get_settings().cache_dir, BACKBONE, chunk, dim)
    spent = timed_steps()
    began = time.perf_counter()
    report = pull(store, project_id)
    out["pull_s"] = round(time.perf_counter() - began, 2)
    # Where the pull's time went: checking shards and appending rows (the pulling thread);
    # the rest is waiting for the store.
    out.update({f"pull_{k}_s": round(v, 2) for k, v in spent.items()})
    if report is None or report.rows != rows or report.refused:
        raise RuntimeError(f"the pull did not take in every row: {report}")
    out["shards"] = report.shards
    out["peak_after_pull_mb"] = round(peak_mb())
    out["rss_after_pull_mb"] = round(rss_mb())
    out["anon_after_pull_mb"] = round(rss_mb("RssAnon"))
    began = time.perf_counter()
    half = store.load(keys, dtype=torch.float16)
    out["load_f16_s"] = round(time.perf_counter() - began, 2)
    out["peak_after_f16_mb"] = round(peak_mb())
    out["anon_with_f16_mb"] = round(rss_mb("RssAnon"))
    last = (rows - 1) // chunk
    expected = vectors_of(last, rows - last * chunk, dim)
    assert np.array_equal(half[last * chunk :].numpy(), expected)
    del half
    if float32:
        began = time.perf_counter()
        full = store.load(keys)
        out["load_f32_s"] = round(time.perf_counter() - began, 2)
        out["peak_after_f32_mb"] = round(peak_mb())
        out["anon_with_f32_mb"] = round(rss_mb("RssAnon"))
        assert torch.equal(full[:chunk], torch.from_numpy(vectors_of(0, chunk, dim)).float())
        del full
    out["store_mb"] = round(store.disk_bytes() / 2**20)
    return out


def old_load(rows: int, dim: int, chunk: int) -> dict[str, Any]:
    """The load as it was: one float16 gather of every row, then a float32 copy; peak RSS."""
    from app.settings import get_settings
    from svp.embeddings import EmbeddingStore

    store = EmbeddingStore(get_settings().cache_dir, BACKBONE, chunk, dim)
    keys = keys_of(0, rows)
    rows_at = store._row_numbers(keys, "{key}")
    before = peak_mb()
    began = time.perf_counter()
    gathered = store._view()[rows_at]
    anon_mid = rss_mb("RssAnon")
    full = np.asarray(gathered, dtype=np.float32)
    seconds = time.perf_counter() - began
    anon = rss_mb("RssAnon")
    del full, gathered
    return {
        "old_load_f32_s": round(seconds, 2),
        "old_peak_mb": round(peak_mb()),
        "old_anon_peak_mb": round(max(anon, anon_mid)),
        "old_peak_before_mb": round(before),
    }


def child(args: argparse.Namespace) -> None:
    if args.child == "ingest":
        result = ingest(args.project, args.rows, args.dim, args.chunk[0], args.float32)
    else:
        result = old_load(args.rows, args.dim, args.chunk[0])
    print("RESULT " + json.dumps(result), flush=True)


def run_child(env: dict[str, str], args: argparse.Namespace, mode: str, *extra: str) -> Any:
    cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows),
           "--dim", str(args.dim), *extra]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{mode} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--float32", action="store_true", help="also load as float32")
    parser.add_argument(
        "--old-load", action="store_true", help="also measure the old load (float32)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["ingest", "old-load"], default=None)
    parser.add_argument("--project", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="svp-bench-shards-"))
    database = work / "svp.sqlite3"
    bucket = f"bench-{secrets.token_hex(4)}"
    moto = start_moto(work / "moto.log")
    try:
        results = measure(args, work, database, bucket)
    finally:
        moto.terminate()
        moto.wait(10)
        # Each worker's local copy is the size of the vectors: gigabytes.
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


def measure(
    args: argparse.Namespace, work: Path, database: Path, bucket: str
) -> list[dict[str, Any]]:
    from app.db import reset_caches, unit_of_work
    from app.migrate import upgrade
    from app.projects.models import Project
    from app.storage import item_store
    from tests.s3server import S3Server

    os.environ.update(environment(work / "writer", database, bucket))
    reset_caches()
    upgrade(f"sqlite:///{database}")
    client: Any = S3Server(f"http://127.0.0.1:{PORT}", None, work).client()  # type: ignore[arg-type]
    client.create_bucket(Bucket=bucket)
    results = []
    for chunk in args.chunk:
        with unit_of_work() as db:
            project = Project(name=f"bench {chunk}", classes=["a", "b"])
            db.add(project)
            db.flush()
            project_id = project.id
        row: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "chunk": chunk}
        row.update(write(project_id, args.rows, args.dim, chunk))
        print(f"wrote {row}", flush=True)
        env = environment(work / f"worker-{chunk}", database, bucket)
        flags = ["--chunk", str(chunk), "--project", str(project_id)]
        row.update(run_child(env, args, "ingest", *flags, *(["--float32"] * args.float32)))
        if args.old_load and chunk == args.chunk[0]:
            row.update(run_child(env, args, "old-load", "--chunk", str(chunk)))
        print(f"measured {row}", flush=True)
        results.append(row)
        store = item_store()
        for obj in list(store.list("embeddings/")):
            store.delete(obj.key)
    return results


if __name__ == "__main__":
    main()
