"""What a round's batch is, in SQL: each fact written once, for the raw hot path and the ORM.

The labelling hot path (``app.labeling.sql``) composes these into its driver-level statements;
``app.rounds.service`` runs the same text through SQLAlchemy. A fragment names its tables
``s`` (selections) and ``r`` (rounds) and takes the outer query's columns as arguments, so it
can be correlated with whatever the caller reads. Statuses are bound, never written in: every
statement that uses a fragment passes ``STATUS`` among its parameters.
"""

from __future__ import annotations

from typing import NamedTuple

from app.rounds.models import RoundStatus

# The parameters every fragment below needs (a plain str: psycopg would send an Enum's name).
STATUS = {"labeling_status": RoundStatus.labeling.value}


def in_open_batch(item: str, project: str) -> str:
    """True when the item is in the batch of a round of ``project`` that is being labelled.

    An open batch's items are not candidates of a new round, and are what annotators label.
    """
    return f"""EXISTS (SELECT 1 FROM selections s JOIN rounds r ON r.id = s.round_id
        WHERE s.item_id = {item} AND r.project_id = {project}
          AND r.status = :labeling_status)"""  # noqa: S608 - fragments of this code, never input


def newest_labelling_round(project: str) -> str:
    """The id of the project's newest round in labelling (its queue's batch), or NULL."""
    return f"""(SELECT r.id FROM rounds r
        WHERE r.project_id = {project} AND r.status = :labeling_status
        ORDER BY r.number DESC LIMIT 1)"""  # noqa: S608 - fragments of this code, never input


class OpenItem(NamedTuple):
    """The selection row ``first_open`` finds."""

    id: int


def first_open(round_: str, *, besides: str | None = None) -> str:
    """The first open item of a round's batch in rank order: none when the batch is done.

    ``besides``: an item to pass over (a label's own, which its statement still sees open).
    The order pins the plan to ix_selections_round_labeled_rank, one index probe: a sequential
    scan "finds" an open row at once in a fresh batch but walks the whole batch when it is
    nearly done, and as NOT EXISTS the planner chose an anti-join over exactly that scan.
    """
    passed = f" AND s.item_id <> {besides}" if besides else ""
    return f"""SELECT s.id FROM selections s WHERE s.round_id = {round_}
        AND s.labeled = false{passed} ORDER BY s.labeled, s.rank LIMIT 1"""  # noqa: S608 - fragments of this code, never input
