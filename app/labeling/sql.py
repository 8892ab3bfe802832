"""Every statement of the labelling hot path, and the row each one reads.

``queue/next`` and ``POST /api/labels`` run these thousands of times a minute on the driver's
cursor (``app.rawsql``: about half of SQLAlchemy's cost per statement). Each is a constant
string with ``:name`` parameters, composed once at import from the facts it shares with the ORM
paths (``app.rounds.sql``: a round's batch; ``current_label`` below); each row is read into the
NamedTuple beside it, by column name. Enum values are bound (``PARAMS``), never written in.

This module also holds every statement that writes ``items.label`` or ``selections.labeled``:
the two columns that say an item is labelled are kept in step here and nowhere else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from app.labeling.models import LabelSource
from app.rounds import sql as rounds_sql

# Bound by every statement here (plain str: psycopg would send an Enum's name).
PARAMS: dict[str, Any] = {**rounds_sql.STATUS, "human": LabelSource.human.value}


def current_label(item: str, column: str) -> str:
    """A column of the item's current label: its newest label not undone (NULL for none).

    ix_labels_item_id_id serves it: one index probe from the newest label back.
    """
    return f"""(SELECT c.{column} FROM labels c WHERE c.item_id = {item} AND c.undone_at IS NULL
        ORDER BY c.id DESC LIMIT 1)"""  # noqa: S608 - fragments of this code, never input


# The caller's membership in a project: NULL role for a non-member (admins are members of every
# project: ``app.projects.service.effective_role`` decides, from this role and the user's).
_MEMBER = "LEFT JOIN members m ON m.project_id = {project} AND m.user_id = :user_id"

# ---- queue/next ----


class QueueContext(NamedTuple):
    """The project's settings, the caller's membership role and the batch to lease from."""

    commit_mode: Any  # PostgreSQL: set_config's answer; SQLite: a placeholder
    settings: Any  # JSON, parsed by ``app.rawsql.read_json``
    role: str | None
    round_id: int | None


# PostgreSQL's first column sets the transaction's commit mode: a lease is soft state, so its
# commit need not wait for the WAL to reach the disk (this transaction only, in the same round
# trip). A crash may forget the last few milliseconds of leases; their items go back to the
# queue, and a label still checks who holds its item. Labels keep synchronous commit: a 201 is
# on disk.
_QUEUE_CONTEXT = f"""
    SELECT {{first}} AS commit_mode, p.settings, m.role,
        {rounds_sql.newest_labelling_round("p.id")} AS round_id
    FROM projects p {_MEMBER.format(project="p.id")}
    WHERE p.id = :project_id"""  # noqa: S608 - fragments of this code, never input
QUEUE_CONTEXT = {
    True: _QUEUE_CONTEXT.format(first="set_config('synchronous_commit', 'off', true)"),
    False: _QUEUE_CONTEXT.format(first="NULL"),
}


class Candidate(NamedTuple):
    """A batch entry the caller may lease; ``fresh``: not a lease of theirs already; ``won``:
    whether its lease was won (PostgreSQL leases in the same statement; SQLite's candidates
    come back with NULL, and its upsert says which it won)."""

    item_id: int
    name: str
    rank: int
    score: float
    suggested_label: str | None
    suggested_prob: float | None
    text: str | None  # a text item's whole text (DESIGN 4c); null for an image
    text_chars: int | None
    fresh: int
    won: bool | None


class ItemId(NamedTuple):
    """One item's id."""

    item_id: int


# The batch entries a caller may lease, in two parts. Their live leases on unlabelled items of
# the round come back first (a reload loses nothing); then open items nobody holds: no lease,
# one from an older round, or one that ran out (its holder's included: a solo annotator who let
# a lease run out gets the item back), except that a caller's own skip stays out of their own
# queue for a lease period, so a skipped item is not handed straight back. A skip is a lease
# that ended where it began (``app.labeling.service.skip``); a lease that ran out always
# ended after it began. The open part walks ix_selections_round_labeled_rank in rank
# order and stops after :n hits, so it reads about n plus the items others hold right now,
# whatever the pool or batch size ("labeled, rank" pins that index: with the unique
# (round_id, rank) index the planner would filter its way past every labelled item).
_ENTRY = (
    "s.item_id, i.name, s.rank, s.score, s.suggested_label, s.suggested_prob, i.text, i.text_chars"
)
_OWN = f"""
    SELECT {_ENTRY}, 0 AS fresh FROM leases l
    JOIN selections s ON s.item_id = l.item_id AND s.round_id = :round_id
    JOIN items i ON i.id = s.item_id
    WHERE l.round_id = :round_id AND l.user_id = :user_id AND l.expires_at >= :now
      AND i.label IS NULL AND s.item_id NOT IN (SELECT item_id FROM tried)
    ORDER BY s.rank LIMIT :n"""  # noqa: S608 - constants of this module, never input
_OPEN = f"""
    SELECT {_ENTRY}, 1 AS fresh FROM selections s
    JOIN items i ON i.id = s.item_id
    LEFT JOIN leases l ON l.item_id = s.item_id
    WHERE s.round_id = :round_id AND s.labeled = false AND i.label IS NULL
      AND (l.id IS NULL OR l.round_id <> :round_id
           OR (l.expires_at < :now AND (l.user_id <> :user_id OR l.expires_at < :grace
                                        OR l.created_at < l.expires_at)))
      AND s.item_id NOT IN (SELECT item_id FROM tried)
    ORDER BY s.labeled, s.rank LIMIT :n"""  # noqa: S608 - constants of this module, never input
# Insert or take over leases; the unique leases.item_id decides a race atomically: on
# PostgreSQL a second writer waits for the first, re-checks the WHERE on the committed row and
# gets nothing back, instead of an IntegrityError that would abort the transaction. Renewing
# one's own lease and taking over an expired one are the same statement; a renewal keeps when
# the holder first took the item, a takeover starts afresh.
_UPSERT = """
    INSERT INTO leases (item_id, round_id, user_id, expires_at, created_at)
    SELECT item_id, :round_id, :user_id, :until, :now FROM cand WHERE true
    ON CONFLICT (item_id) DO UPDATE SET
        round_id = excluded.round_id,
        expires_at = excluded.expires_at,
        created_at = CASE WHEN leases.user_id = excluded.user_id
                          THEN leases.created_at ELSE excluded.created_at END,
        user_id = excluded.user_id
    WHERE leases.user_id = :user_id OR leases.expires_at < :now OR leases.round_id <> :round_id
    RETURNING item_id"""
# PostgreSQL: choose and lease in one round trip. The open items' selection rows are locked
# with SKIP LOCKED, so a concurrent caller passes over them instead of waiting or taking the
# same ones; every candidate comes back, flagged with whether its lease was won.
LEASE_PG = f"""
    WITH tried(item_id) AS (SELECT unnest(CAST(:tried AS integer[]))),
    own AS ({_OWN}),
    open_items AS ({_OPEN} FOR UPDATE OF s SKIP LOCKED),
    cand AS (
        SELECT * FROM (SELECT * FROM own UNION ALL SELECT * FROM open_items) AS c
        ORDER BY fresh, rank LIMIT :n
    ),
    won AS ({_UPSERT})
    SELECT cand.*, cand.item_id IN (SELECT item_id FROM won) AS won FROM cand
    """  # noqa: S608 - constants of this module, never input
# SQLite: writers are serialised (BEGIN IMMEDIATE), so nothing wins a race between this read
# and the upsert below, and no row locks exist to take.
CANDIDATES_SQLITE = f"""
    WITH tried(item_id) AS (SELECT value FROM json_each(:tried))
    SELECT *, NULL AS won FROM (SELECT * FROM ({_OWN}) UNION ALL SELECT * FROM ({_OPEN}))
    ORDER BY fresh, rank LIMIT :n
    """  # noqa: S608 - constants of this module, never input
# RETURNING needs SQLite 3.35.
UPSERT_SQLITE = "WITH cand(item_id) AS (SELECT value FROM json_each(:ids)) " + _UPSERT  # noqa: S608


# An empty queue: is the round's batch done? (Then its completion, which never ran, runs now.)
FIRST_OPEN = rounds_sql.first_open(":round_id")

# ---- labels ----


class LabelContext(NamedTuple):
    """What deciding on a label needs, read in one statement."""

    project_id: int
    split: str
    classes: Any  # JSON list of class names
    settings: Any  # JSON
    role: str | None  # the caller's membership role; None when not a member
    held_by_other: bool  # another user holds a live lease on the item
    in_open_batch: bool  # a batch being labelled in the item's project holds it
    labelled_by_other: bool  # the item's current label was given by another user
    replay: bool  # a label is stored under this key already


# The item with its project, the caller's membership and the facts the annotator rules read,
# in one round trip. On PostgreSQL the item's row is locked here: it orders a label and an undo
# of the same item, and every later statement of this transaction sees what committed before
# the lock was granted (see ``SETTLE``).
_LABEL_CONTEXT = f"""
    SELECT i.project_id, i.split, p.classes, p.settings, m.role,
        EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id AND l.user_id <> :user_id
                AND l.expires_at >= :now) AS held_by_other,
        {rounds_sql.in_open_batch("i.id", "i.project_id")} AS in_open_batch,
        (i.label IS NOT NULL
         AND {current_label("i.id", "user_id")} <> :user_id) AS labelled_by_other,
        EXISTS (SELECT 1 FROM labels k WHERE k.key = :key) AS replay
    FROM items i JOIN projects p ON p.id = i.project_id
    {_MEMBER.format(project="i.project_id")}
    WHERE i.id = :item_id"""  # noqa: S608 - constants of this module, never input
LABEL_CONTEXT = {True: _LABEL_CONTEXT + " FOR UPDATE OF i", False: _LABEL_CONTEXT}


class Stored(NamedTuple):
    """A label's write: its id (None when a replay won the key meanwhile), and the rounds in
    labelling whose batch it marked and in which no untouched open item is left."""

    label_id: int | None
    round_ids: list[int]


# A new label and all it settles, in one statement on PostgreSQL: the label itself (a replay
# that won the unique key meanwhile leaves nothing inserted, and so nothing else written), the
# item's current label (the new label is its newest: the item's row lock, taken by the context
# read, orders labels and undos of one item), the batches that held it marked done, and every
# lease on it ended (whoever held it: an engineer may label over one). The sub-statements run
# in this order, each gated on the one before (a one-time filter on its output), because a
# concurrent queue/next locks selection rows before the lease row: the same order here cannot
# deadlock with it.
#
# The lateral probe (``untouched``) looks for an open item of the batch, other than this
# label's (the statement's snapshot still sees it open), that no transaction is touching right
# now. Rows locked by another label (or lease) in flight are skipped, so two annotators
# labelling the last two items at once both find nothing, and both ask for the round's
# completion after their commit (``app.rounds.service.complete_round``, exact); an item found
# is one somebody labels later, and that label will see this one committed (or locked, and
# skip it). A row labelled and committed since the snapshot is re-read as committed when
# locked, and drops out. FOR SHARE keeps the row found open until this commits. No round lock
# is taken: one per label serialised every label of a round on its row (about 265 labels/s at
# most with 50 annotators on 2 cores, against 369 without).
_INSERT_LABEL = """INSERT INTO labels (item_id, project_id, user_id, label, source, key, created_at)
    VALUES (:item_id, :project_id, :user_id, :label, :human, :key, :now)
    ON CONFLICT (key) DO NOTHING RETURNING id"""
STORE_LABEL_PG = f"""
    WITH ins AS ({_INSERT_LABEL}), settle AS (
        UPDATE items SET label = :label
        WHERE id = :item_id AND EXISTS (SELECT 1 FROM ins) RETURNING id
    ), mark AS (
        UPDATE selections SET labeled = true
        WHERE item_id = :item_id AND labeled = false AND EXISTS (SELECT 1 FROM settle)
        RETURNING round_id
    ), released AS (
        DELETE FROM leases
        WHERE item_id = :item_id AND (SELECT count(*) FROM mark) >= 0
          AND EXISTS (SELECT 1 FROM ins)
        RETURNING item_id
    )
    SELECT (SELECT id FROM ins) AS label_id,
        ARRAY(SELECT r.id FROM rounds r
              LEFT JOIN LATERAL (
                  {rounds_sql.first_open("r.id", besides=":item_id")} FOR SHARE OF s SKIP LOCKED
              ) AS untouched ON true
              WHERE r.id IN (SELECT round_id FROM mark) AND r.status = :labeling_status
                AND (SELECT count(*) FROM released) >= 0 AND untouched.id IS NULL
        ) AS round_ids"""  # noqa: S608 - constants of this module, never input


class LabelId(NamedTuple):
    """A label's id."""

    id: int


class RoundId(NamedTuple):
    """A round's id."""

    round_id: int


# SQLite serialises writers (BEGIN IMMEDIATE), so the same steps as plain statements, and a
# plain probe is exact.
INSERT_LABEL_SQLITE = _INSERT_LABEL
SET_LABEL_SQLITE = "UPDATE items SET label = :label WHERE id = :item_id"
MARK_SQLITE = """UPDATE selections SET labeled = true WHERE item_id = :item_id AND labeled = false
    RETURNING round_id"""
RELEASE_SQLITE = "DELETE FROM leases WHERE item_id = :item_id"
DONE_SQLITE = f"""SELECT r.id AS round_id FROM rounds r
    WHERE r.id = :round_id AND r.status = :labeling_status
      AND NOT EXISTS ({rounds_sql.first_open("r.id")})"""  # noqa: S608 - constants


class Settled(NamedTuple):
    """The item's current label after a settle."""

    label: str | None


# After an undo (or labels written by hand, as a test's factory does): the item's label is its
# newest live one again, and its selection rows say whether it has one. The caller holds the
# item's row lock (PostgreSQL; SQLite's write transaction already serialises), taken before it
# wrote: that orders a label and an undo of the same item. Without it, an undo that read the
# labels just before a new label committed wrote its stale answer over the new label's (the
# browser test's undo-then-relabel lost its label this way, on PostgreSQL). These statements
# start after the lock was granted, so on READ COMMITTED they see every label or undo that held
# the lock before.
SETTLE = f"""UPDATE items SET label = {current_label(":item_id", "label")}
    WHERE id = :item_id RETURNING label"""  # noqa: S608 - constants of this module, never input
SETTLE_SELECTIONS = """UPDATE selections SET labeled = :labeled
    WHERE item_id = :item_id AND labeled <> :labeled"""
# A batch just written: its items labelled meanwhile (while the proxy trained) are marked, or
# the batch would wait for labels that will never come.
MARK_BATCH = """UPDATE selections SET labeled = true WHERE round_id = :round_id
    AND item_id IN (SELECT id FROM items WHERE label IS NOT NULL)"""
