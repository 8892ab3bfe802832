"""The embedding cache: float16 round trip, dedup, crash recovery, concurrent writers."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from svp import EmbeddingStore

DIM = 16


def key(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vectors_for(keys: list[str]) -> torch.Tensor:
    """A vector that depends only on its key, so any row can be checked wherever it landed."""
    rows = [torch.Generator().manual_seed(int(k[:12], 16)) for k in keys]
    return torch.stack([torch.randn(DIM, generator=g) for g in rows]) if keys else torch.empty(0)


def store(tmp_path: Path) -> EmbeddingStore:
    return EmbeddingStore(tmp_path, "lite", 128, DIM)


def test_round_trip_is_float16_and_survives_reopening(tmp_path: Path) -> None:
    keys = [key(i) for i in range(5)]
    vecs = vectors_for(keys) * 3
    s = store(tmp_path)
    assert s.add(keys, vecs) == 5
    assert len(s) == 5
    assert keys[2] in s
    expected = vecs.half().float()
    got = s.load(keys[::-1])
    assert got.dtype == torch.float32
    assert torch.equal(got, expected.flip(0))
    assert (s.dir / "vectors.f16").stat().st_size == 5 * DIM * 2
    assert s.dir == tmp_path / "embeddings-lite-128"
    again = store(tmp_path)
    assert again.keys == keys
    assert torch.equal(again.load(keys), expected)
    assert again.load([]).shape == (0, DIM)


def test_numpy_vectors_are_accepted(tmp_path: Path) -> None:
    s = store(tmp_path)
    vecs = np.arange(2 * DIM, dtype=np.float64).reshape(2, DIM)
    s.add(["a", "b"], vecs)
    assert torch.equal(s.load(["b"]), torch.from_numpy(vecs[1:]).float())


def test_adding_again_is_a_no_op_and_missing_dedups(tmp_path: Path) -> None:
    s = store(tmp_path)
    keys = [key(i) for i in range(4)]
    assert s.add(keys[:2], vectors_for(keys[:2])) == 2
    size = (s.dir / "vectors.f16").stat().st_size
    # A redelivered chunk: nothing is written twice.
    assert s.add(keys[:2], vectors_for(keys[:2])) == 0
    assert (s.dir / "vectors.f16").stat().st_size == size
    # Overlapping, with a key twice in the same call: only the new ones, once each.
    assert s.add([keys[1], keys[2], keys[2], keys[3]], vectors_for([*keys[1:3], *keys[2:]])) == 2
    assert s.keys == keys
    assert (s.dir / "keys.txt").read_text().splitlines() == keys
    assert s.missing([key(9), keys[0], key(8), key(9), keys[3]]) == [key(9), key(8)]


def test_bad_input_is_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(ValueError, match=f"expected 2 x {DIM}"):
        s.add(["a", "b"], torch.zeros(2, DIM + 1))
    with pytest.raises(ValueError, match="ASCII"):
        s.add(["a\nb"], torch.zeros(1, DIM))
    with pytest.raises(ValueError, match="finite"):
        s.add(["a"], torch.full((1, DIM), 1e6))
    with pytest.raises(ValueError, match="finite"):
        s.add(["a"], torch.full((1, DIM), float("nan")))
    assert len(s) == 0
    s.add(["a"], torch.zeros(1, DIM))
    with pytest.raises(KeyError, match="'nope'"):
        s.load(["a", "nope"])
    with pytest.raises(ValueError, match=f"holds {DIM}-d vectors"):
        EmbeddingStore(tmp_path, "lite", 128, DIM * 2)
    # Another backbone or input size is another store.
    assert len(EmbeddingStore(tmp_path, "lite", 224, DIM * 2)) == 0


def test_torn_key_line_is_dropped_and_the_next_key_starts_clean(tmp_path: Path) -> None:
    s = store(tmp_path)
    keys = [key(i) for i in range(3)]
    s.add(keys[:2], vectors_for(keys[:2]))
    reader = store(tmp_path)
    # A writer died after its rows and half a key line.
    with open(s.dir / "vectors.f16", "ab") as fh:
        fh.write(b"\x01" * (DIM * 2 + 5))
    with open(s.dir / "keys.txt", "ab") as fh:
        fh.write(key(99)[:20].encode())
    reopened = store(tmp_path)
    assert reopened.keys == keys[:2]
    assert reopened.add(keys[2:], vectors_for(keys[2:])) == 1
    assert (s.dir / "keys.txt").read_text().splitlines() == keys
    assert (s.dir / "vectors.f16").stat().st_size == 3 * DIM * 2
    fresh = store(tmp_path)
    assert fresh.keys == keys
    assert torch.equal(fresh.load(keys), vectors_for(keys).half().float())
    # A store opened before the crash sees the new key on its row, not a glued one.
    reader.refresh()
    assert reader.keys == keys
    assert torch.equal(reader.load(keys[2:]), vectors_for(keys[2:]).half().float())


def test_a_key_without_its_row_is_ignored_then_cut(tmp_path: Path) -> None:
    s = store(tmp_path)
    keys = [key(i) for i in range(3)]
    s.add(keys[:2], vectors_for(keys[:2]))
    with open(s.dir / "keys.txt", "ab") as fh:
        fh.write((key(42) + "\n").encode())
    reopened = store(tmp_path)
    assert key(42) not in reopened
    assert reopened.missing([key(42)]) == [key(42)]
    reopened.add(keys[2:], vectors_for(keys[2:]))
    fresh = store(tmp_path)
    assert fresh.keys == keys
    assert torch.equal(fresh.load(keys), vectors_for(keys).half().float())


def test_refresh_sees_rows_another_store_added(tmp_path: Path) -> None:
    a, b = store(tmp_path), store(tmp_path)
    a.add([key(1)], vectors_for([key(1)]))
    assert key(1) not in b
    b.refresh()
    assert key(1) in b
    assert b.missing([key(1), key(2)]) == [key(2)]
    # load refreshes by itself when it meets a key it does not know yet.
    a.add([key(2)], vectors_for([key(2)]))
    assert torch.equal(b.load([key(2)]), vectors_for([key(2)]).half().float())


def _append_chunks(root: str, worker: int, chunks: int, barrier: Any) -> None:
    s = EmbeddingStore(root, "lite", 128, DIM)
    barrier.wait()
    for c in range(chunks):
        # Own keys, plus a chunk both processes write (a task delivered twice).
        mine = [key(f"{worker}-{c}-{j}") for j in range(3)]
        shared = [key(f"shared-{c}")]
        s.add(mine + shared, vectors_for(mine + shared))


def test_two_processes_appending_at_once_both_land(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    chunks = 60
    procs = [
        ctx.Process(target=_append_chunks, args=(str(tmp_path), w, chunks, barrier))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = store(tmp_path)
    expected = [key(f"{w}-{c}-{j}") for w in range(2) for c in range(chunks) for j in range(3)]
    expected += [key(f"shared-{c}") for c in range(chunks)]
    assert sorted(s.keys) == sorted(expected)
    assert (s.dir / "vectors.f16").stat().st_size == len(expected) * DIM * 2
    assert torch.equal(s.load(expected), vectors_for(expected).half().float())
