"""What every import job shares, images or texts: its tally, its batches and their commit.

A run reads its upload as positions (files, archive entries, text records), gathers them in
batches and commits each batch together with a checkpoint in the job's row, so a re-run after a
crash resumes where the last batch ended and counts exactly what a single run would have counted.
``importer.ImportRun`` reads images, ``text_import.TextImportRun`` texts; each says how its
accepted items are inserted.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from app.db import unit_of_work
from app.items.models import Split
from app.jobs.models import Job
from app.jobs.runtime import JobContext

# An import that added at least this many items refreshes PostgreSQL's statistics of the items
# table at its end. Measured: after 1,000,000 texts went in, autovacuum had not yet analysed the
# table, the planner still expected ~900 rows of the project, and a page of 500 items took 4-5 s
# (a bitmap scan of every row, then a sort); after ANALYZE (1.2 s, once) it takes 0.3 ms.
ANALYZE_AFTER_ROWS = 10_000
# Progress is written at most this often (fraction of the work), besides once per batch.
PROGRESS_STEP = 0.02
# The result lists this many rejected files by name; the count covers them all.
MAX_REJECTED_LISTED = 1000


@dataclass
class Tally:
    """What the import has done so far; stored in the job's row as the checkpoint and result."""

    total: int = 0
    processed: int = 0
    added: int = 0
    duplicates: int = 0
    labeled: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, name: str, reason: str) -> None:
        """Count a refused file, and list it while the list is short enough to read."""
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_LISTED:
            # A NUL (an archive entry's name) cannot be stored in the result's JSON.
            self.rejected.append({"name": name.replace("\x00", "\ufffd"), "reason": reason})

    def as_result(self) -> dict[str, Any]:
        """The job's result: the contract's ``{added, duplicates, rejected}`` and counts."""
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "rejected": list(self.rejected),
            "rejected_count": self.rejected_count,
            "labeled": self.labeled,
            "processed": self.processed,
            "total": self.total,
        }

    @classmethod
    def from_result(cls, result: dict[str, Any] | None) -> Tally:
        """Resume from a checkpoint (an empty tally when there is none)."""
        if not result:
            return cls()
        return cls(
            total=int(result.get("total", 0)),
            processed=int(result.get("processed", 0)),
            added=int(result.get("added", 0)),
            duplicates=int(result.get("duplicates", 0)),
            labeled=int(result.get("labeled", 0)),
            rejected=list(result.get("rejected", [])),
            rejected_count=int(result.get("rejected_count", 0)),
        )


@dataclass
class Batch:
    """Entries up to ``upto`` (a position in the upload) and what they came to, uncommitted."""

    accepted: list[Any] = field(default_factory=list)  # what the run's _insert writes
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    upto: int = 0
    entries: int = 0
    bytes: int = 0


class ImportBase:
    """One run of an import job, from its checkpoint to the end; a subclass reads and inserts."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        project_id: int,
        classes: set[str],
        uploader: int | None,
        tally: Tally,
    ) -> None:
        self.ctx = ctx
        self.project_id = project_id
        self.classes = classes
        self.uploader = uploader
        self.tally = tally
        self.split = Split(ctx.params.get("split", Split.pool))
        self.from_folders = bool(ctx.params.get("labels_from_folders", False))
        self.reported = -1.0
        self.prepare()

    def prepare(self) -> None:
        """Set up what this kind of run reads with (called once, at the end of ``__init__``)."""

    def _insert(self, db: Session, accepted: list[Any]) -> tuple[int, int]:
        """Insert a batch's new items (and their labels): (items added, labels added)."""
        raise NotImplementedError

    def _commit(self, batch: Batch, written: Future[None] | None) -> None:
        """Commit a batch with the checkpoint, once its files (if any) are ``written``."""
        if written is not None:
            written.result()  # re-raises a failed write: better no job than an item without file
        tally = self.tally
        with unit_of_work() as db:
            added, labeled = self._insert(db, batch.accepted)
            # Not added: already in the project (an earlier upload, or a concurrent one).
            tally.duplicates += batch.duplicates + len(batch.accepted) - added
            tally.added += added
            tally.labeled += labeled
            for name, reason in batch.rejected:
                tally.reject(name, reason)
            tally.processed = batch.upto
            # The checkpoint commits with the rows it describes: a re-run resumes exactly here.
            db.execute(
                update(Job).where(Job.id == self.ctx.job_id).values(result=tally.as_result())
            )
        fraction = tally.processed / tally.total if tally.total else 1.0
        if fraction - self.reported >= PROGRESS_STEP or fraction >= 1.0:
            self.ctx.progress("importing", fraction)  # also where a cancel request stops it
            self.reported = fraction


def refresh_statistics(*, added: int) -> None:
    """After a large import on PostgreSQL, ANALYZE the items table so that the next page, queue
    or round query is planned for the rows it now holds (SQLite keeps no such statistics)."""
    if added < ANALYZE_AFTER_ROWS:
        return
    with unit_of_work() as db:
        if db.get_bind().dialect.name == "postgresql":
            db.execute(text("ANALYZE items"))
