"""Round turnaround: POST a round, time until its batch is ready, split by stage.

Starts its own ``svplabel serve`` and ``svplabel worker`` (embedded SQLite and broker by default,
or ``--database-url`` / ``--broker-url``), loads pools of CIFAR-sized images from
../shared/data/cifar10/train.zip (repeated, with a distinguishing trailer, past 50,000), labels
``--labels`` of them with their CIFAR class, adds a labelled test split, and then per pool size
times three rounds through the API:

1. the CPU proxy on a cold image cache (the first round of a project decodes every image),
2. the CPU proxy again, cache warm,
3. the target model as the selector (no proxy), cache warm,

splitting each turnaround into queue wait (job created -> started, from the job row), loading,
training, scoring and selecting (from the round's metrics) and the rest (saving, polling).
Items are inserted and image files written straight into the data dir, as an import would leave
them (``--via-import`` sends the first pool through the real import job instead, and times it).

    python bench/round_turnaround.py --quick
    python bench/round_turnaround.py --sizes 10000 100000 --epochs 2 --out turnaround.json

``--text`` times a text project instead (DESIGN 4c): pools of 20 Newsgroups posts from
../shared/data/text (repeated, with a distinguishing trailer, past 11,293), inserted through the
text import's own batch insert, embedded once with ``--backbone`` through an ``embed`` job (timed:
the embedding throughput), then with warm embeddings a ``linear`` round with ``--strategy``
(auto by default), a ``linear`` margin round and a ``fasttext`` margin round:

    python bench/round_turnaround.py --text --sizes 50000 --labels 1000 --batch 100
"""

from __future__ import annotations

import argparse
import hashlib
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

from tests.procs import Stack, stack, wait_for  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
NEWSGROUPS = ROOT.parent / "shared" / "data" / "text" / "20newsgroups"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ADMIN = {"username": "admin", "password": "bench-admin-password"}
# Rows per INSERT batch when writing the pool straight into the database.
INSERT_CHUNK = 5000


def cifar_entries(zip_name: str) -> Iterator[tuple[str, str, bytes]]:
    """(name, class, bytes) of every image in a CIFAR zip, in archive order."""
    with zipfile.ZipFile(CIFAR / zip_name) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) < 3:
                continue
            yield info.filename, parts[-2], zf.read(info)


def pool_images(n: int) -> Iterator[tuple[str, str, bytes]]:
    """``n`` distinct images: CIFAR train, repeated past 50,000 with bytes after the JPEG end."""
    made, rep = 0, 0
    while made < n:
        for name, cls, data in cifar_entries("train.zip"):
            if made >= n:
                return
            # Bytes after the end-of-image marker change the hash; decoders ignore them.
            yield (f"r{rep}/{name}" if rep else name), cls, data + (b"\0" * rep)
            made += 1
        rep += 1


def insert_items(
    project_id: int,
    images: Iterator[tuple[str, str, bytes]],
    *,
    split: str,
    labelled: bool,
    user_id: int,
) -> int:
    """Write image files and insert items, with their CIFAR class as an imported label if asked."""
    from sqlalchemy import insert

    from app.db import unit_of_work, utcnow
    from app.items.models import Item
    from app.items.storage import ImageFiles
    from app.labeling.models import Label, LabelSource
    from app.settings import get_settings

    store = ImageFiles(get_settings().images_dir)
    rows: list[dict[str, Any]] = []
    labels: list[tuple[str, str]] = []
    count = 0

    def flush() -> None:
        with unit_of_work() as db:
            result = db.execute(insert(Item.__table__).returning(Item.content_hash, Item.id), rows)
            # A Result has keys(), so dict() would treat it as a mapping: iterate its rows.
            ids = dict(list(result.tuples()))
            if labels:
                now = utcnow()
                db.execute(
                    insert(Label),
                    [
                        {
                            "item_id": ids[h],
                            "project_id": project_id,
                            "user_id": user_id,
                            "label": cls,
                            "source": LabelSource.imported,
                            "created_at": now,
                        }
                        for h, cls in labels
                    ],
                )
        rows.clear()
        labels.clear()

    now = None
    for name, cls, data in images:
        h = hashlib.sha256(data).hexdigest()
        store.put(h, data)
        if now is None:
            from app.db import utcnow

            now = utcnow()
        rows.append(
            {
                "project_id": project_id,
                "content_hash": h,
                "name": name,
                "media_type": "image/jpeg",
                "width": 32,
                "height": 32,
                "split": split,
                "label": cls if labelled else None,
                "created_at": now,
            }
        )
        if labelled:
            labels.append((h, cls))
        count += 1
        if len(rows) >= INSERT_CHUNK:
            flush()
    if rows:
        flush()
    return count


def label_spread(project_id: int, n: int, *, user_id: int) -> int:
    """Import the CIFAR class of ``n`` pool items spread evenly over the pool (every class)."""
    from sqlalchemy import insert, select, update

    from app.db import unit_of_work, utcnow
    from app.items.models import Item
    from app.labeling.models import Label, LabelSource

    with unit_of_work() as db:
        rows = db.execute(
            select(Item.id, Item.name).where(Item.project_id == project_id).order_by(Item.id)
        ).all()
        step = max(1, len(rows) // max(n, 1))
        chosen = [(iid, name.split("/")[-2]) for iid, name in rows[::step][:n]]
        now = utcnow()
        for iid, cls in chosen:
            db.execute(update(Item).where(Item.id == iid).values(label=cls))
        db.execute(
            insert(Label),
            [
                {
                    "item_id": iid,
                    "project_id": project_id,
                    "user_id": user_id,
                    "label": cls,
                    "source": LabelSource.imported,
                    "created_at": now,
                }
                for iid, cls in chosen
            ],
        )
    return len(chosen)


def import_zip(c: httpx.Client, pid: int, n: int) -> float:
    """Send ``n`` pool images through the real upload and import job; seconds until done."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, _cls, data in pool_images(n):
            zf.writestr(name, data)
    started = time.perf_counter()
    r = c.post(
        f"/api/projects/{pid}/items",
        files={"file": ("pool.zip", buf.getvalue(), "application/zip")},
        data={"split": "pool"},
        timeout=600,
    )
    r.raise_for_status()
    job = wait_job(c, r.json()["id"], 3600)
    if job["status"] != "succeeded":
        raise RuntimeError(f"import failed: {job}")
    return time.perf_counter() - started


def wait_job(c: httpx.Client, job_id: int, timeout: float) -> dict[str, Any]:
    """Poll a job until it finishes."""
    box: dict[str, Any] = {}

    def done() -> bool:
        box["job"] = c.get(f"/api/jobs/{job_id}").json()
        return box["job"]["status"] in ("succeeded", "failed", "canceled")

    wait_for(done, timeout, f"job {job_id} did not finish", interval=0.5)
    return box["job"]


def newsgroup_rows(split: str) -> list[tuple[str, str]]:
    """(class, text) of every post of a 20 Newsgroups split, in file order."""
    import csv

    csv.field_size_limit(1 << 30)
    with (NEWSGROUPS / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        return [(r["label"], r["text"]) for r in csv.DictReader(f)]


def pool_texts(split: str, n: int) -> Iterator[tuple[str, str, str]]:
    """``n`` distinct (name, class, text): the split's posts, repeated past its end with a
    trailer that changes the content hash. Names are ``class/number`` (label_spread reads the
    class from them)."""
    rows = newsgroup_rows(split)
    # A class every k-th row (the file is grouped by class), as for CIFAR's test split.
    step = max(1, len(rows) // max(n, 1)) if n < len(rows) else 1
    for i in range(n):
        rep, at = divmod(i * step, len(rows))
        cls, text = rows[at]
        yield f"{cls}/{i}", cls, (f"{text} copy {rep}" if rep else text)


def insert_texts(
    project_id: int, texts: Iterator[tuple[str, str, str]], *, split: str, labelled: bool
) -> int:
    """Insert text items through the text import's own batch insert (labels as imported)."""
    from app.db import unit_of_work
    from app.items.text_import import AcceptedText, content_hash
    from app.items.text_import import insert_texts as insert_batch

    count = 0
    batch: list[AcceptedText] = []

    def flush() -> None:
        nonlocal count
        with unit_of_work() as db:
            count += insert_batch(db, batch, project_id=project_id, split=split, uploader=None)[0]
        batch.clear()

    for name, cls, text in texts:
        batch.append(AcceptedText(name, content_hash(text), text, cls if labelled else None))
        if len(batch) >= INSERT_CHUNK:
            flush()
    if batch:
        flush()
    return count


def timed_round(
    c: httpx.Client, pid: int, *, strategy: str, batch: int, proxy: dict[str, Any], seed: int
) -> dict[str, Any]:
    """POST a round and poll until its batch is ready; the turnaround and its parts."""
    started = time.perf_counter()
    r = c.post(
        f"/api/projects/{pid}/rounds",
        # Each timed round replaces the batch the one before left labelling.
        json={
            "strategy": strategy,
            "batch_size": batch,
            "proxy": proxy,
            "seed": seed,
            "supersede": True,
        },
    )
    r.raise_for_status()
    rid = r.json()["id"]
    box: dict[str, Any] = {}

    def ready() -> bool:
        box["round"] = c.get(f"/api/rounds/{rid}").json()
        return box["round"]["status"] not in ("queued", "running")

    wait_for(ready, 4 * 3600, f"round {rid} did not finish", interval=0.2)
    turnaround = time.perf_counter() - started
    rnd = box["round"]
    if rnd["status"] != "labeling":
        raise RuntimeError(f"round {rid} ended {rnd['status']}: {rnd['error']}")
    job = c.get(f"/api/jobs/{rnd['job_id']}").json()
    created, begun = (_ts(job["created_at"]), _ts(job["started_at"]))
    m = rnd["metrics"]
    parts = {
        "queue_wait": begun - created,
        "loading": m["seconds_loading"],
        "training": m["seconds_training"],
        "scoring": m["seconds_scoring"],
        "selecting": m["seconds_selecting"],
    }
    return {
        "round_id": rid,
        "arch": proxy["arch"],
        "epochs": proxy.get("epochs"),
        "strategy": strategy,
        "batch": batch,
        "turnaround": turnaround,
        **parts,
        "other": turnaround - sum(parts.values()),
        "labeled": m["labeled"],
        "pool": m["pool"],
        "proxy_test_accuracy": m["proxy_test_accuracy"],
        "embedded_in_round": (m.get("embedding") or {}).get("images", 0),
        "device": m["device"],
    }


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def admin_client(s: Stack) -> httpx.Client:
    """Signed in as the stack's admin."""
    c = httpx.Client(base_url=s.url, timeout=120)
    r = c.post("/api/auth/login", json=ADMIN)
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def bench_size(c: httpx.Client, args: argparse.Namespace, size: int, admin_id: int) -> list[dict]:
    """One project of ``size`` pool images: load it, then time the three rounds."""
    r = c.post(
        "/api/projects",
        json={"name": f"cifar-{size}-{time.time_ns()}", "classes": CLASSES},
    )
    r.raise_for_status()
    pid = r.json()["id"]
    load: dict[str, Any] = {}
    started = time.perf_counter()
    if args.via_import:
        load["import_job_seconds"] = import_zip(c, pid, size)
        print(f"  import job of {size} images: {load['import_job_seconds']:.1f} s", flush=True)
    else:
        insert_items(pid, pool_images(size), split="pool", labelled=False, user_id=admin_id)
    labelled = label_spread(pid, args.labels, user_id=admin_id)
    # Every k-th test image: all ten classes, as the archive is grouped by class.
    test = list(cifar_entries("test.zip"))[:: max(1, 10_000 // max(args.test, 1))][: args.test]
    insert_items(pid, iter(test), split="test", labelled=True, user_id=admin_id)
    load["insert_seconds"] = time.perf_counter() - started
    print(
        f"  pool of {size} ({labelled} labelled), {len(test)} test: "
        f"{load['insert_seconds']:.1f} s to load",
        flush=True,
    )
    proxy = {"arch": args.proxy, "epochs": args.epochs, "batch_size": 128, "image_size": 32}
    target = {**proxy, "arch": args.target}
    rows = []
    for label, cfg in (("proxy, cold cache", proxy), ("proxy", proxy), ("target", target)):
        row = timed_round(c, pid, strategy=args.strategy, batch=args.batch, proxy=cfg, seed=1)
        row.update({"pool_size": size, "run": label, **load})
        rows.append(row)
        print(f"  {label:18} {row['arch']:10} {row['turnaround']:8.1f} s", flush=True)
    return rows


def bench_text_size(
    c: httpx.Client, args: argparse.Namespace, size: int, admin_id: int
) -> list[dict]:
    """One text project of ``size`` posts: load it, embed it once, then time rounds warm."""
    classes = sorted({cls for cls, _ in newsgroup_rows("train")})
    r = c.post(
        "/api/projects",
        json={
            "name": f"news-{size}-{time.time_ns()}",
            "kind": "text",
            "classes": classes,
            "settings": {"backbone": args.backbone},
        },
    )
    r.raise_for_status()
    pid = r.json()["id"]
    load: dict[str, Any] = {}
    started = time.perf_counter()
    insert_texts(pid, pool_texts("train", size), split="pool", labelled=False)
    labelled = label_spread(pid, args.labels, user_id=admin_id)
    test = insert_texts(pid, pool_texts("test", args.test), split="test", labelled=True)
    load["insert_seconds"] = time.perf_counter() - started
    print(
        f"  pool of {size} texts ({labelled} labelled), {test} test: "
        f"{load['insert_seconds']:.1f} s to load",
        flush=True,
    )
    started = time.perf_counter()
    r = c.post(f"/api/projects/{pid}/embeddings", json={})
    r.raise_for_status()
    job = wait_job(c, r.json()["id"], 4 * 3600)
    if job["status"] != "succeeded":
        raise RuntimeError(f"embedding failed: {job}")
    load["embed_seconds"] = time.perf_counter() - started
    rate = job["result"]["images_per_second"]
    print(
        f"  embedded {job['result']['images']} texts with {args.backbone}: "
        f"{load['embed_seconds']:.1f} s ({rate} texts/s in the job)",
        flush=True,
    )
    # The embed job's help requests (one per chunk past its first, up to SVP_EMBED_FANOUT) are
    # still queued: each finds nothing left, but the embedded broker hands them out about one a
    # second, which would count as the first round's queue wait.
    time.sleep(args.settle)
    rows = []
    runs = (
        (f"linear {args.strategy}", args.strategy, {"arch": "linear"}),
        ("linear margin", "margin", {"arch": "linear"}),
        ("fasttext margin", "margin", {"arch": "fasttext", "epochs": args.epochs}),
    )
    for label, strategy, cfg in runs:
        row = timed_round(c, pid, strategy=strategy, batch=args.batch, proxy=cfg, seed=1)
        row.update({"pool_size": size, "run": label, "backbone": args.backbone, **load})
        rows.append(row)
        print(f"  {label:18} {row['arch']:10} {row['turnaround']:8.1f} s", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The turnaround table, seconds."""
    cols = ["queue_wait", "loading", "training", "scoring", "selecting", "other"]
    head = (
        f"{'pool':>7} {'selector':18} {'arch':10} {'ep':>3} {'total':>8} "
        + " ".join(f"{c:>10}" for c in cols)
        + f" {'acc':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        acc = r["proxy_test_accuracy"]
        print(
            f"{r['pool_size']:>7} {r['run']:18} {r['arch']:10} {r['epochs'] or '-':>3} "
            f"{r['turnaround']:>8.1f} "
            + " ".join(f"{r[c]:>10.2f}" for c in cols)
            + (f" {acc:>6.3f}" if acc is not None else "      -")
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000, help="labelled test images")
    p.add_argument("--batch", type=int, default=1000, help="round batch size")
    p.add_argument("--strategy", default="least_confidence")
    p.add_argument("--proxy", default="tiny_cnn")
    p.add_argument("--target", default="preact20")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--database-url", default="")
    p.add_argument("--broker-url", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--via-import", action="store_true", help="load pools through the import job")
    p.add_argument("--quick", action="store_true", help="2,000 images, 200 labels, 1 epoch")
    p.add_argument("--out", default="")
    p.add_argument("--text", action="store_true", help="a text project of 20 Newsgroups posts")
    p.add_argument("--backbone", default="glove_6b_50d", help="--text: the text encoder")
    p.add_argument("--settle", type=float, default=12.0, help="--text: seconds before rounds")
    args = p.parse_args(argv)
    if args.text and args.strategy == "least_confidence":
        # The product's default strategy on a text project; fastText's default epochs.
        args.strategy = "auto"
    if args.text and args.epochs == 2:
        args.epochs = 10
    if args.quick:
        args.sizes, args.labels, args.test, args.batch, args.epochs = [2000], 200, 200, 100, 1
    data = NEWSGROUPS / "train.csv" if args.text else CIFAR / "train.zip"
    if not data.exists():
        print(f"needs {data}", file=sys.stderr)
        return 2
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="svp-turnaround-"))
    database_url = args.database_url or f"sqlite:///{base / 'stack' / 'svp.sqlite3'}"
    env = {"SVP_ADMIN_USERNAME": ADMIN["username"], "SVP_ADMIN_PASSWORD": ADMIN["password"]}
    rows: list[dict[str, Any]] = []
    started = time.time()
    with stack(
        base, database_url=database_url, broker_url=args.broker_url or None, extra_env=env
    ) as s:
        # This process writes items straight into the same database and data dir.
        os.environ.update({k: v for k, v in s.env.items() if k.startswith("SVP_")})
        import app.models  # noqa: F401  (every table, so foreign keys resolve)
        from app.db import reset_caches

        reset_caches()
        s.serve()
        s.worker()
        c = admin_client(s)
        admin_id = c.get("/api/me").json()["id"]
        for size in args.sizes:
            print(f"pool {size}:", flush=True)
            rows += (bench_text_size if args.text else bench_size)(c, args, size, admin_id)
    print()
    print_table(rows)
    if args.out:
        report = {
            "args": vars(args),
            "database": database_url.split("://")[0],
            "broker": (args.broker_url or "embedded").split("://")[0],
            "cpus": os.cpu_count(),
            "started": started,
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
