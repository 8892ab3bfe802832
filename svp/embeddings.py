"""A content-keyed cache of image embeddings: float16 rows in an append-only file on disk.

One store per (backbone, input size) under ``cache_dir/embeddings-{backbone}-{image_size}/``:
``vectors.f16`` holds N x dim float16 rows, ``keys.txt`` one key a line (line i names row i),
``meta.json`` the width, so a store is never reopened with another. Appends by several
processes, crash safety and the bound (fresh generations) are ``svp.rowstore.RowStore``'s.

Where the vectors' home is an object store (``worker/shards.py``), this store is a worker's
read-through copy of the shards there: ``shards.txt`` names the shards taken in, recorded in the
same locked step as their rows, so each shard is read once per generation.

``load`` reads the rows in blocks into one array of the caller's dtype (or ``load_into`` a
preallocated one): a million 384-d rows cost their output and one block, never a float16 copy of
the whole gather beside a float32 one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from svp.rowstore import RowStore

# Rows read at once by ``load_into``: 64k x 384 float16 is 48 MiB.
LOAD_BLOCK = 65_536


def all_finite(half: np.ndarray) -> bool:
    """Whether no float16 value is inf or NaN (its exponent bits all ones), read a block at a
    time through the bits (numpy's isfinite on float16 is three times slower)."""
    bits = half.view(np.uint16)
    for start in range(0, len(bits), LOAD_BLOCK):
        if ((bits[start : start + LOAD_BLOCK] & 0x7C00) == 0x7C00).any():
            return False
    return True


class EmbeddingStore(RowStore):
    """Float16 feature vectors of one backbone at one input size, keyed by image content hash."""

    def __init__(
        self, cache_dir: str | os.PathLike[str], backbone: str, image_size: int, dim: int
    ) -> None:
        if not backbone or "/" in backbone or backbone.startswith("."):
            # The name is part of a folder name.
            raise ValueError(f"not a usable backbone name: {backbone!r}")
        # A text encoder's store has no input side: 0.
        if image_size < 0 or dim < 1:
            raise ValueError(f"need image_size >= 0 and dim >= 1, not {image_size} and {dim}")
        self.backbone = backbone
        self.image_size = image_size
        self.dim = dim
        super().__init__(
            Path(cache_dir) / f"embeddings-{backbone}-{image_size}", "vectors.f16", 2 * dim
        )
        self._shards_path = self.dir / "shards.txt"
        self._check_meta()
        self.refresh()

    def _generation_files(self) -> list[Path]:
        return [self._shards_path]

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

    def add(
        self, keys: Sequence[str], vectors: Tensor | np.ndarray, *, shards: Sequence[str] = ()
    ) -> int:
        """Append rows for keys not stored yet (a chunk sent twice is a no-op); return how many.

        ``shards`` names the object-store shards these rows were read from: recorded with the
        rows, under the same lock, so a fresh generation never inherits the record without them.
        """
        if isinstance(vectors, Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        arr = np.asarray(vectors)
        if arr.shape != (len(keys), self.dim):
            raise ValueError(f"expected {len(keys)} x {self.dim} vectors, got {arr.shape}")
        self._check_keys(keys)
        self._check_keys(shards)
        with np.errstate(over="ignore"):
            half = arr if arr.dtype == np.float16 else arr.astype(np.float16)
        if not all_finite(half):
            # float16 tops out at 65504; a NaN or inf row would poison every head trained on it.
            raise ValueError("vectors must be finite and within float16's range")
        with self._locked():
            self._take_in()
            pick = self._new_rows(keys)
            if pick and len(pick) == len(keys):
                self._append(keys, np.ascontiguousarray(half).data.cast("B"))
            elif pick:
                rows = np.ascontiguousarray(half[pick])
                self._append([keys[i] for i in pick], rows.data.cast("B"))
            if shards:
                with open(self._shards_path, "ab") as fh:
                    fh.write("".join(f"{name}\n" for name in shards).encode("ascii"))
        return len(pick)

    def _new_rows(self, keys: Sequence[str]) -> list[int]:
        """Positions of the keys to append: not stored yet, the first of each in ``keys``."""
        distinct = set(keys)
        if len(distinct) == len(keys) and distinct.isdisjoint(self._rows):
            return list(range(len(keys)))  # all new (a fresh shard): set operations in C
        pick: list[int] = []
        fresh: set[str] = set()
        for i, key in enumerate(keys):
            if key not in self._rows and key not in fresh:
                fresh.add(key)
                pick.append(i)
        return pick

    def shards_taken(self) -> set[str]:
        """The shards whose rows this generation of the store holds (``add(..., shards=)``)."""
        with self._locked(shared=True):
            self._take_in()
            try:
                text = self._shards_path.read_bytes().decode("ascii")
            except FileNotFoundError:
                return set()
        # A torn last line (a writer died mid-line) names no shard: its shard is read again.
        return set(text.split("\n")[:-1])

    def _view(self) -> np.ndarray:
        return self._rows_view(np.float16, (self.dim,))

    def load(self, keys: Sequence[str], dtype: torch.dtype = torch.float32) -> Tensor:
        """The vectors of ``keys`` as an N x dim tensor of ``dtype`` (float32 unless asked);
        KeyError names a missing key."""
        out = torch.empty((len(keys), self.dim), dtype=dtype)
        self.load_into(out, keys)
        return out

    def load_into(self, out: Tensor | np.ndarray, keys: Sequence[str]) -> None:
        """Fill ``out`` (N x dim, any float dtype, a tensor on any device or an array) with the
        vectors of ``keys``, ``LOAD_BLOCK`` rows at a time; KeyError names a missing key."""
        if tuple(out.shape) != (len(keys), self.dim):
            raise ValueError(f"out must be {len(keys)} x {self.dim}, not {tuple(out.shape)}")
        rows = self._row_numbers(
            keys, f"no {self.backbone} embedding for {{key!r}}; embed it first"
        )
        for start in range(0, len(rows), LOAD_BLOCK):
            # Plain reads, not a gather from the map: no page of the file stays resident here.
            block = self._read_rows(rows[start : start + LOAD_BLOCK], np.float16, (self.dim,))
            if isinstance(out, Tensor):
                out[start : start + len(block)].copy_(torch.from_numpy(block))
            else:
                out[start : start + len(block)] = block
