"""Clustering a pool: features without a model (raw pixels), typicality and TypiClust on
synthetic embeddings (Gaussian blobs and far outliers)."""

from __future__ import annotations

import pytest
import torch

from svp import (
    Strategy,
    clustering,
    cold_start,
    select,
    typicality,
    typiclust,
)
from tests.svp.factories import BLOBS, blob_of, blob_pool


def test_pixel_features_in_chunks_match_the_whole_pool_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cold start's k-centre features are made a chunk at a time (never a float copy of the
    # whole pool); chunk edges must not change them.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=gen)
    whole = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 8).flatten(1)
    monkeypatch.setattr(clustering, "PIXEL_CHUNK", 5)
    chunked = clustering.pixel_features(images)
    assert chunked.shape == (23, 192)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole)
    small = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=gen)
    torch.testing.assert_close(clustering.pixel_features(small), small.float().div(255).flatten(1))


def test_typiclust_takes_one_typical_point_per_blob_and_no_outlier() -> None:
    x, ids = blob_pool()
    res = cold_start(x, BLOBS, "typiclust", seed=0)
    picked = blob_of(ids, res.indices)
    assert sorted(picked) == list(range(BLOBS))
    assert res.predicted_class == [None] * BLOBS
    assert res.details["clusters"] == BLOBS
    # Each pick is its blob's densest point, within a small margin of the best.
    for i in res.indices:
        members = (ids == ids[i]).nonzero().squeeze(1)
        typ = typicality(x[members])
        assert float(typ[(members == i).nonzero()]) >= 0.95 * float(typ.max())


def test_typiclust_covers_every_blob_before_a_second_one() -> None:
    x, ids = blob_pool(seed=1)
    labelled: list[int] = []
    # Rounds of 3, as an annotator's small batches would be.
    while len({b for b in blob_of(ids, labelled) if b >= 0}) < BLOBS:
        res = select(None, x, labelled, 3, Strategy.TYPICLUST, seed=0)
        labelled += res.indices
        blobs = blob_of(ids, labelled)
        assert -1 not in blobs, "an outlier was picked"
        covered = {b for b in blobs if b >= 0}
        if len(covered) < BLOBS:
            assert len(blobs) == len(covered), f"a blob got a second pick first: {blobs}"
    assert len(labelled) <= BLOBS + 2


def test_typiclust_never_picks_labelled_or_twice_even_past_the_clusters() -> None:
    x, ids = blob_pool(seed=2)
    labelled = list(range(0, len(ids), 7))
    # More picks than clusters: it goes round the clusters again, fewest labels first.
    res = select(None, x, labelled, 120, "typiclust", seed=3)
    assert len(res.indices) == len(set(res.indices)) == 120
    assert not set(res.indices) & set(labelled)
    assert -1 not in blob_of(ids, res.indices)
    # The whole unlabelled pool: every point, once.
    rest = len(ids) - len(labelled)
    every = select(None, x, labelled, rest, "typiclust", seed=3)
    assert sorted(every.indices) == sorted(set(range(len(ids))) - set(labelled))


def test_typiclust_is_deterministic_by_seed() -> None:
    x, _ = blob_pool(seed=4, spread=3.0)
    a = typiclust(x, [0, 1, 2], 20, seed=5)
    b = typiclust(x, [0, 1, 2], 20, seed=5)
    assert a[0].tolist() == b[0].tolist()
    assert a[1].tolist() == b[1].tolist()
    assert a[2] == b[2]


def test_typicality_is_inverse_mean_distance_to_the_k_nearest() -> None:
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    want = 1.0 / d.topk(4, dim=1, largest=False).values.mean(1)
    got = typicality(x, k=4, chunk_elems=64)  # chunks of 2 rows
    assert torch.allclose(got.float(), want, rtol=1e-4)
    assert typicality(x[:1]).tolist() == [0.0]
