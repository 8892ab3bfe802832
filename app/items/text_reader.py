"""Text uploads as records (DESIGN 4c): .csv, .jsonl and .txt files, alone or in a zip, streamed.

A file is never held whole. It is decoded and parsed a line at a time, and a line longer than any
acceptable record could be is skipped past without being kept, so a 1 GB CSV costs the memory of
one record, whatever its size. Reading takes two passes. ``TextReader.survey`` reads every file
once to count its records and to find what refuses a file whole (not UTF-8, no ``text`` column, a
corrupt archive entry), so such a file imports nothing rather than the rows before its fault;
``TextReader.records`` then yields exactly as many records as were counted, in the same order, so
an import resumes by position.

Each record is checked on its own: empty text, a NUL, more than ``SVP_MAX_TEXT_CHARS``
characters, a label that is not a class. A bad record carries its reason and the rest import.
A formula-looking cell (``=1+1``, ``@x``) is text like any other and is kept verbatim.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from app.items import archive
from app.items.entries import MAX_NAME, clean_name, name_problem

# What a text project imports, by the file's suffix (lower case).
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TXT_SUFFIXES = (".txt",)
TEXT_SUFFIXES = CSV_SUFFIXES + JSONL_SUFFIXES + TXT_SUFFIXES
# What an image project imports: one of these sent to a text project is refused with that reason.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
# Room on a line besides its text: CSV quoting doubles a text's quotes (hence twice the text's
# length), and a name (up to 1024 characters) and a label share the line.
LINE_SLACK = 1 << 16
TEXT_WANTED = "send .csv, .jsonl or .txt files, or a .zip of them"


@dataclass
class TextRecord:
    """One text to import (``problem`` None), or one refused with the reason shown."""

    name: str
    text: str = ""
    label: str | None = None
    problem: str | None = None


class WholeFile(Exception):
    """A file refused as a whole (nothing of it imports); the message is the reason."""


def kind_mismatch(kind: str, names: list[str]) -> str | None:
    """Why an upload can import nothing into a project of this kind, judged by its files' names
    alone (every one of the other kind), or None. A zip is judged by its entries, in the job."""
    lowered = [n.lower() for n in names]
    if not lowered:
        return None
    if kind == "text" and all(n.endswith(IMAGE_SUFFIXES) for n in lowered):
        return f"this is a text project and the upload holds images only: {TEXT_WANTED}"
    if kind == "image" and all(n.endswith(TEXT_SUFFIXES) for n in lowered):
        return (
            "this is an image project and the upload holds text files only (.csv, .jsonl, "
            ".txt): texts are imported into a project made with kind 'text'"
        )
    return None


def wrong_kind_reason(name: str) -> str | None:
    """Why an image project refuses a file by its name (a text file), or None."""
    if name.lower().endswith(TEXT_SUFFIXES):
        return "not an image but a text file: texts go in a project of kind 'text'"
    return None


def visible(name: str) -> str:
    """A name fit to store and show: a NUL or a lone surrogate (JSON escapes) replaced."""
    return name.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _valid_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Lines:
    """A text stream's lines, each at most ``limit`` characters: a longer line is read past in
    pieces, never kept, and stands as an empty line whose number is noted in ``overlong``."""

    def __init__(self, stream: IO[str], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.number = 0
        self.overlong: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.stream.readline(self.limit)
            if not line:
                return
            self.number += 1
            if len(line) >= self.limit and line[-1] not in "\r\n":
                while (rest := self.stream.readline(self.limit)) and rest[-1] not in "\r\n":
                    pass
                self.overlong.add(self.number)
                yield "\n"
                continue
            yield line

    def cut_between(self, first: int, last: int) -> bool:
        """Whether a line from ``first`` to ``last`` was too long to read."""
        return bool(self.overlong) and any(first <= n <= last for n in self.overlong)


class TextReader:
    """Reads the parts of one upload as text records, for a project's classes and limits."""

    def __init__(self, *, classes: set[str], max_chars: int, from_folders: bool) -> None:
        self.classes = classes
        self.max_chars = max_chars
        self.from_folders = from_folders
        self.line_limit = 2 * max_chars + LINE_SLACK
        # Files refused whole, found by ``survey``: (part, entry) positions and the reason.
        self.refused: dict[tuple[int, int], str] = {}
        # While surveying, records are only counted: checking each waits for ``records``.
        self.counting = False
        # Python's default (128 KiB) would refuse a valid long text; sys.maxsize would let one
        # field of a quoted run fill the memory. Bounded by the longest line accepted instead.
        # The limit is the process's, for every csv reader: this bound suits any of them.
        csv.field_size_limit(self.line_limit)

    def survey(self, parts: list[tuple[Path, str]]) -> int:
        """Read every file once; note those refused whole; the number of records to come."""
        total = 0
        self.counting = True
        try:
            for p, (path, name) in enumerate(parts):
                for e, source in enumerate(_sources(path, name)):
                    if source.problem is not None or _suffix(source.name) not in ("csv", "jsonl"):
                        total += 1
                        continue
                    try:
                        total += sum(1 for _ in self._parse(source))
                    except WholeFile as exc:
                        self.refused[(p, e)] = str(exc)
                        total += 1
        finally:
            self.counting = False
        return total

    def records(self, parts: list[tuple[Path, str]]) -> Iterator[TextRecord]:
        """Every record of the upload, in order, as many as ``survey`` counted."""
        for p, (path, name) in enumerate(parts):
            for e, source in enumerate(_sources(path, name)):
                problem = source.problem or self.refused.get((p, e))
                if problem is not None:
                    yield TextRecord(name=visible(source.name), problem=problem)
                else:
                    yield from self._file_records(source)

    def whole_records(self, source: archive.Stream) -> list[TextRecord]:
        """Every record of one file read in one pass (an object of an import by reference,
        held in memory): a file refused whole is one refused record, as ``records`` gives it."""
        if source.problem is not None:
            return [TextRecord(name=visible(source.name), problem=source.problem)]
        try:
            return list(self._file_records(source))
        except WholeFile as exc:
            return [TextRecord(name=visible(source.name), problem=str(exc))]

    def _file_records(self, source: archive.Stream) -> Iterator[TextRecord]:
        suffix = _suffix(source.name)
        if suffix in ("csv", "jsonl"):
            yield from self._parse(source)
        elif suffix == "txt":
            yield self._txt(source)
        else:
            yield TextRecord(name=visible(source.name), problem=_not_text(source.name))

    def _parse(self, source: archive.Stream) -> Iterator[TextRecord]:
        """The records of a CSV or JSONL file; WholeFile when the file cannot be read at all."""
        try:
            with source.open() as raw:
                # utf-8-sig: a byte-order mark some editors write is not part of the header.
                stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
                if _suffix(source.name) == "csv":
                    yield from self._csv(stream, source.name)
                else:
                    yield from self._jsonl(stream, source.name)
        except UnicodeDecodeError as exc:
            raise WholeFile(
                f"not UTF-8 text ({exc.reason}); the whole file is refused: save it as UTF-8"
            ) from exc
        except archive.STREAM_ERRORS as exc:
            raise WholeFile(f"corrupt archive entry: {exc}") from exc

    def _csv(self, stream: IO[str], file_name: str) -> Iterator[TextRecord]:
        lines = _Lines(stream, self.line_limit)
        reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            raise WholeFile("an empty CSV: it needs a header row with a 'text' column") from None
        except csv.Error as exc:
            raise WholeFile(f"the header row is not readable as CSV: {exc}") from exc
        columns = [c.strip().lower() for c in header]
        if lines.overlong or "text" not in columns:
            raise WholeFile(
                "no 'text' column in the header row: a CSV needs a header naming a 'text' "
                "column (and optionally 'name' and 'label')"
            )
        text_at = columns.index("text")
        name_at = columns.index("name") if "name" in columns else None
        label_at = columns.index("label") if "label" in columns else None
        done = reader.line_num
        while True:
            try:
                row, error = next(reader), None
            except StopIteration:
                return
            except csv.Error as exc:
                row, error = [], exc
            first, done = done + 1, reader.line_num
            where = f"{file_name}:{first}"
            if error is not None:
                yield TextRecord(name=visible(where), problem=f"not readable as CSV: {error}")
            elif lines.cut_between(first, done):
                yield TextRecord(name=visible(where), problem=self._too_long_line())
            elif row:  # a blank line is no record
                yield self._record(
                    _cell(row, name_at) or where, _cell(row, text_at), _cell(row, label_at)
                )

    def _jsonl(self, stream: IO[str], file_name: str) -> Iterator[TextRecord]:
        lines = _Lines(stream, self.line_limit)
        for line in lines:
            where = f"{file_name}:{lines.number}"
            if lines.number in lines.overlong:
                yield TextRecord(name=visible(where), problem=self._too_long_line())
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield TextRecord(name=visible(where), problem=f"not a JSON object: {exc}"[:300])
                continue
            if not isinstance(obj, dict):
                yield TextRecord(name=visible(where), problem="not a JSON object")
                continue
            text, name, label = obj.get("text"), obj.get("name"), obj.get("label")
            if isinstance(label, int) and not isinstance(label, bool):
                label = str(label)  # a class named "1" is often written as the number 1
            if not isinstance(text, str):
                problem = "no 'text' string in the object"
            elif name is not None and not isinstance(name, str):
                problem = "'name' must be a string"
            elif label is not None and not isinstance(label, str):
                problem = "'label' must be a string"
            else:
                yield self._record(name or where, text, label or "")
                continue
            yield TextRecord(
                name=visible(where if not isinstance(name, str) else name), problem=problem
            )

    def _txt(self, source: archive.Stream) -> TextRecord:
        """A .txt file is one item, named by its path, its class from its folder when asked."""
        label = ""
        if self.from_folders:
            label = PurePosixPath(source.name).parent.name
            problem = None
            if not label:
                problem = "no folder to take the class from"
            elif label not in self.classes:
                problem = f"folder {label!r} is not a class of the project"
            if problem is not None:
                return TextRecord(name=visible(source.name), problem=problem)
        # UTF-8 takes at most 4 bytes a character, and a byte-order mark 3 more.
        limit = 4 * self.max_chars + 3
        try:
            with source.open() as raw:
                data = raw.read(limit + 1)
        except archive.STREAM_ERRORS as exc:
            return TextRecord(name=visible(source.name), problem=f"corrupt archive entry: {exc}")
        if len(data) > limit:
            return TextRecord(name=visible(source.name), problem=self._too_long(None))
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return TextRecord(
                name=visible(source.name),
                problem=f"not UTF-8 text ({exc.reason}); save it as UTF-8",
            )
        return self._record(source.name, text, label)

    def _record(self, name: str, text: str, label: str) -> TextRecord:
        """A record checked on its own: refused with the reason, or accepted."""
        if self.counting:
            return _COUNTED
        label = label.strip()
        problem = None
        if "\x00" in name or not _valid_unicode(name):
            problem = "the name contains a NUL character or invalid Unicode"
        elif len(name) > MAX_NAME:
            problem = f"the name is longer than {MAX_NAME} characters"
        elif not text.strip():
            problem = "empty text"
        elif "\x00" in text:
            problem = "the text contains a NUL character"
        elif len(text) > self.max_chars:
            problem = self._too_long(len(text))
        elif not _valid_unicode(text):
            problem = "the text is not valid Unicode (a lone surrogate)"
        elif label and label not in self.classes:
            problem = f"label {visible(label)!r} is not a class of the project"
        if problem is not None:
            return TextRecord(name=visible(name), problem=problem)
        return TextRecord(name=name, text=text, label=label or None)

    def _too_long(self, chars: int | None) -> str:
        size = f"{chars} characters" if chars is not None else "the text"
        return f"{size} is longer than SVP_MAX_TEXT_CHARS allows ({self.max_chars})"

    def _too_long_line(self) -> str:
        return (
            f"a line longer than {self.line_limit} characters, more than any text within "
            f"SVP_MAX_TEXT_CHARS ({self.max_chars}) needs"
        )


# What a record is while the survey only counts.
_COUNTED = TextRecord(name="", problem="counted")


def _cell(row: list[str], at: int | None) -> str:
    return row[at] if at is not None and at < len(row) else ""


def _suffix(name: str) -> str:
    """The kind of a file by its name: csv, jsonl, txt, or '' for anything else."""
    lowered = name.lower()
    for kind, suffixes in (("csv", CSV_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("txt", TXT_SUFFIXES)):
        if lowered.endswith(suffixes):
            return kind
    return ""


def _not_text(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(IMAGE_SUFFIXES):
        return f"an image: this is a text project; {TEXT_WANTED}"
    if lowered.endswith(".zip"):
        return "nested archive (zip inside an upload's zip) is not imported"
    return f"not a file a text project imports: {TEXT_WANTED}"


def _sources(path: Path, name: str) -> Iterator[archive.Stream]:
    """The files of one uploaded part: each entry of a zip, or the part itself."""
    if archive.is_zip(path, name):
        yield from archive.streams(path, name)
    else:
        # The stream is opened, and closed, by the reader's ``with``.
        yield archive.Stream(
            name=clean_name(name),
            open=lambda: open(path, "rb"),  # noqa: SIM115
            problem=name_problem(name),
        )
