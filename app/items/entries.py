"""What an upload holds, as entries the import reads one at a time, and the rules for their names.

A reader turns one uploaded part into entries: ``archive.py`` a zip's files, ``single_file`` a
plain upload. An entry known to be unsafe before it is read carries its ``problem`` and is refused
without being read; one that fails while read raises ``Rejected``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_NAME = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class Rejected(Exception):
    """A file that will not become an item; the message is the reason shown to the uploader."""


@dataclass
class Entry:
    """One file to import: its name and how to read its bytes (lazily: resuming skips cheaply)."""

    name: str
    read: Callable[[], bytes]
    problem: str | None = None  # known before reading: the entry is refused without being read

    def content(self) -> bytes:
        """The entry's bytes, or Rejected with the reason it was refused up front."""
        if self.problem:
            raise Rejected(self.problem)
        return self.read()


def single_file(path: Path, name: str, *, entry_limit: int) -> Entry:
    """A plain uploaded file as one entry, refused unread past ``entry_limit`` bytes."""
    problem = name_problem(name)
    if problem is None and path.stat().st_size > entry_limit:
        problem = f"too large: {path.stat().st_size} bytes for one image"
    return Entry(name=clean_name(name), read=path.read_bytes, problem=problem)


def refused(name: str, problem: str) -> Entry:
    """A whole uploaded part refused as one entry (an archive that cannot be opened)."""
    return Entry(name=clean_name(name), read=bytes, problem=problem)


def clean_name(name: str) -> str:
    """The name an item keeps: its path inside the archive with forward slashes."""
    cleaned = name.replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    return cleaned[:MAX_NAME] or "unnamed"


def name_problem(name: str) -> str | None:
    """Why a path from a client or an archive is refused, or None when it is safe."""
    path = name.replace("\\", "/")
    if not path:
        return "empty file name"
    if "\x00" in path:
        return "file name contains a NUL byte"
    if path.startswith("/") or _DRIVE.match(path):
        return "absolute path"
    if ".." in path.split("/"):
        return "path with '..'"
    if len(path) > MAX_NAME:
        return f"file name longer than {MAX_NAME} characters"
    return None
