"""Append-only, content-keyed rows of fixed width on disk, shared by processes: the mechanism
under the image cache (``svp.data.ImageStore``) and the embedding cache
(``svp.embeddings.EmbeddingStore``).

A store's folder holds a data file of fixed-width rows and ``keys.txt``, one key a line (line i
names row i). Any number of processes may append at once: an advisory ``flock`` serialises
writers, each writer re-reads the index under the lock, so rows are never interleaved and a key
is never written twice; readers take the lock shared while they read the index.

Crash safety rests on one order: a writer writes and fsyncs its rows before it appends their
keys. So a key line without its newline (a writer died mid-line) and a key whose row is not in
the data file are not trusted, and the next writer cuts both off before appending: a torn line
never joins the next key, and no key is shifted onto another key's row.

A store is a cache, and a cache is bounded: ``restart_if_over(max_bytes)`` starts a fresh
*generation* when its files pass the bound. Under the exclusive lock it writes a new token to
``generation`` and unlinks the data and key files; every other store object on the folder sees
the new token at its next look under the lock and forgets its index. Rows already handed out
stay valid: each object maps the data file through the handle it opened for its generation, and
an unlinked file lives on while it is open. Readers never see half a generation.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np


class RowStore:
    """Fixed-width rows keyed by one-line ASCII strings; subclasses say how a row is read."""

    def __init__(self, folder: Path, data_name: str, row_bytes: int) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self._data_path = folder / data_name
        self._keys_path = folder / "keys.txt"
        self._lock_path = folder / ".lock"
        self._generation_path = folder / "generation"
        self._row_bytes = row_bytes
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        # Bytes of keys.txt taken in: always the end of the last trusted line.
        self._index_offset = 0
        # The generation the index was taken from (None: nothing taken in yet), and the data
        # file of that generation, opened under the lock so it is never another generation's.
        self._generation: str | None = None
        self._data_file: IO[bytes] | None = None
        self._mm: np.memmap | None = None
        # Guards this object's index for threads; the flock guards the files for processes.
        self._mutex = threading.RLock()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def keys(self) -> list[str]:
        """Keys in row order."""
        return list(self._keys)

    @contextmanager
    def _locked(self, shared: bool = False) -> Iterator[None]:
        # Writers hold the lock exclusively; readers share it, so a reader never sees a writer
        # halfway through cutting off a dead writer's tail and appending in its place.
        with self._mutex, open(self._lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def refresh(self) -> None:
        """Take in the rows other processes (or other stores on this folder) appended."""
        with self._locked(shared=True):
            self._take_in()

    def _generation_files(self) -> list[Path]:
        """Files that belong to one generation besides the rows and keys (a subclass's)."""
        return []

    def _read_generation(self) -> str:
        try:
            return self._generation_path.read_text().strip()
        except FileNotFoundError:
            return ""  # a store that was never restarted

    def _forget(self) -> None:
        """Drop the index of a generation that is gone; mappings handed out stay valid."""
        self._keys = []
        self._rows = {}
        self._index_offset = 0
        self._mm = None
        if self._data_file is not None:
            self._data_file.close()
            self._data_file = None

    def _take_in(self) -> None:
        # Under the lock: no writer is active, so what is not trusted here is a dead writer's.
        generation = self._read_generation()
        if generation != self._generation:
            if self._generation is not None:
                self._forget()  # another process started a fresh generation
            self._generation = generation
        if self._data_file is None:
            with suppress(FileNotFoundError):
                self._data_file = open(self._data_path, "rb")  # noqa: SIM115  # kept open
        if not self._keys_path.exists():
            return
        with open(self._keys_path, "rb") as fh:
            fh.seek(self._index_offset)
            tail = fh.read()
        try:
            rows_on_disk = self._data_path.stat().st_size // self._row_bytes
        except FileNotFoundError:
            rows_on_disk = 0
        # The piece after the last newline is a torn line; a key past the data's last row
        # lost its row. Neither is taken in, and the next writer cuts both off.
        taken = 0
        for line in tail.split(b"\n")[:-1]:
            if len(self._keys) >= rows_on_disk:
                break
            key = line.decode("latin-1")
            self._rows.setdefault(key, len(self._keys))
            self._keys.append(key)
            taken += len(line) + 1
        self._index_offset += taken

    def disk_bytes(self) -> int:
        """Bytes of the current generation's rows and keys on disk."""
        total = 0
        for path in (self._data_path, self._keys_path):
            with suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def restart_if_over(self, max_bytes: int) -> bool:
        """Start a fresh, empty generation when the store's files hold more than ``max_bytes``
        (0: unbounded); True when it did. Checked under the lock, so two processes that both
        saw the store over its bound restart it once."""
        if max_bytes <= 0 or self.disk_bytes() <= max_bytes:
            return False
        with self._locked():
            if self.disk_bytes() <= max_bytes:
                return False
            # The new token first: a crash before the unlinks leaves the old files under a new
            # name, which every reader takes in again from the start (still whole rows).
            token = secrets.token_hex(8)
            tmp = self.dir / f".generation.{token}.tmp"
            tmp.write_text(token + "\n")
            os.replace(tmp, self._generation_path)
            for path in (self._data_path, self._keys_path, *self._generation_files()):
                path.unlink(missing_ok=True)
            self._take_in()
        return True

    def _rows_view(self, dtype: Any, row_shape: tuple[int, ...]) -> np.ndarray:
        """The rows taken in, memory-mapped from this generation's data file (read-only)."""
        with self._mutex:
            n = len(self._keys)
            if n == 0 or self._data_file is None:
                return np.empty((0, *row_shape), dtype=dtype)
            if self._mm is None or self._mm.shape[0] < n:
                self._mm = np.memmap(self._data_file, dtype=dtype, mode="r", shape=(n, *row_shape))
            return self._mm

    def _read_rows(self, rows: np.ndarray, dtype: Any, row_shape: tuple[int, ...]) -> np.ndarray:
        """Rows by number (any order, repeats allowed) copied out of the data file with plain
        reads, one per run of consecutive rows.

        A memory map's pages stay resident in the reading process once touched, counted in its
        RSS beside the copy it made of them (a round on 1M x 1280 float16 rows held 2.5 GB of
        mapped pages next to its 2.5 GB pool); read this way, only the copy stays.
        """
        out = np.empty((len(rows), *row_shape), dtype=dtype)
        if out.nbytes != len(rows) * self._row_bytes:
            raise ValueError(f"rows of {dtype} x {row_shape} are not {self._row_bytes} bytes")
        if len(rows) == 0:
            return out
        with self._mutex:
            if self._data_file is None or int(rows.max()) >= len(self._keys) or rows.min() < 0:
                raise IndexError(f"row numbers must be in 0..{len(self._keys) - 1}")
            # A descriptor of its own: a restart may close the store's handle meanwhile, and
            # the generation's (unlinked) file lives on while this one is open.
            fd = os.dup(self._data_file.fileno())
        try:
            order = np.argsort(rows, kind="stable")
            ordered = rows[order]
            in_order = bool((order == np.arange(len(rows))).all())
            target = out if in_order else np.empty_like(out)
            raw = memoryview(target.reshape(-1).view(np.uint8).data)
            starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)
            ends = np.append(starts[1:], len(rows))
            size = self._row_bytes
            for first, last in zip(starts.tolist(), ends.tolist(), strict=True):
                into = raw[first * size : last * size]
                offset = int(ordered[first]) * size
                done = 0
                while done < len(into):
                    got = os.preadv(fd, [into[done:]], offset + done)
                    if got == 0:
                        raise OSError(f"{self._data_path}: short read at byte {offset + done}")
                    done += got
            if not in_order:
                out[order] = target
        finally:
            os.close(fd)
        return out

    @staticmethod
    def _check_key(key: object) -> None:
        if not isinstance(key, str) or not key or "\n" in key or not key.isascii():
            raise ValueError(f"keys must be one non-empty line of ASCII, not {key!r}")

    @classmethod
    def _check_keys(cls, keys: Sequence[str]) -> None:
        """``_check_key`` for many keys at once: one pass in C when all are good (a million
        keys of a pulled shard batch), the key-by-key check to name a bad one."""
        try:
            joined = "".join(keys)
        except TypeError:
            joined = None
        if joined is None or "\n" in joined or not joined.isascii() or not all(keys):
            for key in keys:
                cls._check_key(key)

    def _append(self, keys: Sequence[str], data: bytes | memoryview) -> None:
        """Append rows (``len(keys)`` rows of bytes) and their keys; call under ``_locked()``
        with the index taken in, and keys that are not stored yet, each once."""
        start = len(self._keys)
        with open(self._data_path, "ab") as fh:
            # Bytes past the last trusted row are a dead writer's: cut them so rows stay aligned.
            fh.truncate(start * self._row_bytes)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        lines = ("\n".join(keys) + "\n").encode("ascii") if keys else b""
        with open(self._keys_path, "ab") as fh:
            # The same for a torn last line or keys without rows: otherwise the next key would
            # be glued onto a torn line, or shifted onto another key's row.
            fh.truncate(self._index_offset)
            fh.write(lines)
            fh.flush()
        # What was just written is the index's next part: taken in as written, not read back.
        self._keys.extend(keys)
        self._rows.update(zip(keys, range(start, start + len(keys)), strict=True))
        self._index_offset += len(lines)
        if self._data_file is None:
            self._data_file = open(self._data_path, "rb")  # noqa: SIM115  # kept open

    def _row_numbers(self, keys: Sequence[str], missing: str) -> np.ndarray:
        """Row numbers of stored keys; KeyError with ``missing`` (formatted with the first
        absent key) when one is not stored, even after a refresh."""
        absent = [k for k in keys if k not in self._rows]
        if absent:
            self.refresh()
            absent = [k for k in absent if k not in self._rows]
            if absent:
                raise KeyError(missing.format(key=absent[0]))
        return np.fromiter((self._rows[k] for k in keys), dtype=np.int64, count=len(keys))
