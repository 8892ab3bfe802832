"""Do the hot paths stay flat as the pool grows? Each one timed at 10k, 200k and 1M items.

For each pool size this makes a fresh PostgreSQL database of its own (``h_hot_scale_<N>`` by
default), migrates it, and seeds one image project set-based (``generate_series``): N items, one
in twenty on the test split, about 15% labelled (with their label rows, as an import writes
them), and a round in labelling whose batch is 1,000 unlabelled pool items with scattered ranks
(and a small image file for each, so the project view's thumbnails load); then a second
project of 50,000 items, made after the big one. It then starts a real
``svplabel serve`` on it (Redis broker, db 4) and times over HTTP, one request at a time, a
fixed number of requests per operation (p50 and p95 in ms):

- ``queue/next`` (n=1) and ``POST /api/labels`` on the leased item, as an annotator labels;
- item pages: the first page and a deep one (``after`` at 90% of the ids), unfiltered and with
  ``status=`` and ``split=`` filters, one of which matches nothing (the test split is labelled);
  and the second project's first pages (its ids all come after the big project's);
- what the project view reads: the project with its counts, the project list, class counts,
  the rounds, the batch, members, evaluations, and one item;
- the exports (csv, jsonl): time to first byte, total time, and the server's peak resident
  memory while it streams (``VmRSS`` sampled every 5 ms, and ``VmHWM`` reset before each);
- the project view in Debian's chromium: from navigation to the counts, class balance and
  rounds drawn, with the requests it made (it must not page through the pool).

Each size's figures go to a JSON file; ``--table`` prints operation x size from such files:

    flock /tmp/bench.lock python bench/hot_paths_scale.py --sizes 10000,200000,1000000 \
        --out /tmp/hot-scale/before
    python bench/hot_paths_scale.py --table /tmp/hot-scale/before /tmp/hot-scale/after

Uses ports from ``--port`` (default 18300) and Redis db 4; drops only databases it names.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.items.service import encode_cursor  # noqa: E402
from app.items.storage import image_path  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.security import hash_password  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
PASSWORD = "bench-password"  # noqa: S105 - throwaway users of a throwaway database
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCH = 1000
# The items of a second project, made after the big one: its pages must not walk the big one's
# (a much smaller one gets a plan of its own by its statistics; one of this size did not).
SMALL = 50_000
# Multiplicative hashing of the id: ranks scattered over the pool, as a real strategy's are.
SCATTER = "(i.id * 2654435761) % 4294967296"
# A 1x1 PNG: the batch's thumbnails load without reading any real data set.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8ffff3f0005fe02fea7d6a4e60000000049454e44ae426082"
)


# ---- the database ----


def fresh_database(url: str) -> None:
    """Drop and recreate this bench's own database, then migrate it to head."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    upgrade(url)


def drop_database(url: str) -> None:
    """Drop this bench's database (``--drop``: a 1M-item database takes about a gigabyte)."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Seeded:
    """What the measurements need to know of the seeded project."""

    project_id: int
    small_id: int  # a project of SMALL items made after the big one
    items: int
    labeled: int
    deep_id: int  # an item id at 90% of the project's ids: the deep pages start after it
    seconds: float


# Statements of the seed; the pieces spliced in are constants of this file, never input.
_ITEMS = """
    INSERT INTO items (project_id, content_hash, name, media_type, width, height, split, label,
                       created_at)
    SELECT :p, lpad(to_hex(g), 64, '0'), 'img_' || g || '.png', 'image/png', 32, 32,
           CASE WHEN g % 20 = 0 THEN 'test' ELSE 'pool' END,
           CASE WHEN g % 10 = 3 OR g % 20 = 0 THEN (CAST(:classes AS text[]))[1 + (g / 10) % 10]
           END,
           :t
    FROM generate_series(1, :n) AS g"""
_LABELS = """
    INSERT INTO labels (item_id, project_id, user_id, label, source, key, created_at)
    SELECT id, project_id, :u, label, 'import', NULL, :t FROM items
    WHERE project_id = :p AND label IS NOT NULL ORDER BY id"""
_BATCH = f"""
    INSERT INTO selections (round_id, item_id, rank, score, suggested_label, suggested_prob,
                            labeled)
    SELECT :r, id, rank - 1, 1.0 / rank, :lab, 0.5, false FROM (
        SELECT i.id, row_number() OVER (ORDER BY {SCATTER}) AS rank FROM items i
        WHERE i.project_id = :p AND i.split = 'pool' AND i.label IS NULL) AS ranked
    WHERE rank <= :b"""  # noqa: S608


def _project(db: Any, *, name: str, n: int, owner: int, now: datetime) -> int:
    """A project with n items (about 15% labelled, with their label rows); its id."""
    project_id = int(
        db.scalar(
            text(
                "INSERT INTO projects (name, description, kind, classes, settings, "
                "created_by, created_at) VALUES (:name, '', 'image', :c, :s, :o, :t) "
                "RETURNING id"
            ),
            {"name": name, "c": json.dumps(CLASSES), "s": json.dumps({}), "o": owner, "t": now},
        )
    )
    db.execute(
        text(
            "INSERT INTO members (project_id, user_id, role, created_at) SELECT :p, id, "
            "CASE WHEN username = 'owner' THEN 'engineer' ELSE 'annotator' END, :t FROM users"
        ),
        {"p": project_id, "t": now},
    )
    db.execute(text(_ITEMS), {"p": project_id, "n": n, "t": now, "classes": CLASSES})
    db.execute(text(_LABELS), {"p": project_id, "u": owner, "t": now})
    return project_id


def seed(url: str, *, n: int, annotators: int) -> Seeded:
    """Users, the project (its items and labels, a round in labelling and its batch), then a
    second project of SMALL items made after it."""
    engine = create_engine(url)
    started = time.perf_counter()
    now = datetime.now(UTC)
    password_hash = hash_password(PASSWORD)
    with engine.begin() as db:
        users = [("owner", "engineer")] + [(f"ann{k}", "annotator") for k in range(annotators)]
        db.execute(
            text(
                "INSERT INTO users (username, password_hash, role, active, created_at) "
                "VALUES (:u, :h, :r, true, :t)"
            ),
            [{"u": u, "h": password_hash, "r": r, "t": now} for u, r in users],
        )
        owner = db.scalar(text("SELECT id FROM users WHERE username = 'owner'"))
        project_id = _project(db, name="scale", n=n, owner=owner, now=now)
        round_id = db.scalar(
            text(
                "INSERT INTO rounds (project_id, number, status, strategy, batch_size, proxy, "
                "seed, metrics, created_at, started_at) VALUES (:p, 1, 'labeling', "
                "'least_confidence', :b, :proxy, 1, '{}', :t, :t) RETURNING id"
            ),
            {"p": project_id, "b": BATCH, "t": now, "proxy": json.dumps({"arch": "tiny_cnn"})},
        )
        db.execute(text(_BATCH), {"r": round_id, "p": project_id, "b": BATCH, "lab": CLASSES[0]})
        # Made after the big one: its items' ids all come after the big project's.
        small_id = _project(db, name="small", n=SMALL, owner=owner, now=now)
        labeled = int(
            db.scalar(
                text("SELECT count(*) FROM items WHERE project_id = :p AND label IS NOT NULL"),
                {"p": project_id},
            )
        )
        lo, hi = db.execute(
            text("SELECT min(id), max(id) FROM items WHERE project_id = :p"), {"p": project_id}
        ).one()
    # Settle the fresh tables before any clock starts (autovacuum and a checkpoint of the
    # seed's WAL would otherwise run during the timed requests, on the same cores).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("VACUUM ANALYZE"))
        db.execute(text("CHECKPOINT"))
    engine.dispose()
    return Seeded(
        project_id=project_id,
        small_id=small_id,
        items=n,
        labeled=labeled,
        deep_id=int(lo + (hi - lo) * 9 // 10),
        seconds=time.perf_counter() - started,
    )


def batch_hashes(url: str, project_id: int) -> list[str]:
    """The content hashes of the open batch's items (their image files are written)."""
    engine = create_engine(url)
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT i.content_hash FROM selections s JOIN items i ON i.id = s.item_id "
                "JOIN rounds r ON r.id = s.round_id WHERE r.project_id = :p"
            ),
            {"p": project_id},
        ).scalars()
        hashes = list(rows)
    engine.dispose()
    return hashes


# ---- the server and its memory ----


def _tree(pid: int) -> list[int]:
    """A process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """The server tree's resident memory now (MiB)."""
    total = 0
    for p in _tree(pid):
        try:
            total += _status_kib(p, "VmRSS")
        except OSError:
            continue
    return round(total / 1024, 1)


def hwm_mib(pid: int) -> float:
    """The server tree's peak resident memory since the last reset (MiB, summed)."""
    total = 0
    for p in _tree(pid):
        try:
            total += _status_kib(p, "VmHWM")
        except OSError:
            continue
    return round(total / 1024, 1)


def reset_hwm(pid: int) -> None:
    """Reset the peak (``clear_refs`` 5) of the server's own processes, which this started."""
    for p in _tree(pid):
        with suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")


@contextmanager
def sampled_peak(pid: int, every: float = 0.005) -> Iterator[dict[str, float]]:
    """Sample the server's RSS in a thread while the block runs: ``peak`` and ``hwm`` in MiB."""
    out = {"peak": 0.0, "hwm": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], rss_mib(pid))
            stop.wait(every)

    reset_hwm(pid)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["hwm"] = hwm_mib(pid)


@contextmanager
def server(url: str, *, port: int, data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``svplabel serve`` on the bench database (already migrated), until the block ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
    env.update(
        SVP_DATA_DIR=str(data_dir),
        SVP_DATABASE_URL=url,
        SVP_BROKER_URL="redis://127.0.0.1:6379/4",
        # This checkout's code, whichever one the svplabel script was installed from.
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        SVP_LOG_LEVEL="WARNING",  # no access log: the bench times the service, not its logging
    )
    log = (data_dir / "server.log").open("ab")
    svplabel = shutil.which("svplabel") or "svplabel"
    proc = subprocess.Popen(
        [svplabel, "serve", "--no-migrate", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((data_dir / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# ---- timing ----


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of the values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Figures:
    """What one size measured: per operation p50/p95 ms (and extras), memory, browser."""

    size: int
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def timed(self, name: str, times_ms: list[float], **extra: Any) -> None:
        """Record an operation's timings."""
        self.ops[name] = {
            "p50": round(statistics.median(times_ms), 2),
            "p95": round(pct(times_ms, 0.95), 2),
            "n": len(times_ms),
            **extra,
        }


def sign_in(base: str, username: str) -> httpx.Client:
    """A keep-alive client signed in as this user, carrying its CSRF token."""
    c = httpx.Client(base_url=base, timeout=300)
    r = c.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def repeat(call: Callable[[], httpx.Response], count: int, warm: int = 3) -> list[float]:
    """Time ``count`` calls (after ``warm`` untimed ones); every answer must be a 2xx."""
    for _ in range(warm):
        call().raise_for_status()
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        r = call()
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code >= 300:
            raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    return times


def time_labelling(fig: Figures, base: str, pid: int, count: int) -> None:
    """An annotator's loop: lease one item, label it; both timed."""
    ann = sign_in(base, "ann0")
    next_ms, label_ms = [], []
    for k in range(count + 3):
        t0 = time.perf_counter()
        r = ann.post(f"/api/projects/{pid}/queue/next", params={"n": 1})
        t1 = time.perf_counter()
        r.raise_for_status()
        entries = r.json()
        if not entries:
            raise SystemExit("the batch ran out: raise BATCH or lower --requests")
        entry = entries[0]
        body = {"item_id": entry["item_id"], "label": CLASSES[k % 10], "key": f"scale-{k}"}
        t2 = time.perf_counter()
        r = ann.post("/api/labels", json=body)
        t3 = time.perf_counter()
        if r.status_code != 201:
            raise SystemExit(f"label: {r.status_code} {r.text[:300]}")
        if k >= 3:
            next_ms.append((t1 - t0) * 1000)
            label_ms.append((t3 - t2) * 1000)
    fig.timed("queue/next (n=1)", next_ms)
    fig.timed("POST /api/labels", label_ms)
    ann.close()


def time_reads(fig: Figures, eng: httpx.Client, seeded: Seeded, count: int) -> None:
    """Item pages, and every read the project view makes."""
    pid = seeded.project_id
    deep = encode_cursor(seeded.deep_id)
    items = f"/api/projects/{pid}/items"
    pages = {
        "items page 1": {},
        "items deep page": {"after": deep},
        "items status=labeled p1": {"status": "labeled"},
        "items status=labeled deep": {"status": "labeled", "after": deep},
        "items status=unlabeled deep": {"status": "unlabeled", "after": deep},
        "items split=test p1": {"split": "test"},
        "items split=test deep": {"split": "test", "after": deep},
        "items split=pool&status=labeled deep": {
            "split": "pool",
            "status": "labeled",
            "after": deep,
        },
        "items split=test&status=unlabeled (none)": {"split": "test", "status": "unlabeled"},
    }
    small = f"/api/projects/{seeded.small_id}/items"
    for name, (path, params) in {
        **{name: (items, params) for name, params in pages.items()},
        "2nd project (50k, made after): items p1": (small, {}),
        "2nd project (50k, made after): labeled p1": (small, {"status": "labeled"}),
    }.items():
        query = {"limit": 100, **params}
        fig.timed(name, repeat(lambda p=path, q=query: eng.get(p, params=q), count))  # type: ignore[misc]
    reads = {
        "GET project (counts)": f"/api/projects/{pid}",
        "GET projects (list)": "/api/projects",
        "GET class-counts": f"/api/projects/{pid}/class-counts",
        "GET rounds": f"/api/projects/{pid}/rounds",
        "GET selection (batch 1000)": f"/api/rounds/{_round_id(eng, pid)}/selection",
        "GET members": f"/api/projects/{pid}/members",
        "GET evaluations": f"/api/projects/{pid}/evaluations",
        "GET item": f"/api/items/{seeded.deep_id}",
        "2nd project (50k, made after): GET project": f"/api/projects/{seeded.small_id}",
    }
    for name, path in reads.items():
        fig.timed(name, repeat(lambda p=path: eng.get(p), count))  # type: ignore[misc]


def _round_id(eng: httpx.Client, pid: int) -> int:
    rounds = eng.get(f"/api/projects/{pid}/rounds").json()
    return int(rounds[0]["id"])


def time_exports(fig: Figures, eng: httpx.Client, pid: int, server_pid: int, runs: int) -> None:
    """Each streamed export: first byte, total, size, and the server's peak memory meanwhile."""
    for fmt in ("csv", "jsonl"):
        first, total, peaks, hwms = [], [], [], []
        size = rows = 0
        for _ in range(runs):
            with sampled_peak(server_pid) as mem:
                t0 = time.perf_counter()
                ttfb = None
                size = rows = 0
                with eng.stream("GET", f"/api/projects/{pid}/export", params={"format": fmt}) as r:
                    r.raise_for_status()
                    for chunk in r.iter_raw():
                        if ttfb is None:
                            ttfb = time.perf_counter() - t0
                        size += len(chunk)
                        rows += chunk.count(b"\n")
                t1 = time.perf_counter()
            first.append((ttfb or 0) * 1000)
            total.append((t1 - t0) * 1000)
            peaks.append(mem["peak"])
            hwms.append(mem["hwm"])
        fig.timed(f"export {fmt} first byte", first)
        fig.timed(
            f"export {fmt} total",
            total,
            rows=rows,
            mib=round(size / 2**20, 1),
            peak_rss_mib=max(peaks),
            hwm_mib=max(hwms),
        )


PROJECT_DRAWN = """(n) => {
  const items = document.querySelector('#counts [data-count="items"] b');
  return items && items.textContent === String(n)
    && document.querySelector('#class-balance table')
    && document.querySelector('#rounds tr[data-round]');
}"""


def time_browser(fig: Figures, base: str, seeded: Seeded, runs: int) -> None:
    """The project view in chromium: navigation to counts, balance and rounds drawn; and the
    requests it made (none may page through the pool)."""
    from tests.browser_support import chromium_missing_reason, launched_browser

    missing = chromium_missing_reason()
    if missing:
        fig.notes["browser"] = f"skipped: {missing}"
        return
    pid = seeded.project_id
    with launched_browser() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.goto(f"{base}/#/login")
        page.get_by_label("Username").fill("owner")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/#/projects")
        times: list[float] = []
        seen: list[str] = []
        page.on("request", lambda req: seen.append(req.url))
        for k in range(runs + 1):
            page.goto("about:blank")
            seen.clear()
            t0 = time.perf_counter()
            page.goto(f"{base}/#/projects/{pid}")
            page.wait_for_function(PROJECT_DRAWN, arg=seeded.items, timeout=120_000)
            elapsed = (time.perf_counter() - t0) * 1000
            if k:
                times.append(elapsed)
        # What the last load asked for, once the view settled (the batch's thumbnails too).
        page.wait_for_load_state("networkidle")
        requests = [u.removeprefix(base) for u in seen if "/api/" in u]
        context.close()
    item_pages = [u for u in requests if f"/api/projects/{pid}/items" in u]
    fig.timed("browser: project view drawn", times)
    thumbnails = [u for u in requests if u.startswith("/api/items/") and u.endswith("/image")]
    fig.notes["browser_api_requests"] = sorted(set(requests) - set(thumbnails))
    fig.notes["browser_thumbnail_requests"] = len(thumbnails)
    fig.notes["browser_api_request_count"] = len(requests)
    fig.notes["browser_item_page_requests"] = len(item_pages)


# ---- one size ----


def run_size(args: argparse.Namespace, n: int) -> Figures:
    """Seed, serve and measure one pool size."""
    url = f"{PG}/{args.database_prefix}_{n}"
    fig = Figures(size=n)
    print(f"== {n} items: seeding {url}", flush=True)
    t0 = time.perf_counter()
    fresh_database(url)
    fig.notes["migrate_s"] = round(time.perf_counter() - t0, 1)
    seeded = seed(url, n=n, annotators=2)
    fig.notes["seed_s"] = round(seeded.seconds, 1)
    fig.notes["labeled"] = seeded.labeled
    print(f"   seeded in {seeded.seconds:.1f}s ({seeded.labeled} labelled)", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="hot-scale-", dir=args.tmp))
    try:
        images = data_dir / "images"
        for digest in batch_hashes(url, seeded.project_id):
            path = image_path(images, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(PNG)
        with server(url, port=args.port, data_dir=data_dir) as proc:
            fig.memory["server_idle_mib"] = rss_mib(proc.pid)
            eng = sign_in(f"http://127.0.0.1:{args.port}", "owner")
            base = f"http://127.0.0.1:{args.port}"
            time_labelling(fig, base, seeded.project_id, args.requests)
            print("   labelling timed", flush=True)
            time_reads(fig, eng, seeded, args.requests)
            print("   reads timed", flush=True)
            time_exports(fig, eng, seeded.project_id, proc.pid, args.export_runs)
            print("   exports timed", flush=True)
            fig.memory["server_after_mib"] = rss_mib(proc.pid)
            if not args.no_browser:
                time_browser(fig, base, seeded, args.browser_runs)
                print("   browser timed", flush=True)
            fig.memory["server_end_mib"] = rss_mib(proc.pid)
            fig.memory["server_hwm_mib"] = hwm_mib(proc.pid)
            eng.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if args.drop:
            drop_database(url)
    return fig


# ---- the table ----


def load(out: Path) -> list[Figures]:
    """Every size's figures in a results folder, smallest first."""
    found = []
    for path in sorted(out.glob("size-*.json")):
        raw = json.loads(path.read_text())
        found.append(
            Figures(size=raw["size"], ops=raw["ops"], memory=raw["memory"], notes=raw["notes"])
        )
    return sorted(found, key=lambda f: f.size)


def _size_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def table(columns: list[tuple[str, Figures]]) -> str:
    """Operation x column (a size, of a run), each cell ``p50 / p95`` ms; then the exports'
    rows, size and the server's peak memory, the server's memory, the browser's requests."""
    figures = [fig for _, fig in columns]
    names: list[str] = []
    for fig in figures:
        names.extend(k for k in fig.ops if k not in names)
    head = ["operation (p50 / p95 ms)"] + [name for name, _ in columns]
    rows = [head, ["---"] * len(head)]
    for name in names:
        cells = [name]
        for fig in figures:
            op = fig.ops.get(name)
            cells.append(f"{op['p50']:.1f} / {op['p95']:.1f}" if op else "-")
        rows.append(cells)
    for key, label in (
        ("export csv total", "csv export: rows, MiB, server peak RSS MiB"),
        ("export jsonl total", "jsonl export: rows, MiB, server peak RSS MiB"),
    ):
        cells = [label]
        for fig in figures:
            op = fig.ops.get(key)
            cells.append(f"{op['rows']}, {op['mib']}, {op['peak_rss_mib']}" if op else "-")
        rows.append(cells)
    for key in ("server_idle_mib", "server_after_mib", "server_hwm_mib"):
        rows.append([f"server RSS MiB: {key}"] + [str(f.memory.get(key, "-")) for f in figures])
    rows.append(
        ["browser: API requests (thumbnails, item pages)"]
        + [
            f"{f.notes.get('browser_api_request_count', '-')} "
            f"({f.notes.get('browser_thumbnail_requests', '-')}, "
            f"{f.notes.get('browser_item_page_requests', '-')})"
            for f in figures
        ]
    )
    rows.append(["seed s"] + [str(f.notes.get("seed_s", "-")) for f in figures])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )


def columns_of(folders: list[Path]) -> list[tuple[str, Figures]]:
    """The columns of a table: each size, then each run (named by its folder when several)."""
    runs = [(folder.name, {f.size: f for f in load(folder)}) for folder in folders]
    sizes = sorted({size for _, figs in runs for size in figs})
    return [
        (_size_name(size) + (f" {name}" if len(runs) > 1 else ""), figs[size])
        for size in sizes
        for name, figs in runs
        if size in figs
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,200000,1000000")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per operation")
    parser.add_argument("--export-runs", type=int, default=3)
    parser.add_argument("--browser-runs", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--database-prefix", default="h_hot_scale")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hot-scale/latest"))
    parser.add_argument("--tmp", default=None, help="where the server's data dir goes")
    parser.add_argument("--drop", action="store_true", help="drop each database when done")
    parser.add_argument(
        "--table",
        type=Path,
        nargs="+",
        help="only print the table of results folders (several: side by side, e.g. before after)",
    )
    args = parser.parse_args()
    if args.table:
        print(table(columns_of(args.table)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        fig = run_size(args, n)
        (args.out / f"size-{n:08d}.json").write_text(
            json.dumps(fig.__dict__, indent=1, default=str)
        )
    print(table(columns_of([args.out])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
