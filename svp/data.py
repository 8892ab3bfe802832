"""Images as uint8 tensors: a content-keyed memory-mapped cache, the CIFAR-10 reader, augmentation.

The store keeps every image decoded once, at one fixed size, in an ``N x C x H x W`` uint8 numpy
memmap (``images.u8``) with a line-per-row index of keys (``keys.txt``); a pool that was decoded
before loads from the page cache instead of from JPEGs. Rows are only appended, so readers that
opened the file earlier keep a valid view while a writer grows it; appends by several processes,
crash safety and the bound (a fresh generation past ``restart_if_over``'s size) are
``svp.rowstore.RowStore``'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from svp.rowstore import RowStore

Source = bytes | str | os.PathLike[str]


def content_key(data: bytes) -> str:
    """The cache key of an image's bytes: their sha256, hex."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes with Pillow to an RGB ``3 x size x size`` uint8 array."""
    with Image.open(io.BytesIO(data)) as img:
        # JPEG draft mode decodes at a reduced scale straight away: big photos get cheap.
        img.draft("RGB", (size, size))
        # Grey, palette, CMYK and alpha images all become 3-channel RGB.
        rgb = ImageOps.exif_transpose(img).convert("RGB")
        if rgb.size != (size, size):
            # Squashed, not cropped: the annotator saw the whole image, so the model does too.
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _read(source: Source) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    return Path(source).read_bytes()


class ImageStore(RowStore):
    """A content-keyed uint8 image cache on disk: ``add`` decodes once, ``load`` maps."""

    CHANNELS = 3

    def __init__(self, cache_dir: str | os.PathLike[str], size: int = 32) -> None:
        if not 1 <= size <= 1024:
            raise ValueError(f"image size must be in 1..1024, not {size}")
        self.size = size
        # One store per size: the same cache dir can serve projects with different settings.
        super().__init__(
            Path(cache_dir) / f"images-{size}", "images.u8", self.CHANNELS * size * size
        )
        # Decodes done by this object: lets callers (and tests) see a load was served from cache.
        self.decoded = 0
        self.refresh()

    def _view(self) -> np.ndarray:
        return self._rows_view(np.uint8, (self.CHANNELS, self.size, self.size))

    def add(self, key: str | None, source: Source) -> str:
        """Decode and cache one image (bytes or a path) unless its key is cached; return the key."""
        return self.add_many([(key, source)])[0]

    def add_many(self, items: Iterable[tuple[str | None, Source]]) -> list[str]:
        """Cache ``(key or None, bytes or path)`` pairs; a None key means the bytes' sha256."""
        out: list[str] = []
        with self._locked():
            self._take_in()
            pending: list[tuple[str, np.ndarray]] = []
            fresh: set[str] = set()
            for key, source in items:
                data: bytes | None = None
                if key is None:
                    data = _read(source)
                    key = content_key(data)
                self._check_key(key)
                out.append(key)
                if key in self._rows or key in fresh:
                    continue
                pending.append((key, decode_image(data or _read(source), self.size)))
                self.decoded += 1
                fresh.add(key)
            if pending:
                self._append([k for k, _ in pending], b"".join(arr.tobytes() for _, arr in pending))
        return out

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row numbers of cached keys; KeyError names the first missing one."""
        return self._row_numbers(keys, "image {key!r} is not in the cache; add it first")

    def load(self, keys: Sequence[str] | None = None) -> Tensor:
        """Cached images of ``keys`` (None: all, in row order) as an N x 3 x H x W uint8 tensor."""
        mm = self._view()
        if keys is None:
            arr = np.array(mm[: len(self._keys)])
        else:
            rows = self.rows(keys)
            mm = self._view()
            if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                # A contiguous run is one sequential read instead of a gather.
                arr = np.array(mm[rows[0] : rows[0] + len(rows)])
            else:
                arr = mm[rows]
        return torch.from_numpy(np.ascontiguousarray(arr))


@dataclass(frozen=True)
class LabeledImages:
    """Images with integer labels and the class names they index."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    keys: tuple[str, ...]


def read_image_folder_zip(
    zip_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str], size: int = 32
) -> LabeledImages:
    """Read a ``<split>/<class>/<file>`` zip (CIFAR-10's layout) through the image cache."""
    zip_path = Path(zip_path)
    store = ImageStore(cache_dir, size)
    stat = zip_path.stat()
    signature = {"name": zip_path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    index_path = store.dir / f"index-{zip_path.stem}.json"
    # A small index of (keys, labels) per archive lets a second read skip the zip entirely.
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("signature") == signature and all(k in store for k in index["keys"]):
            return _labeled(store, index)
    names: list[str] = []
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/") and n.count("/") >= 2)
        classes = sorted({n.split("/")[-2] for n in names})
        class_ix = {c: i for i, c in enumerate(classes)}

        def items() -> Iterator[tuple[str | None, Source]]:
            for n in names:
                yield None, zf.read(n)

        keys = store.add_many(items())
    labels = [class_ix[n.split("/")[-2]] for n in names]
    index = {"signature": signature, "classes": classes, "keys": keys, "labels": labels}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(index_path)
    return _labeled(store, index)


def _labeled(store: ImageStore, index: dict[str, list[Any]]) -> LabeledImages:
    keys = index["keys"]
    return LabeledImages(
        images=store.load(keys),
        labels=torch.tensor(index["labels"], dtype=torch.int64),
        classes=tuple(index["classes"]),
        keys=tuple(keys),
    )


def load_cifar10(
    root: str | os.PathLike[str], split: str, cache_dir: str | os.PathLike[str], size: int = 32
) -> LabeledImages:
    """CIFAR-10 ``train`` or ``test`` from ``root/{split}.zip``, cached like any pool."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    return read_image_folder_zip(Path(root) / f"{split}.zip", cache_dir, size)


def augment(images: Tensor, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Random crop with ``pad`` zero padding and random horizontal flip, batch-wise, any dtype."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    wp = w + 2 * pad
    # Offsets are drawn on the CPU generator so a seed gives the same crops on any device.
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = oy[:, None] + torch.arange(h, device=images.device)
    cols = ox[:, None] + torch.arange(w, device=images.device)
    # A flip is a reversed column index, so crop and flip are one gather over the flattened
    # planes: 4x faster on CPU than advanced indexing and no per-image Python loop.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, idx).reshape(n, c, h, w)


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    if images.shape[0] == 0:
        raise ValueError("no images to compute statistics from")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def to_float(images: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1]; float inputs (embeddings) pass through as float32."""
    if images.is_floating_point():
        # Embeddings are already model inputs: scaling them would change what the head sees.
        return images.to(torch.float32)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 or floating point, not {images.dtype}")
    return images.to(torch.float32).div_(255.0)
