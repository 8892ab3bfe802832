"""The round runner's pool reading at scale: seconds and peak memory of ``read_pool`` and of the
content keys it hands to the embedding store, on a project of ``--n`` items.

The project is made once (items inserted by one ``INSERT ... SELECT`` on PostgreSQL, in
batches on SQLite) with ``--labelled`` labelled pool items and ``--test`` labelled test items;
each measurement then runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own:

    createdb -h 127.0.0.1 -U postgres h_scale_pool
    flock /tmp/bench.lock python bench/read_pool_scale.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/h_scale_pool --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
# Rows per INSERT on SQLite.
SQLITE_CHUNK = 20_000


def project_name(n: int, labelled: int, test: int) -> str:
    """The bench project's name: one project per shape, reused across runs."""
    return f"read-pool-{n}-{labelled}-{test}"


def ensure_project(url: str, n: int, labelled: int, test: int) -> int:
    """The id of the bench's project of this shape, made (with its items) if missing."""
    from sqlalchemy import create_engine, text

    from app.migrate import upgrade

    upgrade(url)
    engine = create_engine(url)
    name = project_name(n, labelled, test)
    with engine.begin() as conn:
        found = conn.execute(text("SELECT id FROM projects WHERE name = :n"), {"n": name}).scalar()
        if found is not None:
            return int(found)
        pid = conn.execute(
            text(
                "INSERT INTO projects (name, description, kind, classes, settings, created_at) "
                "VALUES (:n, '', 'image', :c, '{}', CURRENT_TIMESTAMP) RETURNING id"
            ),
            {"n": name, "c": json.dumps(CLASSES)},
        ).scalar_one()
        # Item i: pool and unlabelled, except the first `labelled` (labelled pool items) and
        # the last `test` (labelled test items); hashes are 64 hex characters like sha256's.
        label = "CASE WHEN i <= :lab OR i > :n - :test THEN 'c' || (i % 10) ELSE NULL END"
        split = "CASE WHEN i > :n - :test THEN 'test' ELSE 'pool' END"
        params = {"pid": pid, "lab": labelled, "n": n, "test": test}
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "INSERT INTO items (project_id, content_hash, name, media_type, split, "  # noqa: S608 - this file's own fragments
                    "label, created_at) SELECT :pid, lpad(to_hex(i), 64, '0'), "
                    f"'img_' || i || '.png', 'image/png', {split}, {label}, now() "
                    "FROM generate_series(1, :n) AS i"
                ),
                params,
            )
        else:
            for start in range(1, n + 1, SQLITE_CHUNK):
                end = min(n, start + SQLITE_CHUNK - 1)
                conn.execute(
                    text(
                        "WITH RECURSIVE s(i) AS (SELECT :a UNION ALL SELECT i + 1 FROM s "  # noqa: S608 - as above
                        "WHERE i < :b) INSERT INTO items (project_id, content_hash, name, "
                        "media_type, split, label, created_at) SELECT :pid, "
                        "printf('%064x', i), 'img_' || i || '.png', 'image/png', "
                        f"{split}, {label}, CURRENT_TIMESTAMP FROM s"
                    ),
                    {**params, "a": start, "b": end},
                )
    engine.dispose()
    return int(pid)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(project_id: int) -> dict[str, Any]:
    """In this fresh process: read the pool as a round does, then its keys; time and memory."""
    from worker.inputs import read_pool

    before = peak_rss_mib()
    start = time.perf_counter()
    pool = read_pool(project_id, candidates=True)
    read_s = time.perf_counter() - start
    after_read = peak_rss_mib()
    start = time.perf_counter()
    keys = pool.keys()
    keys_s = time.perf_counter() - start
    return {
        "candidates": len(pool.candidates),
        "labeled": len(pool.labeled),
        "test": len(pool.test),
        "keys": len(keys),
        "read_s": round(read_s, 2),
        "keys_s": round(keys_s, 2),
        "rss_before_mib": round(before),
        "peak_after_read_mib": round(after_read),
        "peak_after_keys_mib": round(peak_rss_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    start = time.perf_counter()
    pid = ensure_project(args.database_url, args.n, args.labelled, args.test)
    print(f"# project {pid} with {args.n} items ready in {time.perf_counter() - start:.1f} s")
    env = {**os.environ, "SVP_DATABASE_URL": args.database_url}
    for _ in range(args.repeat):
        done = subprocess.run(
            [sys.executable, __file__, "--database-url", args.database_url, "--child", str(pid)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
