"""Label exports, streamed: keyset batches of labelled items, each read in its own transaction.

Nothing holds the whole project in memory, and no transaction stays open while a slow client
downloads: each batch is read, closed, then written out.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, literal_column, null, select
from sqlalchemy.orm import aliased

from app.auth.models import User
from app.db import unit_of_work
from app.exports.schemas import EXPORT_FIELDS, TEXT_EXPORT_FIELDS, ExportFormat
from app.items.models import Item
from app.labeling.models import Label
from app.labeling.sql import current_label
from app.storage import ObjectMissing, read_image

log = logging.getLogger(__name__)

# Items per read: one short query per batch, a few hundred KB of CSV at most.
EXPORT_BATCH = 1000
# Text items per read: a batch holds its texts whole, each up to SVP_MAX_TEXT_CHARS (100,000
# by default), so 100 bound a batch to ~40 MB at worst; short texts stream as fast either way.
TEXT_EXPORT_BATCH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ExportRow(NamedTuple):
    """One labelled item with the author and time of its newest live label."""

    item_id: int
    name: str
    split: str
    label: str
    labeled_by: str | None
    labeled_at: datetime | None
    content_hash: str
    text: str | None = None  # a text item's whole text; None for an image
    source: str | None = None  # the object an item imported by reference is read from

    def values(self) -> list[Any]:
        """The exported fields' values, in the contract's order (``text`` last, for a text
        item): a CSV row as it is written."""
        values = [
            self.item_id,
            self.name,
            self.split,
            self.label,
            self.labeled_by,
            self.labeled_at.isoformat() if self.labeled_at else None,
        ]
        if self.text is not None:
            values.append(self.text)
        return values

    def as_dict(self) -> dict[str, Any]:
        """The exported fields by name, in the contract's order (plus ``text`` for a text
        item): a JSONL object."""
        fields = TEXT_EXPORT_FIELDS if self.text is not None else EXPORT_FIELDS
        return dict(zip(fields, self.values(), strict=True))


def _batch_query(*, project_id: int, after: int, batch_size: int, texts: bool) -> Select[Any]:
    """One keyset batch of labelled items with their newest live label's author and time.

    One statement: the newest live label is found per item by the rule the label path keeps
    ``Item.label`` by (an index probe each), joined to its author. ix_items_project_labeled_id
    serves the keyset: the batch reads its own rows, whatever else the table holds.
    """
    newest = aliased(Label)
    current: ColumnElement[int] = literal_column(current_label("items.id", "id"))
    # In ExportRow's order: a row becomes one without naming its fields.
    columns: list[Any] = [Item.id, Item.name, Item.split, Item.label, User.username]
    columns += [newest.created_at, Item.content_hash]
    # A text project's rows carry the whole text; an image's, the object it is read from.
    columns += [Item.text if texts else null(), Item.source]
    return (
        select(*columns)
        .select_from(Item)
        .outerjoin(newest, newest.id == current)
        .outerjoin(User, User.id == newest.user_id)
        .where(Item.project_id == project_id, Item.label.is_not(None), Item.id > after)
        .order_by(Item.id)
        .limit(batch_size)
    )


def labeled_batches(
    *, project_id: int, batch_size: int = EXPORT_BATCH, texts: bool = False
) -> Iterator[list[ExportRow]]:
    """The project's labelled items in id order, a keyset batch at a time (``texts``: with
    each item's whole text), each batch read in a short transaction of its own."""
    after = 0
    while True:
        query = _batch_query(project_id=project_id, after=after, batch_size=batch_size, texts=texts)
        with unit_of_work(write=False) as db:
            rows = db.execute(query).all()
        if not rows:
            return
        yield [ExportRow(*row) for row in rows]
        after = rows[-1].id


# A spreadsheet reads a cell starting with one of these as a formula (OWASP's CSV injection
# list: = + - @, and tab and carriage return, which some programs skip before one).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a leading ' before what it would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _batches(project_id: int, texts: bool) -> Iterator[list[ExportRow]]:
    if texts:
        return labeled_batches(project_id=project_id, batch_size=TEXT_EXPORT_BATCH, texts=True)
    return labeled_batches(project_id=project_id)


def csv_chunks(*, project_id: int, safe: bool = False, texts: bool = False) -> Iterator[bytes]:
    """A CSV file: the header line, then one row per labelled item (``texts``: a text
    project's, with a last ``text`` column).

    By default every cell is exactly what is stored, so the file round-trips (an item named
    ``=1+1.png`` stays that name, a text ``=SUM(A1)`` that text). ``safe`` is for opening the
    file in a spreadsheet: cells that would run as a formula there, texts included, get a
    leading ``'`` (and no longer round-trip).
    """
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(TEXT_EXPORT_FIELDS if texts else EXPORT_FIELDS)
    yield buf.getvalue().encode()
    for batch in _batches(project_id, texts):
        buf = io.StringIO()
        rows = (row.values() for row in batch)
        if safe:
            rows = ([neutralise(v) for v in r] for r in rows)
        csv.writer(buf, lineterminator="\n").writerows(rows)
        yield buf.getvalue().encode()


def jsonl_chunks(*, project_id: int, texts: bool = False) -> Iterator[bytes]:
    """One JSON object per labelled item and line (``texts``: with a ``text`` field)."""
    for batch in _batches(project_id, texts):
        yield "".join(
            json.dumps(row.as_dict(), ensure_ascii=False) + "\n" for row in batch
        ).encode()


class _Sink(io.RawIOBase):
    """Collects what zipfile writes so a generator can hand it on; not seekable on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.chunks.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        """What was written since the last call."""
        out, self.chunks = b"".join(self.chunks), []
        return out


def safe_component(text: str, *, fallback: str) -> str:
    """A path component anyone can unzip anywhere: no separators, no dot names, bounded length."""
    cleaned = _UNSAFE.sub("_", text).strip("._")[:100]
    return cleaned or fallback


def archive_name(row: ExportRow) -> str:
    """``<class>/<item id>_<file name>``: unique by the id, safe whatever the upload was called."""
    folder = safe_component(row.label, fallback="class")
    base = safe_component(PurePosixPath(row.name).name, fallback="image")
    return f"{folder}/{row.item_id}_{base}"


def text_archive_name(row: ExportRow) -> str:
    """``<class>/<item id>_<name>.txt``: what a text project's import reads back with
    ``labels_from_folders`` (a row's name such as ``reviews.csv:12`` becomes ``reviews.csv_12``)."""
    folder = safe_component(row.label, fallback="class")
    base = safe_component(PurePosixPath(row.name).name, fallback="text")
    return f"{folder}/{row.item_id}_{base.removesuffix('.txt')}.txt"


def textfolder_chunks(*, project_id: int) -> Iterator[bytes]:
    """A text project's image-folder export: a zip of ``<class>/<file>.txt``, one per
    labelled item, its text in UTF-8, written as it streams."""
    sink = _Sink()
    # Text shrinks well; the zip is deflated at a fast level.
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for batch in _batches(project_id, True):
            for row in batch:
                stamp = (row.labeled_at or datetime(1980, 1, 1)).timetuple()[:6]
                info = zipfile.ZipInfo(text_archive_name(row), date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, (row.text or "").encode())
            yield sink.take()
    yield sink.take()


def imagefolder_chunks(*, project_id: int) -> Iterator[bytes]:
    """A zip of ``<class>/<file>`` for every labelled item, written as it streams.

    An image whose bytes are gone (its object deleted from the bucket it was imported from) is
    left out and logged, so one lost object never fails the whole export.
    """
    sink = _Sink()
    # ZIP_STORED: JPEG and PNG do not shrink, and storing costs no CPU.
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for batch in labeled_batches(project_id=project_id):
            for row in batch:
                try:
                    data = read_image(row.content_hash, row.source)
                except ObjectMissing as exc:
                    log.error(
                        "export of project %s: image of item %s is missing: %s",
                        project_id,
                        row.item_id,
                        exc,
                    )
                    continue
                stamp = (row.labeled_at or datetime(1980, 1, 1)).timetuple()[:6]
                zf.writestr(zipfile.ZipInfo(archive_name(row), date_time=stamp), data)
                yield sink.take()
    yield sink.take()


def export_chunks(
    *,
    project_id: int,
    fmt: ExportFormat,
    safe: bool = False,
    texts: bool = False,
) -> Iterator[bytes]:
    """The export of a project in a format, as chunks of bytes (``safe``: see ``csv_chunks``;
    ``texts``: the project is a text project)."""
    if fmt == ExportFormat.csv:
        return csv_chunks(project_id=project_id, safe=safe, texts=texts)
    if fmt == ExportFormat.jsonl:
        return jsonl_chunks(project_id=project_id, texts=texts)
    if texts:
        return textfolder_chunks(project_id=project_id)
    return imagefolder_chunks(project_id=project_id)
