"""The import job of a text project: records from ``text_reader`` become items, in batches.

The same job as an image import (``importer.ImportRun``: its checkpoint in the job's row, its
progress, its result) with text records in place of image files. A text lives in its item's row
(docs/import.md says why), so there is no file to write: a batch is hashed and inserted. Memory
stays flat whatever the upload's size: the reader streams, a batch is bounded in rows and
characters, and duplicates are found by the database's unique (project, content hash), not by a
set of every hash seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db import utcnow
from app.items.import_job import Batch, ImportBase
from app.items.models import TEXT_MEDIA_TYPE
from app.items.text_reader import TextReader
from app.labeling.models import LabelSource
from app.rawsql import Raw
from app.settings import get_settings

# Rows per transaction: a text row is small, so more of them per commit than images (400)
# while SQLite's write lock is still held for tens of milliseconds at a time.
TEXT_BATCH_ROWS = 2000
# A batch closes early past this many characters, bounding what waits in memory to be written.
TEXT_BATCH_CHARS = 8_000_000


def content_hash(text: str) -> str:
    """A text item's content hash: SHA-256 of its text in UTF-8, exactly as stored."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class AcceptedText:
    """A checked text waiting for its batch to commit."""

    name: str
    content_hash: str
    text: str
    label: str | None


# A batch goes in as one statement whatever its size, its rows as one parameter: arrays on
# PostgreSQL, a JSON array on SQLite. Row by row through SQLAlchemy, a text row cost ~240 us
# on SQLite and ~590 us on PostgreSQL, where psycopg re-parsed each 1,000-row VALUES statement
# (too long for its cache) in Python: 200,000 short texts took 57 s and 118 s.
# ON CONFLICT DO NOTHING: the unique (project, hash) decides duplicates, also between two
# imports racing; RETURNING says which rows are new.
_COLUMNS = (
    "project_id, content_hash, name, media_type, width, height, text, text_chars, split, label,"
    " created_at"
)
_INSERT_PG = f"""
    INSERT INTO items ({_COLUMNS})
    SELECT :project_id, r.h, r.n, :media_type, NULL, NULL, r.t, r.c, :split, r.l, :now
    FROM unnest(CAST(:hashes AS text[]), CAST(:names AS text[]), CAST(:texts AS text[]),
                CAST(:chars AS integer[]), CAST(:labels AS text[]))
         WITH ORDINALITY AS r(h, n, t, c, l, o)
    ORDER BY r.o
    ON CONFLICT (project_id, content_hash) DO NOTHING
    RETURNING id, label"""  # noqa: S608 - constants of this module, never input
_INSERT_SQLITE = f"""
    INSERT INTO items ({_COLUMNS})
    SELECT :project_id, json_extract(value, '$[0]'), json_extract(value, '$[1]'), :media_type,
           NULL, NULL, json_extract(value, '$[2]'), json_extract(value, '$[3]'), :split,
           json_extract(value, '$[4]'), :now
    FROM json_each(:rows) WHERE true
    ON CONFLICT (project_id, content_hash) DO NOTHING
    RETURNING id, label"""  # noqa: S608 - constants of this module, never input
# The import's labels, for the new items that carry one (source ``import``, by the uploader).
_LABELS_SQL = """
    INSERT INTO labels (item_id, project_id, user_id, label, source, key, created_at, undone_at)
    SELECT i.id, i.project_id, :user_id, i.label, :source, NULL, :now, NULL
    FROM items i WHERE i.id IN ({ids})"""
_LABELS = {
    True: _LABELS_SQL.format(ids="SELECT unnest(CAST(:ids AS integer[]))"),
    False: _LABELS_SQL.format(ids="SELECT value FROM json_each(:ids)"),
}


def insert_texts(
    db: Session,
    batch: list[AcceptedText],
    *,
    project_id: int,
    split: str,
    uploader: int | None,
) -> tuple[int, int]:
    """Insert texts skipping content already in the project: (items added, labels added)."""
    if not batch:
        return 0, 0
    raw = Raw(db)
    now = utcnow()
    common = {"project_id": project_id, "media_type": TEXT_MEDIA_TYPE, "split": split, "now": now}
    if raw.postgres:
        columns = {
            "hashes": [a.content_hash for a in batch],
            "names": [a.name for a in batch],
            "texts": [a.text for a in batch],
            "chars": [len(a.text) for a in batch],
            "labels": [a.label for a in batch],
        }
        new = raw.rows(_INSERT_PG, common | columns)
    else:
        rows = [[a.content_hash, a.name, a.text, len(a.text), a.label] for a in batch]
        new = raw.rows(_INSERT_SQLITE, common | {"rows": rows})
    labelled = [item_id for item_id, label in new if label is not None]
    if labelled:
        raw.rows(
            _LABELS[raw.postgres],
            {"ids": labelled, "user_id": uploader, "source": LabelSource.imported, "now": now},
        )
    return len(new), len(labelled)


class TextImportRun(ImportBase):
    """One run of an import job into a text project, from its checkpoint to the end."""

    def prepare(self) -> None:
        """The reader of text records, for the project's classes and the text limit."""
        self.reader = TextReader(
            classes=self.classes,
            max_chars=get_settings().max_text_chars,
            from_folders=self.from_folders,
        )

    def _insert(self, db: Session, accepted: list[Any]) -> tuple[int, int]:
        return insert_texts(
            db, accepted, project_id=self.project_id, split=self.split, uploader=self.uploader
        )

    def run(self, files: list[tuple[Path, str]]) -> dict[str, Any]:
        """Import every record after the checkpoint, committing batch by batch."""
        self.tally.total = self.reader.survey(files)
        resume_after = self.tally.processed
        position = 0
        batch, chars, seen = Batch(), 0, set[str]()
        for record in self.reader.records(files):
            position += 1
            if position <= resume_after:
                continue  # committed by an earlier run of this job
            batch.entries += 1
            batch.upto = position
            if record.problem is not None:
                batch.rejected.append((record.name, record.problem))
            else:
                digest = content_hash(record.text)
                if digest in seen:
                    batch.duplicates += 1  # twice in this batch; across batches the database says
                else:
                    seen.add(digest)
                    batch.accepted.append(
                        AcceptedText(record.name, digest, record.text, record.label)
                    )
                    chars += len(record.text)
            if batch.entries >= TEXT_BATCH_ROWS or chars >= TEXT_BATCH_CHARS:
                self._commit(batch, None)
                batch, chars, seen = Batch(), 0, set()
        batch.upto = max(batch.upto, position)
        self._commit(batch, None)
        return self.tally.as_result()
