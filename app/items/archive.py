"""Zip archives as upload entries: opened memory-mapped, read one entry at a time under bounds.

Nothing is ever extracted to a path: an entry is read into memory under a size bound, so an entry
named ``../x`` or ``/x`` can only be refused, never written. Three bounds stop a hostile archive
before it costs more than a real one: the entries in its central directory (counted as read, not
as declared), each entry's size (declared, then actual), and what the whole archive expands to.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.items.entries import Entry, Rejected, clean_name, name_problem, refused

ZIP_MAGIC = b"PK\x03\x04"
# An archive may expand to this multiple of its own size (or 1 GiB): beyond is a zip bomb.
# Images are already compressed, so a real archive of them expands by little.
MAX_EXPANSION = 20
MIN_EXPANSION_BUDGET = 1 << 30
# zipfile holds every entry's header in memory: a million is ~0.5 GB, and more than any upload
# of images needs (a larger collection goes in several archives).
MAX_ARCHIVE_ENTRIES = 1_000_000
# A central directory record: its signature, then (past 24 bytes) its name, extra and comment
# lengths; 46 bytes before the three variable fields.
_CENTRAL_RECORD = struct.Struct("<4s24xHHH")
_CENTRAL_RECORD_SIZE = 46
_CENTRAL_MAGIC = b"PK\x01\x02"
# The zip64 end record and its locator sit between a zip64 archive's directory and its end record.
_ZIP64_TRAILER = 56 + 20
# What reading one damaged entry can raise: bad CRC or header, bad deflate data, cut short,
# an unsupported compression method, a password. Anything else is our bug and fails the job.
_ENTRY_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
)


def is_zip(path: Path, name: str) -> bool:
    """Whether an uploaded part is a zip archive, by its name or its first bytes."""
    if name.lower().endswith(".zip"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def count_entries(path: Path) -> int:
    """How many entries ``entries`` yields for an archive (positions in an upload must agree)."""
    with _open(path) as opened:
        if isinstance(opened, str):
            return 1  # refused as a whole, counted as one
        return sum(1 for info in opened.infolist() if not _skipped(info))


def entries(path: Path, name: str, *, entry_limit: int) -> Iterator[Entry]:
    """An archive's file entries, each refused up front when its name or sizes are unsafe."""
    with _open(path) as opened:
        if isinstance(opened, str):
            yield refused(name, opened)
            return
        for info, problem in _checked(opened, path, entry_limit=entry_limit):
            yield Entry(
                name=clean_name(info.filename),
                read=_reader(opened, info, entry_limit),
                problem=problem,
            )


def _checked(
    zf: zipfile.ZipFile, path: Path, *, entry_limit: int | None
) -> Iterator[tuple[zipfile.ZipInfo, str | None]]:
    """Each file entry with why it is refused before it is read (None: it may be read)."""
    budget = max(MIN_EXPANSION_BUDGET, MAX_EXPANSION * path.stat().st_size)
    for info in zf.infolist():
        if _skipped(info):
            continue
        problem = name_problem(info.filename)
        if problem is None:
            if info.flag_bits & 0x1:
                problem = "encrypted archive entry"
            elif entry_limit is not None and info.file_size > entry_limit:
                problem = f"too large: {info.file_size} bytes uncompressed (zip bomb?)"
            elif info.file_size > budget:
                problem = "the archive expands far beyond its own size (zip bomb?)"
        if problem is None:
            budget -= info.file_size
        yield info, problem


@dataclass(frozen=True)
class Stream:
    """An archive entry for a reader that never holds it whole (text): ``open`` gives its
    inflated bytes as a stream (a bad CRC surfaces as ``zipfile.BadZipFile`` at its end)."""

    name: str
    open: Callable[[], IO[bytes]]
    problem: str | None = None


# What reading an entry as a stream can raise besides a decoding error: the entry errors above.
STREAM_ERRORS = _ENTRY_ERRORS


def streams(path: Path, name: str) -> Iterator[Stream]:
    """An archive's file entries as streams, refused up front when the name is unsafe, the
    entry encrypted, or the archive expands far beyond its size (the same budget as
    ``entries``; no per-entry bound, since a stream is never held whole)."""
    with _open(path) as opened:
        if isinstance(opened, str):
            yield Stream(name=clean_name(name), open=_nothing, problem=opened)
            return
        for info, problem in _checked(opened, path, entry_limit=None):
            yield Stream(
                name=clean_name(info.filename), open=_opener(opened, info), problem=problem
            )


def _opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    # zipfile bounds what it inflates by the declared size and checks the CRC at the end.
    return lambda: zf.open(info)


def _nothing() -> IO[bytes]:
    return io.BytesIO()


@contextmanager
def _open(path: Path) -> Iterator[zipfile.ZipFile | str]:
    """The archive, memory-mapped; or why it cannot be opened."""
    with open(path, "rb") as raw:
        try:
            # Mapped, not read: entries are sliced from the page cache without a seek and a
            # read syscall each, and the archive never has to fit in memory.
            mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            yield f"not a valid zip archive: {exc}"
            return
    with mapped:
        try:
            # zipfile parses the whole central directory into objects, whatever its end record
            # says the count is: the records are counted first, in place, up to the limit.
            crowded = _central_records(mapped, MAX_ARCHIVE_ENTRIES) > MAX_ARCHIVE_ENTRIES
        except (OSError, ValueError) as exc:
            yield f"not a valid zip archive: {exc}"
            return
        if crowded:
            yield f"more than {MAX_ARCHIVE_ENTRIES} entries in one archive"
            return
        try:
            zf = zipfile.ZipFile(_MappedFile(mapped))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            problem = f"not a valid zip archive: {exc}"
        else:
            with zf:
                yield zf
            return
        yield problem


def _central_records(mapped: mmap.mmap, limit: int) -> int:
    """The records zipfile would read from the central directory, counted up to ``limit`` + 1.

    Walks the same bytes as ``ZipFile`` does (from the end record's size and offset, shifted as
    it shifts them), without creating anything per record. 0 when there is no end record: zipfile
    then refuses the archive with its own reason.
    """
    # zipfile's own reader of the end record and its field indices: private, but unchanged
    # since Python 2.
    end = getattr(zipfile, "_EndRecData")(_MappedFile(mapped))  # noqa: B009
    if not end:
        return 0
    size = int(end[getattr(zipfile, "_ECD_SIZE")])  # noqa: B009
    start = int(end[getattr(zipfile, "_ECD_LOCATION")]) - size  # noqa: B009
    if end[getattr(zipfile, "_ECD_SIGNATURE")] == getattr(zipfile, "stringEndArchive64"):  # noqa: B009
        start -= _ZIP64_TRAILER
    if start < 0:
        return 0
    stop = min(start + size, len(mapped))
    position, count = start, 0
    while position < start + size and position + _CENTRAL_RECORD_SIZE <= stop:
        magic, name, extra, comment = _CENTRAL_RECORD.unpack_from(mapped, position)
        if magic != _CENTRAL_MAGIC:
            break  # zipfile stops here too, refusing the archive
        count += 1
        if count > limit:
            break
        position += _CENTRAL_RECORD_SIZE + name + extra + comment
    return count


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders and macOS resource forks: not files anyone meant to upload."""
    return info.is_dir() or info.filename.startswith("__MACOSX/")


def _reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zf.open(info) as f:
                # The declared size was checked; this bounds what is actually inflated.
                data = f.read(limit + 1)
        except _ENTRY_ERRORS as exc:
            raise Rejected(f"corrupt archive entry: {exc}") from exc
        if len(data) > limit:
            raise Rejected("too large once uncompressed (zip bomb?)")
        return data

    return read


class _MappedFile(io.RawIOBase):
    """A read-only file over a memory map (mmap has no ``seekable`` before Python 3.13)."""

    def __init__(self, mapped: mmap.mmap) -> None:
        super().__init__()
        self.mapped = mapped

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self.mapped.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.mapped.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.mapped.tell(), io.SEEK_END: len(self.mapped)}
        self.mapped.seek(base[whence] + offset)
        return self.mapped.tell()

    def tell(self) -> int:
        return self.mapped.tell()
