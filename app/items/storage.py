"""Where bytes live: the content-addressed image store and the spool that uploads stream into.

Images are stored once per content hash at ``images/<h[:2]>/<h>``, whatever project holds them.
Uploads are streamed part by part from the request body into ``uploads/<random>/<n>`` under a
byte budget, so a large upload never sits in memory and a lying client is cut off at the limit.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import Invalid, TooLarge

_HASH = re.compile(r"[0-9a-f]{64}")
# Bytes gathered before a disk write: keeps thread hops few without holding much in memory.
_WRITE_CHUNK = 1024 * 1024
# Form fields are a word or two; anything longer is not a field this endpoint has.
_MAX_FIELD_BYTES = 1024
# More parts than any browser or script sends at once; a zip carries the big collections.
MAX_FILES_PER_UPLOAD = 10_000


def image_path(images_dir: Path, content_hash: str) -> Path:
    """The file of an image with this SHA-256 (hex); refuses anything that is not a hash."""
    if not _HASH.fullmatch(content_hash):
        raise ValueError(f"not a content hash: {content_hash!r}")
    return images_dir / content_hash[:2] / content_hash


class ImageFiles:
    """Writes image files by content hash; each appears whole (temp file + rename) or not at all.

    The uploaded bytes, as served back; the engine's decoded tensors are ``svp.ImageStore``.
    """

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self._dirs: set[str] = set()
        # Temp names unique to this store: two imports of the same content may race, and each
        # must rename only its own complete file.
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._count = 0

    def put(self, content_hash: str, data: bytes) -> bool:
        """Store the bytes unless that content is stored already; True when a file was written."""
        path = image_path(self.images_dir, content_hash)
        if path.exists():
            return False
        prefix = content_hash[:2]
        if prefix not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(prefix)
        self._count += 1
        tmp = path.parent / f".{content_hash}.{self._tag}-{self._count}.tmp"
        # os-level calls: an import writes tens of thousands of small files, and io.open's
        # buffering and isatty probe cost more than the write itself.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return True


@dataclass
class SpooledFile:
    """One file part of an upload, written to disk."""

    path: str  # relative to the uploads dir
    name: str  # the file name the client gave
    size: int
    field: str = "file"  # the form field it came in


@dataclass
class SpooledUpload:
    """An upload streamed to disk: its folder, its file parts and its plain fields."""

    dir: Path
    files: list[SpooledFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


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

    def __init__(self, upload: SpooledUpload, uploads_dir: Path) -> None:
        self.upload = upload
        self.uploads_dir = uploads_dir
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
        self.disposition = b""
        self.field_data = bytearray()
        self.current = None
        self.current_path = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
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
        if b"filename" not in options:
            return
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
) -> SpooledUpload:
    """Stream a multipart body to disk, counting every byte; over ``max_bytes`` raises TooLarge.

    On any error the upload's folder is deleted, so nothing partial is left behind.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise Invalid("send the files as multipart/form-data")
    uploads_dir.mkdir(parents=True, exist_ok=True)
    upload = SpooledUpload(dir=uploads_dir / secrets.token_hex(16))
    upload.dir.mkdir()
    receiver = _Receiver(upload, uploads_dir)
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
                raise Invalid(f"malformed multipart body: {exc}") from exc
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
