"""The embedding store as a bounded cache: loading in blocks into any dtype, fresh generations
that readers survive, and the record of shards taken in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from svp import embeddings
from svp.data import ImageStore
from svp.embeddings import EmbeddingStore
from tests.factories import png_bytes

DIM = 6


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vectors(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def filled(tmp_path: Path, n: int = 10) -> tuple[EmbeddingStore, list[str], torch.Tensor]:
    s = EmbeddingStore(tmp_path, "lite", 64, DIM)
    keys = [key(i) for i in range(n)]
    vecs = vectors(n)
    s.add(keys, vecs)
    return s, keys, vecs.half()


def test_load_in_blocks_into_any_dtype_or_a_preallocated_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, keys, half = filled(tmp_path)
    # Blocks of 3 rows: every block boundary and a short last block are crossed.
    monkeypatch.setattr(embeddings, "LOAD_BLOCK", 3)
    order = [keys[i] for i in (9, 0, 4, 4, 7, 1, 2, 8, 3, 5, 6)]
    expected = torch.stack([half[keys.index(k)] for k in order])
    as_half = s.load(order, dtype=torch.float16)
    assert as_half.dtype == torch.float16
    assert torch.equal(as_half, expected)
    assert torch.equal(s.load(order), expected.float())
    out = np.full((len(order), DIM), np.nan, dtype=np.float32)
    s.load_into(out, order)
    assert np.array_equal(out, expected.float().numpy())
    tensor_out = torch.empty(len(order), DIM, dtype=torch.float64)
    s.load_into(tensor_out, order)
    assert torch.equal(tensor_out, expected.double())
    with pytest.raises(ValueError, match="out must be 11 x 6"):
        s.load_into(torch.empty(3, DIM), order)
    with pytest.raises(KeyError, match="embed it first"):
        s.load_into(torch.empty(1, DIM), [key(99)])
    assert s.load([], dtype=torch.float16).shape == (0, DIM)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_loading_reads_the_rows_without_mapping_the_file(tmp_path: Path) -> None:
    """A mapped file's touched pages stay in the reader's RSS beside the copy it made (2.5 GB
    at 1M x 1280): the store reads rows with plain reads instead."""
    s, keys, half = filled(tmp_path, n=40)
    data = str((s.dir / "vectors.f16").resolve())
    order = [keys[i] for i in (39, 0, 1, 2, 17, 17, 3, 38)]
    assert torch.equal(s.load(order), torch.stack([half[keys.index(k)] for k in order]).float())
    assert data not in Path("/proc/self/maps").read_text()


def test_a_store_over_its_bound_starts_a_fresh_generation_that_readers_survive(
    tmp_path: Path,
) -> None:
    writer, keys, half = filled(tmp_path)
    reader = EmbeddingStore(tmp_path, "lite", 64, DIM)
    assert torch.equal(reader.load(keys[:2]), half[:2].float())
    size = writer.disk_bytes()
    assert size == 10 * DIM * 2 + 10 * 65
    assert not writer.restart_if_over(size)  # at the bound is not past it
    assert not writer.restart_if_over(0)  # 0: unbounded
    assert writer.restart_if_over(size - 1)
    assert len(writer) == 0
    assert writer.disk_bytes() == 0
    # A reader that has not looked since keeps reading the old generation's rows, whole.
    assert torch.equal(reader.load(keys), half.float())
    # At its next look it sees the fresh generation.
    assert reader.missing(keys[:3]) == keys[:3]
    assert len(reader) == 0
    # New rows land in the new generation and every store object reads them right.
    fresh = vectors(2, seed=5)
    reader.add([key(50), key(51)], fresh)
    assert torch.equal(writer.load([key(51), key(50)]), fresh.half().flip(0).float())
    reopened = EmbeddingStore(tmp_path, "lite", 64, DIM)
    assert reopened.keys == [key(50), key(51)]
    assert (reopened.dir / "vectors.f16").stat().st_size == 2 * DIM * 2


def test_shards_taken_are_recorded_with_their_rows_and_go_with_the_generation(
    tmp_path: Path,
) -> None:
    s = EmbeddingStore(tmp_path, "lite", 64, DIM)
    assert s.shards_taken() == set()
    s.add([key(1), key(2)], vectors(2), shards=["embeddings/lite-64/a.svpe"])
    # Rows all known already: the shard is still recorded as taken.
    assert s.add([key(2)], vectors(1), shards=["embeddings/lite-64/b.svpe"]) == 0
    other = EmbeddingStore(tmp_path, "lite", 64, DIM)
    assert other.shards_taken() == {"embeddings/lite-64/a.svpe", "embeddings/lite-64/b.svpe"}
    # A torn last line (a writer died mid-name) names no shard.
    with open(s.dir / "shards.txt", "ab") as fh:
        fh.write(b"embeddings/lite-64/c.sv")
    assert "embeddings/lite-64/c.svpe" not in other.shards_taken()
    assert s.restart_if_over(1)
    assert other.shards_taken() == set()
    with pytest.raises(ValueError, match="ASCII"):
        s.add([key(3)], vectors(1), shards=["bad\nname"])


def test_the_image_cache_restarts_over_its_bound_too(tmp_path: Path) -> None:
    a = ImageStore(tmp_path, size=4)
    a.add("one", png_bytes(1))
    b = ImageStore(tmp_path, size=4)
    before = b.load(["one"])
    assert a.restart_if_over(a.disk_bytes() - 1)
    assert torch.equal(b.load(["one"]), before)  # its index and its map are the old ones
    b.refresh()
    assert "one" not in b
    assert len(b) == 0
    b.add("two", png_bytes(2))
    assert a.load(["two"]).shape == (1, 3, 4, 4)
    assert a.keys == ["two"]
