"""A content-keyed cache of image embeddings: float16 rows in a memory-mapped, append-only file.

One store per (backbone, input size) under ``cache_dir/embeddings-{backbone}-{image_size}/``:
``vectors.f16`` holds N x dim float16 rows, ``keys.txt`` one key a line (line i names row i),
``meta.json`` the width, so a store is never reopened with another. Any number of processes may
append at once: an advisory ``flock`` serialises writers, and each writer re-reads the index
under the lock, so rows are never interleaved and a key is never written twice; readers take
the lock shared while they read the index.

Crash safety rests on one order: a writer writes and flushes its rows before it appends their
keys. So on open, a key line without its newline (a writer died mid-line) and a key whose row is
not in the data file are not trusted, and the next writer cuts both off before appending.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class EmbeddingStore:
    """Float16 feature vectors of one backbone at one input size, keyed by image content hash."""

    def __init__(
        self, cache_dir: str | os.PathLike[str], backbone: str, image_size: int, dim: int
    ) -> None:
        if not backbone or "/" in backbone or backbone.startswith("."):
            # The name is part of a folder name.
            raise ValueError(f"not a usable backbone name: {backbone!r}")
        if image_size < 1 or dim < 1:
            raise ValueError(f"image_size and dim must be positive, not {image_size} and {dim}")
        self.backbone = backbone
        self.image_size = image_size
        self.dim = dim
        self.dir = Path(cache_dir) / f"embeddings-{backbone}-{image_size}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._data_path = self.dir / "vectors.f16"
        self._keys_path = self.dir / "keys.txt"
        self._lock_path = self.dir / ".lock"
        self._row_bytes = 2 * dim
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        # Bytes of keys.txt taken in: always the end of the last trusted line.
        self._index_offset = 0
        self._mm: np.memmap | None = None
        self._mm_rows = 0
        # Guards this object's index for threads; the flock guards the files for processes.
        self._mutex = threading.RLock()
        self._check_meta()
        self.refresh()

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

    def _check_meta(self) -> None:
        meta_path = self.dir / "meta.json"
        meta = {"backbone": self.backbone, "image_size": self.image_size, "dim": self.dim}
        with self._locked():
            if meta_path.exists():
                found = json.loads(meta_path.read_text())
                if found.get("dim") != self.dim:
                    raise ValueError(
                        f"{self.dir} holds {found.get('dim')}-d vectors, not {self.dim}-d"
                    )
                return
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta) + "\n")
            tmp.replace(meta_path)

    def refresh(self) -> None:
        """Take in the rows other processes (or other stores on this folder) appended."""
        with self._locked(shared=True):
            self._take_in()

    def _take_in(self) -> None:
        # Under the lock: no writer is active, so what is not trusted here is a dead writer's.
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

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys not in the store (after a refresh), each once, in their first order."""
        self.refresh()
        out: list[str] = []
        seen: set[str] = set()
        for key in keys:
            if key not in self._rows and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def add(self, keys: Sequence[str], vectors: Tensor | np.ndarray) -> int:
        """Append rows for keys not stored yet (a chunk sent twice is a no-op); return how many."""
        if isinstance(vectors, Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        arr = np.asarray(vectors)
        if arr.shape != (len(keys), self.dim):
            raise ValueError(f"expected {len(keys)} x {self.dim} vectors, got {arr.shape}")
        for key in keys:
            if not isinstance(key, str) or not key or "\n" in key or not key.isascii():
                raise ValueError(f"keys must be one non-empty line of ASCII, not {key!r}")
        with np.errstate(over="ignore"):
            half = arr.astype(np.float16)
        if not np.isfinite(half).all():
            # float16 tops out at 65504; a NaN or inf row would poison every head trained on it.
            raise ValueError("vectors must be finite and within float16's range")
        with self._locked():
            self._take_in()
            pick: list[int] = []
            fresh: set[str] = set()
            for i, key in enumerate(keys):
                if key not in self._rows and key not in fresh:
                    fresh.add(key)
                    pick.append(i)
            if pick:
                self._append([keys[i] for i in pick], half[pick])
        return len(pick)

    def _append(self, keys: Sequence[str], rows: np.ndarray) -> None:
        start = len(self._keys)
        with open(self._data_path, "ab") as fh:
            # Bytes past the last trusted row are a dead writer's: cut them so rows stay aligned.
            fh.truncate(start * self._row_bytes)
            fh.write(np.ascontiguousarray(rows).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with open(self._keys_path, "ab") as fh:
            # The same for a torn last line or keys without rows: otherwise the next key would
            # be glued onto a torn line, or shifted onto another key's row.
            fh.truncate(self._index_offset)
            fh.write("".join(k + "\n" for k in keys).encode("ascii"))
            fh.flush()
        self._take_in()
        assert len(self._keys) == start + len(keys), "the index and the data disagree"

    def _view(self) -> np.memmap:
        n = len(self._keys)
        if self._mm is None or self._mm_rows < n:
            self._mm = np.memmap(self._data_path, dtype=np.float16, mode="r", shape=(n, self.dim))
            self._mm_rows = n
        return self._mm

    def load(self, keys: Sequence[str]) -> Tensor:
        """The vectors of ``keys`` as an N x dim float32 tensor; KeyError names a missing key."""
        absent = [k for k in keys if k not in self._rows]
        if absent:
            self.refresh()
            absent = [k for k in absent if k not in self._rows]
            if absent:
                raise KeyError(f"no {self.backbone} embedding for {absent[0]!r}; embed it first")
        if len(keys) == 0:
            return torch.empty(0, self.dim)
        rows = np.fromiter((self._rows[k] for k in keys), dtype=np.int64, count=len(keys))
        # A gather copies out of the map: the tensor stays valid whatever happens to the file.
        return torch.from_numpy(np.asarray(self._view()[rows], dtype=np.float32))
