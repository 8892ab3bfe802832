"""Selection's paths for pools of a million, run small: the thresholds that switch them on are
lowered for the test (k-means on a sample, typicality against a sample, k-centres on a sample,
chunked scoring and projection), and each is checked against what it stands in for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from svp import LinearHead, clustering, cold_start, fit_linear_head, predict, select, strategies
from svp.clustering import typicality
from tests.svp.factories import BLOBS, blob_of, blob_pool


def _head(x: torch.Tensor, ids: torch.Tensor, per_blob: int = 3) -> tuple[LinearHead, list[int]]:
    labelled = [int((ids == b).nonzero()[j]) for b in range(BLOBS) for j in range(per_blob)]
    return fit_linear_head(x[labelled], ids[labelled], num_classes=BLOBS).model, labelled


def test_cluster_space_in_chunks_is_the_projection_of_the_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, _ = blob_pool()
    monkeypatch.setattr(clustering, "ROW_CHUNK", 7)
    got = clustering.cluster_space(x.half(), seed=3)
    # What it replaces: normalise everything, fit on the (whole, small) pool, transform at once.
    rows = torch.nn.functional.normalize(x.half().float(), dim=1).numpy()
    want = PCA(n_components=128, svd_solver="randomized", random_state=3).fit(rows).transform(rows)
    assert got.dtype == np.float32
    assert got.shape == (x.shape[0], 128)
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=2e-4)


def test_kmeans_on_a_sample_assigns_every_row_to_its_nearest_centre(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, ids = blob_pool(outliers=0)
    space = clustering.cluster_space(x)
    monkeypatch.setattr(clustering, "KMEANS_FIT_ROWS", 60)
    labels = clustering.kmeans_labels(space, BLOBS, seed=1)
    assert (labels == clustering.kmeans_labels(space, BLOBS, seed=1)).all()
    # Fitted on 60 of 320 rows, yet each blob is one cluster and each cluster one blob.
    pairs = set(zip(ids.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == BLOBS
    assert len({c for _, c in pairs}) == BLOBS


def test_typicality_against_a_reference_leaves_each_row_out_of_its_own_neighbours() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    ref_rows = torch.tensor([0, 3, 4, 9, 12, 20, 21, 29])
    own = torch.full((30,), -1)
    own[ref_rows] = torch.arange(ref_rows.numel())
    got = typicality(x, k=3, reference=x[ref_rows], own=own)
    for i in range(30):
        d = torch.cdist(x[i : i + 1], x[ref_rows]).squeeze(0)
        d[ref_rows == i] = float("inf")
        want = 1.0 / (d.topk(3, largest=False).values.mean().double() + 1e-8)
        assert float(got[i]) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize("labelled_per_blob", [0, 2])
def test_typiclust_with_sampled_typicality_visits_the_same_clusters(
    monkeypatch: pytest.MonkeyPatch, labelled_per_blob: int
) -> None:
    x, ids = blob_pool()
    labelled = [
        int((ids == b).nonzero()[j]) for b in range(BLOBS) for j in range(labelled_per_blob)
    ]
    exact = select(None, x, labelled, BLOBS, "typiclust", seed=0)
    # Clusters of 40 measured against 10 of their members, scored 7 at a time: the same clusters
    # visited (with no label: one typical point per blob, no outlier), and past the first
    # blocks nothing labelled or taken twice.
    monkeypatch.setattr(clustering, "TYPICALITY_REFERENCE", 10)
    monkeypatch.setattr(clustering, "TYPICALITY_BLOCK", 7)
    res = select(None, x, labelled, BLOBS, "typiclust", seed=0)
    assert sorted(blob_of(ids, res.indices)) == sorted(blob_of(ids, exact.indices))
    assert res.details == exact.details
    if not labelled:
        assert sorted(blob_of(ids, res.indices)) == list(range(BLOBS))
    many = select(None, x, labelled, 200, "typiclust", seed=0)
    assert len(set(many.indices)) == 200
    assert not set(many.indices) & set(labelled)
    assert many.indices == select(None, x, labelled, 200, "typiclust", seed=0).indices


def test_kcenter_on_a_sample_covers_the_sample_farthest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, ids = blob_pool(seed=2)
    head, labelled = _head(x, ids)
    whole = select(head, x, labelled, 6, "kcenter", seed=0)
    assert whole.details == {"covered": x.shape[0] - len(labelled), "candidates": 302}
    # Work for 60 candidates at most: (24 labelled + 6) x 60 x 160 dims.
    monkeypatch.setattr(strategies, "KCENTER_WORK", 30 * 60 * 160)
    monkeypatch.setattr(strategies, "KCENTER_MIN_SAMPLE", 2)
    res = select(head, x, labelled, 6, "kcenter", seed=0)
    assert res.details == {"covered": 60, "candidates": 302}
    assert res.indices == select(head, x, labelled, 6, "kcenter", seed=0).indices
    assert len(set(res.indices)) == 6
    assert not set(res.indices) & set(labelled)
    # Each pick is the sampled candidate farthest (in the head's normalised features) from the
    # labelled items and the picks before it; the sample is the one the seed draws.
    feats = torch.nn.functional.normalize(x, dim=1)
    candidates = torch.tensor([i for i in range(x.shape[0]) if i not in set(labelled)])
    g = torch.Generator().manual_seed(0)
    sample = candidates[torch.randperm(302, generator=g)[:60].sort()[0]].tolist()
    centres = list(labelled)
    for j in res.indices:
        d = torch.cdist(feats[sample], feats[centres]).min(1).values
        assert j == sample[int(d.argmax())]
        centres.append(j)
        sample.remove(j)


def test_a_float16_pool_selects_what_its_float32_copy_selects() -> None:
    x, ids = blob_pool(seed=4)
    x16 = x.half()
    head, labelled = _head(x16.float(), ids)
    for strategy in ("auto", "typiclust", "margin_clusters", "kcenter", "margin"):
        a = select(head, x16, labelled, 10, strategy, seed=1)
        b = select(head, x16.float(), labelled, 10, strategy, seed=1)
        assert a.indices == b.indices, strategy
        assert a.predicted_class == b.predicted_class
    for strategy in ("typiclust", "kcenter"):
        assert cold_start(x16, 5, strategy).indices == cold_start(x16.float(), 5, strategy).indices


def test_a_linear_heads_pool_is_scored_in_chunks_and_never_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, ids = blob_pool(seed=5)
    x16 = x.half()
    head, _ = _head(x16.float(), ids)
    monkeypatch.setattr(strategies, "SCORE_CHUNK", 50)
    out = strategies.score_pool(head, x16)
    # The features are the pool itself (normalised where used), not a second N x D copy.
    assert out.normalise
    assert out.features.data_ptr() == x16.data_ptr()
    assert out.probs is not None
    assert out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs, predict(head, x16).probs)
    # Any other model keeps its features, at the pool's float width, chunk by chunk the same.
    wrapped = torch.nn.Sequential(head)
    wrapped.forward = head.forward  # type: ignore[method-assign]
    other = strategies.score_pool(wrapped, x16)
    assert not other.normalise
    assert other.features.dtype == torch.float16
    torch.testing.assert_close(
        other.features.float(), predict(head, x16).features, atol=1e-3, rtol=0
    )


def test_kcenter_covers_what_its_work_and_memory_bounds_allow() -> None:
    size = strategies.kcenter_sample_size
    # Small pools: every candidate.
    assert size(9_800, 200, 1000, 384) == 9_800
    # A million 384-d candidates: (labelled + budget) passes fit 2e10 multiply-adds...
    assert size(1_000_000, 0, 1000, 384) == 20_000_000_000 // (1000 * 384)
    assert size(1_000_000, 200, 100, 384) == 20_000_000_000 // (300 * 384)
    # ...never under 20 x the budget, never over 1 GiB of float32 rows, never under the budget.
    assert size(1_000_000, 2000, 1000, 384) == 20_000
    assert size(1_000_000, 2000, 1000, 1280) == 20_000
    assert size(1_000_000, 0, 1, 1280) == (1 << 30) // (4 * 1280)
    assert size(1_000_000, 0, 300_000, 1280) == 300_000
