"""Images as tensors: the content-keyed image cache, augmentation, the CIFAR-10 reader."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from svp import (
    ImageStore,
    augment,
    load_cifar10,
)

SHARED_CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def png_bytes(
    color: tuple[int, int, int] | int, size: tuple[int, int] = (40, 24), mode: str = "RGB"
) -> bytes:
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_store_round_trips_and_second_load_does_not_decode(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, size=8)
    red = png_bytes((255, 0, 0))
    grey = png_bytes(128, mode="L")
    path = tmp_path / "blue.png"
    path.write_bytes(png_bytes((0, 0, 255), size=(5, 50)))
    keys = store.add_many([(None, red), ("grey", grey), ("blue", path)])
    assert store.decoded == 3
    assert store.add(None, red) == keys[0]  # same bytes, same key: no second decode or row
    assert store.decoded == 3
    assert len(store) == 3
    x = store.load(["blue", keys[0], "grey"])
    assert x.dtype == torch.uint8
    assert x.shape == (3, 3, 8, 8)
    assert x[1, 0].eq(255).all()
    assert x[1, 1:].eq(0).all()
    assert x[0, 2].eq(255).all()
    assert x[0, :2].eq(0).all()
    assert x[2].eq(128).all()  # grey became three equal channels

    data_file = next(tmp_path.glob("images-8/images.u8"))
    mtime = data_file.stat().st_mtime_ns
    again = ImageStore(tmp_path, size=8)
    y = again.load(["blue", keys[0], "grey"])
    assert again.decoded == 0
    assert torch.equal(x, y)
    assert data_file.stat().st_mtime_ns == mtime  # served from the same file, nothing rewritten
    with pytest.raises(KeyError, match="not in the cache"):
        again.load(["missing"])
    # Another size is another store: nothing leaks between them.
    assert len(ImageStore(tmp_path, size=16)) == 0


def test_image_store_sees_rows_added_by_another_instance(tmp_path: Path) -> None:
    a = ImageStore(tmp_path, size=4)
    b = ImageStore(tmp_path, size=4)
    a.add("one", png_bytes((1, 2, 3)))
    b.add("two", png_bytes((4, 5, 6)))
    assert a.load(["two"])[0, :, 0, 0].tolist() == [4, 5, 6]
    assert b.load(["one", "two"]).shape == (2, 3, 4, 4)
    assert a.keys == ["one", "two"]


def test_image_store_recovers_from_a_writer_that_died_mid_key(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, size=4)
    store.add("one", png_bytes((1, 2, 3)))
    # A writer died after its pixels and half of its key line.
    with open(store.dir / "images.u8", "ab") as fh:
        fh.write(b"\x07" * (3 * 4 * 4))
    with open(store.dir / "keys.txt", "ab") as fh:
        fh.write(b"half-a-ke")
    reopened = ImageStore(tmp_path, size=4)
    assert reopened.keys == ["one"]
    reopened.add("two", png_bytes((4, 5, 6)))
    # The torn line is cut, not glued onto the next key, and "two" sits on its own row.
    assert (store.dir / "keys.txt").read_text().splitlines() == ["one", "two"]
    fresh = ImageStore(tmp_path, size=4)
    assert fresh.keys == ["one", "two"]
    assert fresh.load(["two"])[0, :, 0, 0].tolist() == [4, 5, 6]


def test_augment_crops_and_flips_batchwise() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    # Each output is a shifted (maybe mirrored) window of its own padded input.
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    # The pad is zeros, and across a batch both flips and shifts happen.
    big = torch.full((64, 1, 8, 8), 7, dtype=torch.uint8)
    aug = augment(big, torch.Generator().manual_seed(1))
    assert set(aug.unique().tolist()) == {0, 7}


@pytest.mark.cifar
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"CIFAR-10 not found at {SHARED_CIFAR}")
def test_cifar_reader(tmp_path: Path) -> None:
    data = load_cifar10(SHARED_CIFAR, "test", tmp_path)
    assert data.images.shape == (10000, 3, 32, 32)
    assert len(data.classes) == 10
    assert torch.bincount(data.labels).tolist() == [1000] * 10
