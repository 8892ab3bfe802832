"""Embedding throughput and a linear round's turnaround, through real server and worker processes.

Starts its own ``svplabel serve`` and workers (embedded SQLite and broker by default, or
``--database-url`` / ``--broker-url``), writes CIFAR-10 training images straight into the data
dir as an import would, and measures:

1. embedding throughput of one ``embed`` job on a sample with one worker (all its threads), then
   on another sample shared by two workers with one thread each (the job fans its chunks out);
2. the time to embed the whole pool (``--pool``, 50,000 by default) with the two workers;
3. with the pool's embeddings warm and ``--labels`` of them labelled (a labelled test split
   too), the turnaround of ``linear`` rounds with ``auto`` and ``margin``: POST to batch ready,
   split by stage from the round's metrics (queue wait, loading, embedding, training, scoring,
   selecting, saving).

``--import-embed N`` measures the issue-18 target instead: N CIFAR training images (all 50,000:
the data set's own ``train.zip``, streamed as it is) uploaded as one zip through the API to a
server with ``--workers`` worker processes (``--concurrency 1`` each, ``SVP_TORCH_THREADS=1``),
timed from the upload's first byte to the ``embed`` job that the import queues having finished,
split into upload, import, queue wait and embedding.

    python bench/embed_turnaround.py --quick
    python bench/embed_turnaround.py --out bench-out/embed_turnaround.json
    python bench/embed_turnaround.py --import-embed 50000 [--database-url ... --broker-url ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.round_turnaround import (  # noqa: E402
    ADMIN,
    CIFAR,
    CLASSES,
    _ts,
    admin_client,
    cifar_entries,
    insert_items,
    label_spread,
    wait_job,
)
from bench.svp_common import environment  # noqa: E402
from tests.procs import stack, wait_for  # noqa: E402


def interleaved_images(n: int) -> Iterator[tuple[str, str, bytes]]:
    """``n`` distinct CIFAR training images, the classes taken in turn (the archive is grouped by
    class, so any prefix of it would hold one or two classes); past 50,000 the same images again
    with bytes after the JPEG end, which change the content hash and nothing a decoder reads."""
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    for name, cls, data in cifar_entries("train.zip"):
        by_class.setdefault(cls, []).append((name, data))
    order = [
        (name, cls, data)
        for group in zip(*by_class.values(), strict=False)
        for cls, (name, data) in zip(by_class, group, strict=True)
    ]
    made, rep = 0, 0
    while True:
        for name, cls, data in order:
            if made >= n:
                return
            yield (f"r{rep}/{name}" if rep else name), cls, data + b"\0" * rep
            made += 1
        rep += 1


def new_project(c: httpx.Client, name: str, backbone: str = "") -> int:
    """A project with the product's defaults (a linear head on EfficientNet-Lite0, auto), or
    with ``backbone``."""
    body: dict[str, Any] = {"name": f"{name}-{time.time_ns()}", "classes": CLASSES}
    if backbone:
        body["settings"] = {"backbone": backbone}
    r = c.post("/api/projects", json=body)
    r.raise_for_status()
    return int(r.json()["id"])


def timed_embedding(c: httpx.Client, pid: int) -> dict[str, Any]:
    """Run an embed job for the project and report its result and wall time."""
    started = time.perf_counter()
    r = c.post(f"/api/projects/{pid}/embeddings", json={})
    r.raise_for_status()
    job = wait_job(c, r.json()["id"], timeout=4 * 3600)
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"embed job {job['id']} {job['status']}: {job['error']}")
    result = dict(job["result"])
    result["wall_seconds"] = wall
    result["job_seconds"] = _ts(job["finished_at"]) - _ts(job["started_at"])
    result["images_per_second_wall"] = result["images"] / wall if result["images"] else None
    # From the job's start: without the broker's hand-over and a cold worker's queue wait.
    result["images_per_second_job"] = (
        result["images"] / result["job_seconds"] if result["images"] else None
    )
    return result


def timed_linear_round(c: httpx.Client, pid: int, strategy: str, batch: int) -> dict[str, Any]:
    """POST a linear round and poll until its batch is ready; turnaround split by stage."""
    started = time.perf_counter()
    r = c.post(
        f"/api/projects/{pid}/rounds",
        json={
            "strategy": strategy,
            "batch_size": batch,
            "proxy": {"arch": "linear"},
            "seed": 1,
            # Each timed round closes the previous batch: only the selection is measured.
            "supersede": True,
        },
    )
    r.raise_for_status()
    rid = r.json()["id"]
    box: dict[str, Any] = {}

    def ready() -> bool:
        box["round"] = c.get(f"/api/rounds/{rid}").json()
        return box["round"]["status"] not in ("queued", "running")

    wait_for(ready, 3600, f"round {rid} did not finish", interval=0.05)
    turnaround = time.perf_counter() - started
    rnd = box["round"]
    if rnd["status"] != "labeling":
        raise RuntimeError(f"round {rid} ended {rnd['status']}: {rnd['error']}")
    job = c.get(f"/api/jobs/{rnd['job_id']}").json()
    m = rnd["metrics"]
    parts = {
        "queue_wait": _ts(job["started_at"]) - _ts(job["created_at"]),
        "loading": m["seconds_loading"],
        "embedding": m["seconds_embedding"],
        "training": m["seconds_training"],
        "scoring": m["seconds_scoring"],
        "selecting": m["seconds_selecting"],
        "saving": m["seconds_saving"],
    }
    return {
        "strategy": strategy,
        "batch": batch,
        "turnaround": turnaround,
        **parts,
        "other": turnaround - sum(parts.values()),
        "labeled": m["labeled"],
        "pool": m["pool"],
        "proxy_test_accuracy": m["proxy_test_accuracy"],
        "selection": m.get("selection"),
        "temperature": (m.get("calibration") or {}).get("temperature"),
    }


def upload_body(n: int) -> tuple[Any, int]:
    """The zip to upload for ``n`` images: CIFAR's own train.zip (opened, streamed) for all
    50,000, else a stored zip of the first ``n`` interleaved images; and its size."""
    if n == 50_000:
        path = CIFAR / "train.zip"
        return path.open("rb"), path.stat().st_size
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, _cls, data in interleaved_images(n):
            zf.writestr(name, data)
    return io.BytesIO(buf.getvalue()), len(buf.getvalue())


def job_times(job: dict[str, Any]) -> dict[str, float]:
    """A finished job's created/started/finished as epoch seconds."""
    return {k: _ts(job[f"{k}_at"]) for k in ("created", "started", "finished")}


def import_and_embed(c: httpx.Client, pid: int, n: int) -> dict[str, Any]:
    """Upload ``n`` images as one zip, wait for the import and the embed job it queues."""
    body, size = upload_body(n)
    started_wall = time.time()
    started = time.perf_counter()
    with body:
        r = c.post(
            f"/api/projects/{pid}/items",
            files={"file": ("train.zip", body, "application/zip")},
            data={"split": "pool"},
            timeout=600,
        )
    r.raise_for_status()
    uploaded = time.perf_counter() - started
    imp = wait_job(c, r.json()["id"], 3600)
    if imp["status"] != "succeeded":
        raise RuntimeError(f"import failed: {imp['error']}")
    imported = time.perf_counter() - started
    listed = c.get(f"/api/projects/{pid}/embeddings").json()
    if not listed:
        raise RuntimeError("the import queued no embed job (is the project's proxy linear?)")
    emb = wait_job(c, listed[0]["id"], 3600)
    total = time.perf_counter() - started
    if emb["status"] != "succeeded":
        raise RuntimeError(f"embed job {emb['id']} {emb['status']}: {emb['error']}")
    ti, te = job_times(imp), job_times(emb)
    return {
        "images": n,
        "zip_bytes": size,
        "added": imp["result"]["added"],
        "total_seconds": total,
        "upload_seconds": uploaded,
        "import_queue_wait": ti["started"] - ti["created"],
        "import_seconds": ti["finished"] - ti["started"],
        "import_done_seconds": imported,
        "embed_queue_wait": te["started"] - ti["finished"],
        "embed_seconds": te["finished"] - te["started"],
        "embed_done_after_import": te["finished"] - ti["finished"],
        "start_to_import_job_created": ti["created"] - started_wall,
        "embed": emb["result"],
    }


def run_import_embed(args: argparse.Namespace, base: Path, database_url: str) -> dict[str, Any]:
    """The issue-18 target: upload to embedded with ``args.workers`` one-thread workers."""
    env = {
        "SVP_ADMIN_USERNAME": ADMIN["username"],
        "SVP_ADMIN_PASSWORD": ADMIN["password"],
        "SVP_EMBED_CHUNK_SIZE": str(args.chunk),
        "SVP_TORCH_THREADS": "1",
    }
    if args.runtime:
        env["SVP_EMBED_RUNTIME"] = args.runtime
    with stack(
        base, database_url=database_url, broker_url=args.broker_url or None, extra_env=env
    ) as s:
        if args.port:
            s.port = args.port
        s.serve()
        for i in range(args.workers):
            s.worker(f"worker-{i + 1}", "--concurrency", "1")
        c = admin_client(s)
        if args.warm:
            # A first import of a few images: every worker has loaded (and, for ONNX, found or
            # built) its backbone before the clock starts, as in a server that has been up.
            pid = new_project(c, "warm-up", args.backbone)
            import_and_embed(c, pid, 4 * args.chunk)
        pid = new_project(c, "import-embed", args.backbone)
        out = import_and_embed(c, pid, args.import_embed)
    e = out["embed"]
    print(
        f"{out['added']} images, {args.backbone or 'default backbone'}, {args.workers} workers"
        " x 1 thread: upload to embedded "
        f"{out['total_seconds']:.1f} s = upload {out['upload_seconds']:.1f} + import job "
        f"{out['import_seconds']:.1f} (queued {out['import_queue_wait']:.1f}) + embed wait "
        f"{out['embed_queue_wait']:.1f} + embed job {out['embed_seconds']:.1f} "
        f"({e['images_per_second']} images/s in the job; chunks by worker: {e['workers']})",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pool", type=int, default=50_000, help="pool images for the round")
    p.add_argument("--sample", type=int, default=3000, help="images per throughput sample")
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000, help="labelled test images")
    p.add_argument("--batch", type=int, default=100, help="round batch size")
    p.add_argument("--chunk", type=int, default=512, help="SVP_EMBED_CHUNK_SIZE")
    p.add_argument("--database-url", default="")
    p.add_argument("--broker-url", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--quick", action="store_true", help="5,000 pool, 500-image samples")
    p.add_argument("--import-embed", type=int, default=0, help="N: the upload-to-embedded mode")
    p.add_argument("--workers", type=int, default=2, help="worker processes (--import-embed)")
    p.add_argument("--runtime", default="", help="SVP_EMBED_RUNTIME for the workers")
    p.add_argument(
        "--backbone", default="", help="the project's backbone (--import-embed; default: its)"
    )
    p.add_argument("--port", type=int, default=0, help="the server's port (0: any free one)")
    p.add_argument(
        "--warm", action="store_true", help="a small import first, so the workers start warm"
    )
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.pool, args.sample, args.labels, args.test, args.chunk = 5000, 500, 500, 500, 64
    if not (CIFAR / "train.zip").exists():
        print(f"needs CIFAR-10 at {CIFAR}", file=sys.stderr)
        return 2
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="svp-embed-"))
    database_url = args.database_url or f"sqlite:///{base / 'stack' / 'svp.sqlite3'}"
    env = {
        "SVP_ADMIN_USERNAME": ADMIN["username"],
        "SVP_ADMIN_PASSWORD": ADMIN["password"],
        "SVP_EMBED_CHUNK_SIZE": str(args.chunk),
    }
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count()}
    if args.import_embed:
        report["environment"] = environment()
        report["import_embed"] = run_import_embed(args, base, database_url)
        return write_report(args, report)
    with stack(
        base, database_url=database_url, broker_url=args.broker_url or None, extra_env=env
    ) as s:
        # This process writes items straight into the same database and data dir.
        os.environ.update({k: v for k, v in s.env.items() if k.startswith("SVP_")})
        import app.models  # noqa: F401  (every table, so foreign keys resolve)
        from app.db import reset_caches

        reset_caches()
        s.serve()
        one = s.worker("worker-1")
        c = admin_client(s)
        admin_id = c.get("/api/me").json()["id"]
        # Distinct images for each measurement: the store is content-keyed and would skip them.
        images = interleaved_images(2 * args.sample + args.pool)

        def take(n: int) -> Any:
            return (next(images) for _ in range(n))

        pid = new_project(c, "sample-one-worker")
        insert_items(pid, take(args.sample), split="pool", labelled=False, user_id=admin_id)
        single = timed_embedding(c, pid)
        print(
            f"one worker, all threads: {single['images_per_second_wall']:.1f} images/s "
            f"({single['images_per_second_job']:.1f} from the job's start)",
            flush=True,
        )

        # Two workers of one thread each: the same two cores, the work split by chunks.
        one.stop()
        s.env["SVP_TORCH_THREADS"] = "1"
        s.worker("worker-a")
        s.worker("worker-b")
        pid = new_project(c, "sample-two-workers")
        insert_items(pid, take(args.sample), split="pool", labelled=False, user_id=admin_id)
        shared = timed_embedding(c, pid)
        print(
            f"two workers, one thread each: {shared['images_per_second_wall']:.1f} images/s "
            f"({shared['images_per_second_job']:.1f} from the job's start; chunks by worker: "
            f"{shared['workers']})",
            flush=True,
        )

        pid = new_project(c, "pool")
        insert_items(pid, take(args.pool), split="pool", labelled=False, user_id=admin_id)
        test = list(cifar_entries("test.zip"))[:: max(1, 10_000 // max(args.test, 1))][: args.test]
        insert_items(pid, iter(test), split="test", labelled=True, user_id=admin_id)
        label_spread(pid, args.labels, user_id=admin_id)
        whole = timed_embedding(c, pid)
        print(
            f"embedding {whole['images']} images with two workers: "
            f"{whole['wall_seconds']:.1f} s ({whole['images_per_second_wall']:.1f} images/s, "
            f"chunks by worker: {whole['workers']})",
            flush=True,
        )
        rounds = [
            timed_linear_round(c, pid, strategy, args.batch)
            for strategy in ("auto", "margin", "auto")
        ]
    cols = ["queue_wait", "loading", "embedding", "training", "scoring", "selecting", "saving"]
    print()
    head = f"{'strategy':10} {'pool':>6} {'labels':>6} {'total s':>8} " + " ".join(
        f"{c:>10}" for c in cols
    )
    print(head)
    print("-" * len(head))
    for r in rounds:
        print(
            f"{r['strategy']:10} {r['pool']:>6} {r['labeled']:>6} {r['turnaround']:>8.2f} "
            + " ".join(f"{r[c]:>10.3f}" for c in cols)
        )
    accuracy = rounds[0]["proxy_test_accuracy"]
    print(f"\nlinear head on {rounds[0]['labeled']} labels: test accuracy {accuracy:.3f}")
    print(f"auto chose: {rounds[0]['selection']}")
    report.update(
        {
            "embedding": {"one_worker": single, "two_workers": shared, "pool": whole},
            "rounds": rounds,
        }
    )
    return write_report(args, report)


def write_report(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Write the JSON report where ``--out`` says; 0."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
