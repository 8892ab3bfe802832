"""Load benchmark of the labelling hot path: N annotators leasing and labelling at once.

Starts a real ``svplabel serve`` on 127.0.0.1 against its own database (PostgreSQL ``svp_bench``
by default, or ``--database-url``), writes a pool, a round in ``labeling`` and its batch straight
into the database with set-based SQL, then runs N simulated annotators (asyncio + aiohttp), each
looping ``queue/next?n=5`` and one label per item with a unique key, for a bounded time.

Prints labels/s, p50/p99 latency of ``queue/next`` and of labels, error counts by status, and then
checks from the database that every label answered 201 is stored exactly once, and from the
client's own record that no item was held by two annotators at once.

    python bench/api_load.py --annotators 50 --duration 30 --pool 10000
    python bench/api_load.py --annotators 20 --sqlite --workers 2
    python bench/api_load.py --annotators 1 --pool 200000

The client is aiohttp, one keep-alive connection per annotator: httpx, measured here, spent
1.4 ms of CPU per request on the client side, about as much as the server spends on a label,
which on a shared 2-core machine is taken from the server and added to every latency
(``--client httpx`` runs it for comparison).

Also prints the load average at start, the server's resident memory idle and after the run
(all its processes), and the cores the client and the server kept busy: on a small machine the
client's share is taken from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.migrate import upgrade  # noqa: E402
from app.security import hash_password  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/svp_bench"
PASSWORD = "bench-password"  # noqa: S105 - throwaway users of a throwaway database
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Multiplicative hashing of the id: ranks scattered over the pool, as a real strategy's are.
SCATTER = "(id * 2654435761) % 4294967296"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database(url: str) -> None:
    """Drop and recreate the benchmark's database, then migrate it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
    upgrade(url)


def seed(url: str, *, pool: int, batch: int, annotators: int, lease_seconds: int) -> int:
    """Users, a project, its pool, a round in labelling and its batch, set-based; the project id."""
    engine = create_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    started = time.perf_counter()
    # One slow argon2 hash shared by every bench user: hashing 50 times would only cost time.
    password_hash = hash_password(PASSWORD)
    utc = datetime.now(UTC)
    # Written as SQLAlchemy writes UTCDateTime: naive UTC text on SQLite, timestamptz elsewhere.
    now: Any = utc.replace(tzinfo=None).isoformat(" ") if sqlite else utc
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO users (username, password_hash, role, active, created_at) "
                "VALUES (:u, :h, :r, :a, :t)"
            ),
            [{"u": "bench-owner", "h": password_hash, "r": "engineer", "a": True, "t": now}]
            + [
                {"u": f"ann{k}", "h": password_hash, "r": "annotator", "a": True, "t": now}
                for k in range(annotators)
            ],
        )
        owner = db.scalar(text("SELECT id FROM users WHERE username = 'bench-owner'"))
        settings = {"lease_seconds": lease_seconds}
        project_id = db.scalar(
            text(
                "INSERT INTO projects (name, description, classes, settings, created_by, "
                "created_at) VALUES ('bench', '', :c, :s, :o, :t) RETURNING id"
            ),
            {"c": json.dumps(CLASSES), "s": json.dumps(settings), "o": owner, "t": now},
        )
        db.execute(
            text(
                "INSERT INTO members (project_id, user_id, role, created_at) "
                "SELECT :p, id, CASE WHEN username = 'bench-owner' THEN 'engineer' "
                "ELSE 'annotator' END, :t FROM users"
            ),
            {"p": project_id, "t": now},
        )
        series = (
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
            "SELECT i FROM s"
            if sqlite
            else "SELECT i FROM generate_series(1, :n) AS s(i)"
        )
        content_hash = "printf('%064x', i)" if sqlite else "lpad(to_hex(i), 64, '0')"
        # The pieces spliced into these two statements are constants of this file, never input.
        db.execute(
            text(
                "INSERT INTO items (project_id, content_hash, name, media_type, width, height, "  # noqa: S608
                f"split, created_at) SELECT :p, {content_hash}, 'img_' || i || '.png', "
                f"'image/png', 32, 32, 'pool', :t FROM ({series}) AS g"
            ),
            {"p": project_id, "n": pool, "t": now},
        )
        round_id = db.scalar(
            text(
                "INSERT INTO rounds (project_id, number, status, strategy, batch_size, proxy, "
                "seed, metrics, created_at, started_at) VALUES (:p, 1, 'labeling', "
                "'least_confidence', :b, '{}', 1, '{}', :t, :t) RETURNING id"
            ),
            {"p": project_id, "b": batch, "t": now},
        )
        db.execute(
            text(
                "INSERT INTO selections (round_id, item_id, rank, score, suggested_label, "  # noqa: S608
                "suggested_prob, labeled) "
                f"SELECT :r, id, rank - 1, 1.0 / rank, :lab, 0.5, {'0' if sqlite else 'false'} "
                f"FROM (SELECT id, row_number() OVER (ORDER BY {SCATTER}) AS rank "
                "FROM items WHERE project_id = :p) AS ranked WHERE rank <= :b"
            ),
            {"r": round_id, "p": project_id, "b": batch, "lab": CLASSES[0]},
        )
    if not sqlite:
        # Settle the seeded tables before the clock starts: autovacuum's pass over 200,000 fresh
        # rows otherwise ran during the measured seconds, on the same two cores, and a
        # checkpoint of the seed's WAL with it.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            db.execute(text("VACUUM ANALYZE"))
            db.execute(text("CHECKPOINT"))
    engine.dispose()
    print(f"seeded {pool} items, batch {batch}, in {time.perf_counter() - started:.1f}s")
    return int(project_id)


@dataclass
class Record:
    """What the simulated annotators saw."""

    next_ms: list[float] = field(default_factory=list)
    label_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    created: dict[int, int] = field(default_factory=dict)  # label id -> item id (201 only)
    # Per item: (annotator, surely held from, surely held until) — from the answer that leased
    # it to the sending of its label, or its expiry, the span inside the true holding.
    holds: dict[int, list[tuple[int, float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    leased_by: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    done: int = 0


@dataclass
class Answer:
    """What the bench reads of a response."""

    status_code: int
    body: bytes

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


class Client:
    """One annotator's HTTP client: its cookie, its CSRF token, one keep-alive connection."""

    def __init__(self, base: str, kind: str) -> None:
        self.kind = kind
        self.headers: dict[str, str] = {}
        if kind == "httpx":
            self._httpx = httpx.AsyncClient(base_url=base, timeout=60)
        else:
            # unsafe=True: aiohttp's jar otherwise refuses cookies set by an IP-address host.
            self._aiohttp = aiohttp.ClientSession(
                base_url=base,
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                # Idle connections closed before uvicorn's 5 s keep-alive closes them: aiohttp's
                # default (15 s) let an annotator that waited through the others' sign-ins send
                # its first request on a connection the server had just closed.
                connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=3),
                timeout=aiohttp.ClientTimeout(total=60),
            )

    async def post(
        self, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Answer:
        """POST and read the whole answer."""
        if self.kind == "httpx":
            r = await self._httpx.post(path, json=json, params=params, headers=self.headers)
            return Answer(r.status_code, r.content)
        async with self._aiohttp.post(path, json=json, params=params, headers=self.headers) as resp:
            return Answer(resp.status, await resp.read())

    async def aclose(self) -> None:
        """Close the connection."""
        if self.kind == "httpx":
            await self._httpx.aclose()
        else:
            await self._aiohttp.close()


# What a failed request raises, by client.
CLIENT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, asyncio.TimeoutError)


async def sign_in_httpx(base: str, k: int) -> httpx.AsyncClient:
    """An httpx client signed in as annotator ``k``, carrying its CSRF token (bench/soak.py)."""
    c = httpx.AsyncClient(base_url=base, timeout=60)
    r = await c.post("/api/auth/login", json={"username": f"ann{k}", "password": PASSWORD})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


async def sign_in(base: str, k: int, kind: str) -> Client:
    """A client signed in as annotator ``k``, carrying its CSRF token."""
    c = Client(base, kind)
    r = await c.post("/api/auth/login", json={"username": f"ann{k}", "password": PASSWORD})
    if r.status_code != 200:
        raise SystemExit(f"ann{k} could not sign in: {r.status_code} {r.body[:200]!r}")
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


async def annotator(k: int, c: Client, pid: int, deadline: float, n: int, rec: Record) -> None:
    """Lease and label until the deadline or the batch runs out."""
    seq = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            r = await c.post(f"/api/projects/{pid}/queue/next", params={"n": n})
        except CLIENT_ERRORS as exc:
            rec.statuses[f"next {type(exc).__name__}"] += 1
            continue
        rec.next_ms.append((time.perf_counter() - t0) * 1000)
        rec.statuses[f"next {r.status_code}"] += 1
        if r.status_code != 200:
            continue
        got = time.time()
        batch = r.json()
        if not batch:
            rec.done += 1
            return
        for entry in batch:
            item = entry["item_id"]
            rec.leased_by[item].add(k)
            expires = datetime.fromisoformat(entry["lease_expires_at"]).timestamp()
            if time.monotonic() >= deadline:
                # Left leased at the end: held until it expires.
                rec.holds[item].append((k, got, expires))
                continue
            seq += 1
            body = {"item_id": item, "label": entry["suggestion"]["label"], "key": f"{k}-{seq}"}
            sent = time.time()
            rec.holds[item].append((k, got, min(sent, expires)))
            t0 = time.perf_counter()
            try:
                r = await c.post("/api/labels", json=body)
            except CLIENT_ERRORS as exc:
                rec.statuses[f"label {type(exc).__name__}"] += 1
                continue
            rec.label_ms.append((time.perf_counter() - t0) * 1000)
            rec.statuses[f"label {r.status_code}"] += 1
            if r.status_code == 201:
                rec.created[r.json()["id"]] = item


def _tree(pid: int) -> list[int]:
    """A process and its descendants (the uvicorn supervisor and its workers), from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children[int(fields[1])].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def server_usage(pid: int) -> tuple[float, float]:
    """The server tree's resident memory (MiB) and CPU seconds so far."""
    rss_kib, ticks = 0, 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rss_kib += next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return round(rss_kib / 1024, 1), ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 2)


def overlaps(rec: Record) -> int:
    """Items surely held by two different annotators at the same moment."""
    bad = 0
    for spans in rec.holds.values():
        for i, (a, s1, e1) in enumerate(spans):
            if any(a != b and s1 < e2 and s2 < e1 for b, s2, e2 in spans[i + 1 :]):
                bad += 1
                break
    return bad


def check_database(url: str, pid: int, rec: Record) -> dict[str, int]:
    """Compare what the server answered 201 to with what the database holds."""
    engine = create_engine(url)
    with engine.connect() as db:
        rows = db.execute(
            text("SELECT id, item_id FROM labels WHERE project_id = :p"), {"p": pid}
        ).all()
        labelled = db.scalar(
            text("SELECT count(*) FROM items WHERE project_id = :p AND label IS NOT NULL"),
            {"p": pid},
        )
    engine.dispose()
    stored = dict(rows)
    per_item = Counter(item for _, item in rows)
    return {
        "labels_in_db": len(rows),
        "created_201": len(rec.created),
        "created_missing_in_db": sum(
            1 for lid, item in rec.created.items() if stored.get(lid) != item
        ),
        "labels_in_db_not_answered_201": len(set(stored) - set(rec.created)),
        "items_labelled_twice": sum(1 for n in per_item.values() if n > 1),
        "items_with_current_label": int(labelled or 0),
    }


async def run_load(
    args: argparse.Namespace, base: str, pid: int, on_start: Callable[[], None]
) -> tuple[Record, float]:
    """All annotators at once; the wall time they ran. ``on_start`` runs as the clock starts."""
    rec = Record()
    # Sign-ins (a slow argon2 check each, on purpose) happen before the clock starts.
    clients = await asyncio.gather(*(sign_in(base, k, args.client) for k in range(args.annotators)))
    on_start()
    started = time.monotonic()
    deadline = started + args.duration
    try:
        await asyncio.gather(
            *(annotator(k, c, pid, deadline, args.n, rec) for k, c in enumerate(clients))
        )
    finally:
        for c in clients:
            await c.aclose()
    return rec, time.monotonic() - started


def wait_healthy(base: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    """Wait (up to about 30 s) until the server answers its health check; exit if it died."""
    for _ in range(300):
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()}")
        time.sleep(0.1)
    raise SystemExit(f"server did not answer its health check:\n{log_path.read_text()}")


def main() -> int:
    """Run the benchmark and print (and optionally write) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30, help="seconds of load")
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20_000, help="capped at the pool size")
    parser.add_argument("--n", type=int, default=5, help="items per queue/next")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument(
        "--sqlite", action="store_true", help="the embedded default, in a temporary file"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--lease-seconds", type=int, default=600)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--port", type=int, default=0, help="the server's port (0: any free)")
    parser.add_argument(
        "--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the annotators' client"
    )
    args = parser.parse_args()
    if not 1 <= args.annotators <= 500 or not 0 < args.duration <= 600:
        parser.error("--annotators must be 1..500 and --duration 0..600 seconds")
    batch = min(args.batch, args.pool)
    if args.sqlite:
        args.database_url = f"sqlite:///{Path(tempfile.gettempdir()) / 'svp_bench.sqlite3'}"
    # Read the figures against the machine's load: other work on it slows both sides.
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start: {load_at_start} on {os.cpu_count()} cpus")

    fresh_database(args.database_url)
    pid = seed(
        args.database_url,
        pool=args.pool,
        batch=batch,
        annotators=args.annotators,
        lease_seconds=args.lease_seconds,
    )
    port = args.port or _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="svp-bench-") as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}
        env.update(
            SVP_DATA_DIR=data_dir,
            SVP_DATABASE_URL=args.database_url,
            SVP_LOG_LEVEL="WARNING",  # no access log: the bench measures the service, not logging
        )
        log_path = Path(data_dir) / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-migrate",
                    "--workers",
                    str(args.workers),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            wait_healthy(base, server, log_path)
            # Idle: up and answering, before any annotator signs in.
            rss_idle, _ = server_usage(server.pid)
            cpu_at_start: list[float] = []

            def clock_starts() -> None:
                # After the sign-ins: their argon2 checks are not the hot path's CPU.
                cpu_at_start[:] = [
                    time.process_time(),
                    server_usage(server.pid)[1],
                    machine_busy_seconds(),
                ]

            rec, elapsed = asyncio.run(run_load(args, base, pid, clock_starts))
            client_cpu = time.process_time() - cpu_at_start[0]
            machine_cpu = machine_busy_seconds() - cpu_at_start[2]
            rss_after, server_cpu = server_usage(server.pid)
            server_cpu -= cpu_at_start[1]
        finally:
            server.terminate()
            server.wait(30)
        server_log = log_path.read_text(errors="replace")
    if args.out:
        args.out.with_suffix(".server.log").write_text(server_log)

    checks = check_database(args.database_url, pid, rec)
    held_by_many = sum(1 for who in rec.leased_by.values() if len(who) > 1)
    figures: dict[str, Any] = {
        "database": make_url(args.database_url).get_backend_name(),
        "workers": args.workers,
        "client": args.client,
        "load_average_at_start": load_at_start,
        "cpus": os.cpu_count(),
        "server_rss_mib": {"idle": rss_idle, "after": rss_after},
        # Cores kept busy over the run: the client shares the machine with the server.
        "cpu_cores_used": {
            "client": round(client_cpu / elapsed, 2),
            # The database and everything else on the machine: all busy time less the two.
            "database_and_rest": round((machine_cpu - client_cpu - server_cpu) / elapsed, 2),
            "server": round(server_cpu / elapsed, 2),
        },
        # Server CPU per stored label (its queue/next share included): a figure that holds
        # up better than latency on a machine others load too.
        "server_cpu_ms_per_label": round(1000 * server_cpu / max(1, len(rec.created)), 2),
        "annotators": args.annotators,
        "pool": args.pool,
        "batch": batch,
        "duration_s": round(elapsed, 2),
        "labels_per_s": round(len(rec.created) / elapsed, 1),
        "queue_next_ms": {
            "p50": percentile(rec.next_ms, 50),
            "p99": percentile(rec.next_ms, 99),
            "count": len(rec.next_ms),
        },
        "label_ms": {
            "p50": percentile(rec.label_ms, 50),
            "p99": percentile(rec.label_ms, 99),
            "count": len(rec.label_ms),
        },
        "statuses": dict(sorted(rec.statuses.items())),
        "errors": {k: v for k, v in rec.statuses.items() if not k.endswith((" 200", " 201"))},
        "database_is_locked_in_log": server_log.count("database is locked"),
        "annotators_out_of_work": rec.done,
        "items_held_by_two_at_once": overlaps(rec),
        "items_leased_to_two_annotators": held_by_many,
        **checks,
    }
    ok = (
        not figures["errors"]
        and figures["database_is_locked_in_log"] == 0
        and figures["items_held_by_two_at_once"] == 0
        and checks["created_missing_in_db"] == 0
        and checks["labels_in_db_not_answered_201"] == 0
        and checks["items_labelled_twice"] == 0
    )
    figures["ok"] = ok
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
