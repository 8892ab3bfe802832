"""project counters: item counts kept by triggers, and an index in id order for every page filter

A project's counts (items, labelled, unlabelled) and its class counts were a COUNT over its
items on every read: 64-117 ms and 121-217 ms (p50) at 1M items on PostgreSQL, growing with the
pool. They are now read from ``item_counts``: per project, split, current label and shard, how
many items (``label`` '' counts every item of the split). Triggers on ``items`` keep it in the
transaction of every write of an item, whoever writes it (an import, a label, an undo, a
delete, a test's factory): on PostgreSQL per statement (one grouped upsert for a 1,000-row
import batch), on SQLite per row. A label changes one or two rows of one shard (``id % 16``),
so concurrent labels of one class rarely wait on each other (with one row per class, 50
annotators labelled 277/s against 443-598/s).

Item pages (and the export) get an index in id order for each filter (all items, labelled,
unlabelled, each within a split or not), so a page never walks the primary key through a bigger
project's items, nor through the items its filter passes over (a first page of the labelled test
split's unlabelled items read 50,000 rows to find none: 60-85 ms at 1M). The partial
ix_items_project_unlabeled_id replaces ix_items_project_label_id.

Rebuilding ``items`` on SQLite (batch mode's copy-and-rename) drops its triggers: a later
migration that does must create them again (``create_triggers`` here);
tests/test_counters.py fails at head when they are missing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 22:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The shard of an item's counts (app.projects.models.COUNT_SHARDS).
SHARDS = 16

# PostgreSQL: one statement-level trigger per operation, reading its transition tables. The
# keys of a set of rows: each row counts under '' (every item of its split) and under its label.
_KEYS = """SELECT r.project_id, r.split, k.label, r.id % {shards} AS shard, {sign} AS n
    FROM {rows} r CROSS JOIN LATERAL (VALUES (''), (r.label)) AS k(label)
    WHERE k.label IS NOT NULL"""
# Upserted in key order: two transactions touching the same rows lock them in the same order.
_UPSERT = """INSERT INTO item_counts AS c (project_id, split, label, shard, n)
        SELECT project_id, split, label, shard, sum(n) FROM ({deltas}) AS d
        GROUP BY project_id, split, label, shard HAVING sum(n) <> 0
        ORDER BY project_id, split, label, shard
        ON CONFLICT (project_id, split, label, shard) DO UPDATE SET n = c.n + excluded.n"""
_PG_FUNCTIONS = {
    "item_counts_insert": _UPSERT.format(deltas=_KEYS.format(shards=SHARDS, sign=1, rows="added")),
    "item_counts_update": _UPSERT.format(
        deltas=_KEYS.format(shards=SHARDS, sign=1, rows="added")
        + " UNION ALL "
        + _KEYS.format(shards=SHARDS, sign=-1, rows="removed")
    ),
    # A delete only lowers rows its items were counted in (and never inserts one: a project
    # being deleted cascades to its counts too).
    "item_counts_delete": f"""UPDATE item_counts AS c SET n = c.n - d.n FROM (
            SELECT project_id, split, label, shard, count(*) AS n
            FROM ({_KEYS.format(shards=SHARDS, sign=1, rows="removed")}) AS k
            GROUP BY project_id, split, label, shard) AS d
        WHERE c.project_id = d.project_id AND c.split = d.split AND c.label = d.label
          AND c.shard = d.shard""",  # noqa: S608 - constants of this file
}
_PG_TRIGGERS = {
    "item_counts_insert": "AFTER INSERT ON items REFERENCING NEW TABLE AS added",
    "item_counts_update": (
        "AFTER UPDATE ON items REFERENCING OLD TABLE AS removed NEW TABLE AS added"
    ),
    "item_counts_delete": "AFTER DELETE ON items REFERENCING OLD TABLE AS removed",
}

# SQLite: row triggers (no transition tables); writers are serialised, so no lock order. A
# label (the hot path) touches its label's rows only, never the split's total.
_BOTH = "SELECT '' AS label UNION ALL SELECT {row}.label"
_LABEL = "SELECT {row}.label AS label"
_SQLITE_ADD = """INSERT INTO item_counts (project_id, split, label, shard, n)
        SELECT {row}.project_id, {row}.split, k.label, {row}.id % {shards}, 1
        FROM ({keys}) AS k WHERE k.label IS NOT NULL
        ON CONFLICT (project_id, split, label, shard) DO UPDATE SET n = n + 1;"""
_SQLITE_REMOVE = """UPDATE item_counts SET n = n - 1
        WHERE project_id = {row}.project_id AND split = {row}.split
          AND shard = {row}.id % {shards} AND {which};"""


def _sqlite_add(row: str, keys: str) -> str:
    return _SQLITE_ADD.format(row=row, shards=SHARDS, keys=keys.format(row=row))


def _sqlite_remove(row: str, *, total: bool) -> str:
    which = f"label = {row}.label"
    return _SQLITE_REMOVE.format(
        row=row, shards=SHARDS, which=f"(label = '' OR {which})" if total else which
    )


_SQLITE_TRIGGERS = {
    "item_counts_insert": ("AFTER INSERT ON items", _sqlite_add("new", _BOTH)),
    "item_counts_relabel": (
        "AFTER UPDATE OF label ON items WHEN old.label IS NOT new.label "
        "AND old.split = new.split AND old.project_id = new.project_id",
        _sqlite_remove("old", total=False) + _sqlite_add("new", _LABEL),
    ),
    "item_counts_move": (
        "AFTER UPDATE OF project_id, split ON items "
        "WHEN old.split <> new.split OR old.project_id <> new.project_id",
        _sqlite_remove("old", total=True) + _sqlite_add("new", _BOTH),
    ),
    "item_counts_delete": ("AFTER DELETE ON items", _sqlite_remove("old", total=True)),
}

# The counts of the items already there.
_BACKFILL = f"""INSERT INTO item_counts (project_id, split, label, shard, n)
    SELECT project_id, split, label, shard, count(*) FROM (
        SELECT project_id, split, '' AS label, id % {SHARDS} AS shard FROM items
        UNION ALL
        SELECT project_id, split, label, id % {SHARDS} FROM items WHERE label IS NOT NULL
    ) AS k GROUP BY project_id, split, label, shard"""  # noqa: S608 - constants of this file


def create_triggers() -> None:
    """The triggers that keep ``item_counts``, on this database's dialect."""
    if op.get_bind().dialect.name == "postgresql":
        for name, body in _PG_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body}; RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER {name} {_PG_TRIGGERS[name]} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
            )
        return
    for name, (when, body) in _SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} BEGIN {body} END")


def drop_triggers() -> None:
    """Drop what ``create_triggers`` made."""
    if op.get_bind().dialect.name == "postgresql":
        for name in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON items")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
        return
    for name in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


# The new indexes of items: (name, columns, the rows it holds or None for all). They replace
# ix_items_project_label_id, whose one use in order (label IS NULL) ix_items_project_unlabeled_id
# serves with the unlabelled items alone.
_INDEXES = (
    ("ix_items_project_id", ["project_id", "id"], None),
    ("ix_items_project_labeled_id", ["project_id", "id"], "label IS NOT NULL"),
    ("ix_items_project_unlabeled_id", ["project_id", "id"], "label IS NULL"),
    ("ix_items_project_split_labeled_id", ["project_id", "split", "id"], "label IS NOT NULL"),
    ("ix_items_project_split_unlabeled_id", ["project_id", "split", "id"], "label IS NULL"),
)


def upgrade() -> None:
    op.create_table(
        "item_counts",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", "split", "label", "shard"),
    )
    for name, columns, where in _INDEXES:
        rows = {} if where is None else {"postgresql_where": sa.text(where)}
        if where is not None:
            rows["sqlite_where"] = sa.text(where)
        op.create_index(name, "items", columns, unique=False, **rows)
    op.drop_index("ix_items_project_label_id", table_name="items")
    # In the same transaction as the triggers (PostgreSQL's DDL is transactional, and SQLite
    # writers are serialised): no item written meanwhile goes uncounted.
    op.execute(_BACKFILL)
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.create_index(
        "ix_items_project_label_id", "items", ["project_id", "label", "id"], unique=False
    )
    for name, _, _ in reversed(_INDEXES):
        op.drop_index(name, table_name="items")
    op.drop_table("item_counts")
