"""The manifest of an import by reference (DESIGN 4d): a CSV or JSONL object listing the objects.

Each row names one object by its ``key`` in the manifest's bucket (an ``s3://`` URL of that
same bucket is taken too), with an optional ``name`` (the item's name; the key otherwise) and
``label`` (a class of the project). A CSV has a header row naming a ``key`` column; a JSONL line
is an object. A bad row is refused alone, with its line and reason, and the rest import; a
manifest that cannot be read at all (not UTF-8, no ``key`` column) fails its job with the reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from app.items.entries import MAX_NAME
from app.items.text_reader import visible

# The largest manifest a worker reads (it holds it whole): ~4 million rows of short keys.
MAX_MANIFEST_BYTES = 256 << 20
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# A row's key, name or label past this is refused (S3 keys are at most 1,024 bytes).
MAX_FIELD = 2 * MAX_NAME


class ManifestError(ValueError):
    """A manifest refused whole; the message says why."""


@dataclass(frozen=True)
class Row:
    """One row: the object's key, the item's name and label, or why the row is refused."""

    key: str
    name: str
    label: str | None = None
    problem: str | None = None

    def entry(self) -> list[Any]:
        """The row as a chunk's entry: [key, name, label, problem]."""
        return [self.key, self.name, self.label, self.problem]


def manifest_format(key: str) -> str | None:
    """``csv`` or ``jsonl`` by the manifest's key, or None when it is neither."""
    lowered = key.lower()
    for suffix, kind in MANIFEST_SUFFIXES.items():
        if lowered.endswith(suffix):
            return kind
    return None


def rows(data: bytes, *, key: str, bucket: str) -> Iterator[Row]:
    """Every row of a manifest held in ``data``, in order (blank lines are no rows)."""
    kind = manifest_format(key)
    if kind is None:
        raise ManifestError(f"a manifest is a .csv or .jsonl object, not {key!r}")
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="strict", newline="")
    reader = _csv_rows if kind == "csv" else _jsonl_rows
    try:
        for line, fields in reader(stream):
            yield _row(line, fields, bucket=bucket)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest is not UTF-8 text ({exc.reason})") from exc


# A reader yields each row's line and its fields, or the reason it could not be parsed.
Parsed = tuple[int, dict[str, Any] | str]


def _csv_rows(stream: IO[str]) -> Iterator[Parsed]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(
            "the manifest is empty: it needs a header row with a 'key' column"
        ) from None
    except csv.Error as exc:
        raise ManifestError(f"the manifest's header row is not readable as CSV: {exc}") from exc
    columns = [c.strip().lower() for c in header]
    if "key" not in columns:
        raise ManifestError(
            "the manifest has no 'key' column: its header row names 'key' (and optionally "
            "'name' and 'label')"
        )
    at = {c: columns.index(c) for c in ("key", "name", "label") if c in columns}
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, f"not readable as CSV: {exc}"
            continue
        if any(cell.strip() for cell in row):
            yield line, {c: row[i] if i < len(row) else "" for c, i in at.items()}


def _jsonl_rows(stream: IO[str]) -> Iterator[Parsed]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            yield line, f"not a JSON object: {exc}"[:300]
            continue
        if not isinstance(obj, dict):
            yield line, "not a JSON object"
            continue
        label = obj.get("label")
        if isinstance(label, int) and not isinstance(label, bool):
            obj["label"] = str(label)  # a class named "1" is often written as the number 1
        yield line, obj


def _row(line: int, fields: dict[str, Any] | str, *, bucket: str) -> Row:
    """A row checked on its own, or refused with the reader's reason."""
    where = f"manifest:{line}"
    if isinstance(fields, str):
        return Row("", where, problem=fields)
    key, name, label = fields.get("key"), fields.get("name") or "", fields.get("label") or ""
    if not isinstance(key, str) or not key.strip():
        return Row("", where, problem="no 'key'")
    if not isinstance(name, str):
        return Row("", where, problem="'name' must be a string")
    if not isinstance(label, str):
        return Row("", where, problem="'label' must be a string")
    if any(visible(v) != v for v in (key, name, label)):
        return Row("", where, problem="a NUL character or invalid Unicode in its fields")
    key = key.strip()
    if key.startswith("s3://"):
        other, _, rest = key[len("s3://") :].partition("/")
        if other != bucket:
            return Row("", visible(key), problem=f"not in the manifest's bucket {bucket!r}")
        key = rest
    name = name.strip() or key
    if max(len(key), len(name), len(label)) > MAX_FIELD:
        return Row("", where, problem=f"a key, name or label longer than {MAX_FIELD} characters")
    return Row(key, name, label.strip() or None)
