"""A bounded, read-through cache of objects on this machine's disk, shared by its processes.

A worker reading from a bucket keeps what it read under ``cache_dir/objects/``, so the next
round or embedding pass reads it from disk. Content-addressed keys (an image's SHA-256) never go
stale, so nothing is ever revalidated. The cache holds at most ``max_bytes``: past it, the files
least recently used (by mtime, touched on each hit) are deleted until it is back under 80% of
the bound. Files appear whole (temp file + rename), so processes sharing the folder never read
half a file, and an eviction racing a read costs that reader one fetch again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from app.storage.objects import check_key

# After an eviction the cache is filled to this share of its bound, so evictions are rare.
LOW_WATER = 0.8


class ReadThroughCache:
    """Bytes by key on local disk, fetched by ``fetch(key)`` on a miss."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._count = 0
        # Bytes this process believes are in the folder: a full scan sets it, writes add to it.
        self._size: int | None = None
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """The file that caches ``key``."""
        return self.folder / check_key(key)

    def get(self, key: str, fetch: Callable[[str], bytes]) -> bytes:
        """The bytes of ``key``: from disk when cached, else from ``fetch`` (then kept)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            pass
        else:
            self.hits += 1
            # Most recently used; a file evicted by another process just now is no error: the
            # bytes are in hand.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
            return data
        self.misses += 1
        data = fetch(key)
        self.put(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Keep the bytes (whole or not at all), evicting old files past the bound."""
        if self.max_bytes <= 0 or len(data) > self.max_bytes:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._count += 1
            tmp = path.parent / f".{path.name}.{self._tag}-{self._count}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            # A full or read-only cache disk is not the caller's failure: the bytes are in hand.
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            if self._size is None:
                self._size = self._scan_size()
            else:
                self._size += len(data)
            over = self._size > self.max_bytes
        if over:
            self.evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        out: list[tuple[float, int, Path]] = []
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                out.append((stat.st_mtime, stat.st_size, path))
        return out

    def _scan_size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def evict(self) -> int:
        """Delete least recently used files until the cache is under 80% of its bound; bytes
        freed."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.max_bytes * LOW_WATER)
        freed = 0
        for _, size, path in files:
            if total - freed <= target:
                break
            path.unlink(missing_ok=True)
            freed += size
        with self._lock:
            self._size = total - freed
        return freed
