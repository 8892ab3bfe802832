"""Where bytes live: the content-addressed image store and the spool that uploads stream into.

Images are stored once per content hash at ``images/<h[:2]>/<h>``, whatever project holds them.
Uploads are streamed part by part from the request body into ``uploads/<random>/<n>`` under a
byte budget, so a large upload never sits in memory and a lying client is cut off at the limit.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import Invalid, TooLarge
from app.storage import image_key
from app.storage.objects import FolderStore

# Bytes gathered before a disk write: keeps thread hops few without holding much in memory.
_WRITE_CHUNK = 1024 * 1024
# Form fields are a word or two; anything longer is not a field this endpoint has.
_MAX_FIELD_BYTES = 1024
# More parts than any browser or script sends at once; a zip carries the big collections.
MAX_FILES_PER_UPLOAD = 10_000
# Plain (non-file) parts: the form has two fields; a client repeating them has no reason to
# send more than this many.
MAX_PLAIN_PARTS = 16
# A part's headers (Content-Disposition with its names, Content-Type): bounded like a field.
_MAX_HEADER_BYTES = 8 * 1024
# A client's field name shown in an error is cut to this, so no error carries much of the input.
_MAX_NAME_SHOWN = 64


def image_path(images_dir: Path, content_hash: str) -> Path:
    """The file of an image with this SHA-256 (hex) in the data dir's layout; refuses anything
    that is not a hash. Only for a data dir store: ``app.storage`` reads any store."""
    return images_dir.parent / image_key(content_hash)


class ImageFiles:
    """Writes image files by content hash into a data dir's ``images/`` (seeding tests and
    benches); each appears whole or not at all. The service writes through ``app.storage``.
    """

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self._store = FolderStore(images_dir.parent)

    def put(self, content_hash: str, data: bytes) -> bool:
        """Store the bytes unless that content is stored already; True when a file was written."""
        key = image_key(content_hash)
        if self._store.exists(key):
            return False
        self._store.put(key, data)
        return True


@dataclass
class SpooledFile:
    """One file part of an upload, written to disk."""

    path: str  # relative to the uploads dir
    name: str  # the file name the client gave
    size: int
    field: str = "file"  # the form field it came in


@dataclass(frozen=True)
class FormFields:
    """The fields a multipart form takes: one for files, a few plain ones."""

    file: str
    plain: frozenset[str]


def _shown(name: str) -> str:
    return repr(name if len(name) <= _MAX_NAME_SHOWN else name[:_MAX_NAME_SHOWN] + "...")


@dataclass
class SpooledUpload:
    """An upload streamed to disk: its folder, its file parts and its plain fields."""

    dir: Path
    files: list[SpooledFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


# An upload folder's name: when it was received (UTC, to the second), then a random part.
_STAMP = "%Y%m%dT%H%M%SZ"


def upload_name() -> str:
    """A fresh name for an upload's folder. The time in it dates an upload staged in the item
    store, whose objects carry no time the sweep can read (``app.items.staging``)."""
    return f"{time.strftime(_STAMP, time.gmtime())}-{secrets.token_hex(12)}"


def received_at(name: str) -> datetime | None:
    """When the upload of that folder name was received; None for a name without the time."""
    stamp = name.partition("-")[0]
    try:
        return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def discard(path: Path) -> None:
    """Delete an upload's folder and everything in it."""
    shutil.rmtree(path, ignore_errors=True)


class _Writer:
    """Writes queued part bytes to their files in order, with one file open at a time."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.file: BinaryIO | None = None

    def run(self, ops: list[tuple[Path, bytes | None]]) -> None:
        """Apply (path, bytes) writes and (path, None) ends of file, in order."""
        for path, data in ops:
            if path != self.path:
                self.close()
                # "x": our own fresh name; a second open of the same path would be a bug.
                self.file, self.path = open(path, "xb"), path  # noqa: SIM115 (closed in close)
            assert self.file is not None
            if data is None:
                self.close()
            else:
                self.file.write(data)

    def close(self) -> None:
        """Close the open file, if any."""
        if self.file is not None:
            self.file.close()
        self.file = None


class _Receiver:
    """Callbacks of python-multipart's streaming parser; file bytes queue up as disk operations."""

    def __init__(self, upload: SpooledUpload, uploads_dir: Path, form: FormFields) -> None:
        self.upload = upload
        self.uploads_dir = uploads_dir
        self.form = form
        self.plain_parts = 0
        self.header_bytes = 0
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.field_name = ""
        self.field_data = bytearray()
        self.current: SpooledFile | None = None
        self.current_path: Path | None = None
        # In order: (file, bytes) to write, or (file, None) to end it; run off the event loop.
        self.ops: list[tuple[Path, bytes | None]] = []
        self.pending_bytes = 0
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.header_bytes = 0
        self.disposition = b""
        self.field_data = bytearray()
        self.current = None
        self.current_path = None

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > _MAX_HEADER_BYTES:
            raise Invalid(f"a multipart part's headers exceed {_MAX_HEADER_BYTES} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise Invalid("each multipart part needs a Content-Disposition name")
        self.field_name = options[b"name"].decode("utf-8", "replace")
        # Each part is checked against the form as it comes, so 3,000 unknown fields cost one
        # refusal at the first, not a parse of them all and an error listing each (issue 17 #13).
        if b"filename" not in options:
            if self.field_name not in self.form.plain:
                raise Invalid(
                    f"unknown form field {_shown(self.field_name)}: this form takes "
                    f"{', '.join(sorted({self.form.file, *self.form.plain}))}"
                )
            self.plain_parts += 1
            if self.plain_parts > MAX_PLAIN_PARTS:
                raise Invalid(f"at most {MAX_PLAIN_PARTS} plain form fields per upload")
            return
        if self.field_name != self.form.file:
            raise Invalid(
                f"files go in the {self.form.file!r} field, not {_shown(self.field_name)}"
            )
        if len(self.upload.files) >= MAX_FILES_PER_UPLOAD:
            raise Invalid(f"at most {MAX_FILES_PER_UPLOAD} files per upload; send a zip instead")
        rel = f"{self.upload.dir.name}/{len(self.upload.files):05d}"
        self.current = SpooledFile(
            path=rel,
            name=options[b"filename"].decode("utf-8", "replace"),
            size=0,
            field=self.field_name,
        )
        self.upload.files.append(self.current)
        # The name on disk is ours, never the client's: a hostile file name cannot escape.
        self.current_path = self.uploads_dir / rel

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is None:
            if len(self.field_data) + (end - start) > _MAX_FIELD_BYTES:
                raise Invalid(f"form field {self.field_name!r} is too long")
            self.field_data += data[start:end]
            return
        assert self.current_path is not None
        self.ops.append((self.current_path, data[start:end]))
        self.pending_bytes += end - start
        self.current.size += end - start

    def on_part_end(self) -> None:
        if self.current is None:
            self.upload.fields[self.field_name] = self.field_data.decode("utf-8", "replace")
        elif self.current_path is not None:
            self.ops.append((self.current_path, None))

    def take_ops(self) -> list[tuple[Path, bytes | None]]:
        """The queued disk operations, in order; the queue starts empty again."""
        ops, self.ops, self.pending_bytes = self.ops, [], 0
        return ops


async def receive_multipart(
    *,
    chunks: AsyncIterator[bytes],
    content_type: str,
    uploads_dir: Path,
    max_bytes: int,
    form: FormFields,
) -> SpooledUpload:
    """Stream a multipart body to disk, counting every byte; over ``max_bytes`` raises TooLarge.

    A part outside ``form`` is refused as soon as its headers are read.

    On any error the upload's folder is deleted, so nothing partial is left behind.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise Invalid("send the files as multipart/form-data")
    uploads_dir.mkdir(parents=True, exist_ok=True)
    upload = SpooledUpload(dir=uploads_dir / upload_name())
    upload.dir.mkdir()
    receiver = _Receiver(upload, uploads_dir, form)
    writer = _Writer()
    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_end": receiver.on_end,
        },
    )
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            # Counted on the bytes actually received: a client whose Content-Length lied, or who
            # sent none (chunked), is cut off here.
            if received > max_bytes:
                raise TooLarge(_too_large(max_bytes))
            try:
                parser.write(chunk)
            except Invalid:
                raise
            except Exception as exc:
                # The parser's message may quote the body: not shown.
                raise Invalid("malformed multipart body") from exc
            if receiver.pending_bytes >= _WRITE_CHUNK or len(receiver.ops) >= 256:
                await anyio.to_thread.run_sync(writer.run, receiver.take_ops())
        parser.finalize()
        await anyio.to_thread.run_sync(writer.run, receiver.take_ops())
        if not receiver.ended:
            raise Invalid("the multipart body ended before its closing boundary")
    except BaseException:
        writer.close()
        discard(upload.dir)
        raise
    return upload


def _too_large(max_bytes: int) -> str:
    return f"the upload is larger than the server accepts ({max_bytes // (1024 * 1024)} MiB)"
