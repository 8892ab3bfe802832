"""A content-keyed cache of image embeddings: float16 rows in a memory-mapped, append-only file.

One store per (backbone, input size) under ``cache_dir/embeddings-{backbone}-{image_size}/``:
``vectors.f16`` holds N x dim float16 rows, ``keys.txt`` one key a line (line i names row i),
``meta.json`` the width, so a store is never reopened with another. Appends by several
processes and crash safety are ``svp.rowstore.RowStore``'s.
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
        self._mm: np.memmap | None = None
        self._mm_rows = 0
        self._check_meta()
        self.refresh()

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

    def add(self, keys: Sequence[str], vectors: Tensor | np.ndarray) -> int:
        """Append rows for keys not stored yet (a chunk sent twice is a no-op); return how many."""
        if isinstance(vectors, Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        arr = np.asarray(vectors)
        if arr.shape != (len(keys), self.dim):
            raise ValueError(f"expected {len(keys)} x {self.dim} vectors, got {arr.shape}")
        for key in keys:
            self._check_key(key)
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
                self._append([keys[i] for i in pick], np.ascontiguousarray(half[pick]).tobytes())
        return len(pick)

    def _view(self) -> np.memmap:
        n = len(self._keys)
        if self._mm is None or self._mm_rows < n:
            self._mm = np.memmap(self._data_path, dtype=np.float16, mode="r", shape=(n, self.dim))
            self._mm_rows = n
        return self._mm

    def load(self, keys: Sequence[str]) -> Tensor:
        """The vectors of ``keys`` as an N x dim float32 tensor; KeyError names a missing key."""
        rows = self._row_numbers(
            keys, f"no {self.backbone} embedding for {{key!r}}; embed it first"
        )
        if len(keys) == 0:
            return torch.empty(0, self.dim)
        # A gather copies out of the map: the tensor stays valid whatever happens to the file.
        return torch.from_numpy(np.asarray(self._view()[rows], dtype=np.float32))
