"""What the item counters' triggers cost an import: N short texts through the importer's
statement (``app.items.text_import.insert_texts``, 1,000 a transaction, one in ten labelled)
into a fresh database migrated to a given revision: ``0005`` (no counters, the old indexes) or
``head`` (the triggers of migration 0006 and its indexes). Prints the seconds.

    flock /tmp/bench.lock python bench/import_counters_cost.py \\
        postgresql+psycopg://postgres@127.0.0.1:5432/h_hot_import 0005 200000
    flock /tmp/bench.lock python bench/import_counters_cost.py sqlite:////tmp/hot.sqlite3 head

The database named is dropped and made again: give it one of your own.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.items.text_import import AcceptedText, insert_texts  # noqa: E402
from app.migrate import alembic_config  # noqa: E402

BATCH = 1000


def fresh(url: str, revision: str) -> None:
    """Drop and make the database again, migrated to ``revision``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").unlink(missing_ok=True)
    else:
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
    command.upgrade(alembic_config(url), revision)


def texts(start: int, stop: int) -> list[AcceptedText]:
    """Short texts, one in ten labelled, as a CSV import reads them."""
    return [
        AcceptedText(
            name=f"r{i}",
            content_hash=hashlib.sha256(str(i).encode()).hexdigest(),
            text=f"the battery of item {i} lasts long and the screen is bright",
            label=("pos" if i % 20 == 0 else "neg") if i % 10 == 0 else None,
        )
        for i in range(start, stop)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("revision", help="0005 (before the counters) or head")
    parser.add_argument("n", type=int, nargs="?", default=200_000)
    args = parser.parse_args()
    fresh(args.database_url, args.revision)
    engine = create_engine(args.database_url)
    with engine.begin() as conn:
        project_id = conn.execute(
            text(
                "INSERT INTO projects (name, description, kind, classes, settings, created_at) "
                "VALUES ('t', '', 'text', '[\"pos\", \"neg\"]', '{}', '2026-01-01') RETURNING id"
            )
        ).scalar_one()
    started = time.perf_counter()
    for start in range(0, args.n, BATCH):
        with Session(engine) as db, db.begin():
            batch = texts(start, min(args.n, start + BATCH))
            insert_texts(db, batch, project_id=project_id, split="pool", uploader=None)
    seconds = time.perf_counter() - started
    engine.dispose()
    backend = make_url(args.database_url).get_backend_name()
    print(f"{backend} at {args.revision}: {args.n} texts in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
