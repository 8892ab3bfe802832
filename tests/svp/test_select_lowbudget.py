"""Low-budget selection on embeddings: cold starts, tiny budgets, diversified uncertainty and
auto, on synthetic features (Gaussian blobs and far outliers) standing in for a backbone's."""

from __future__ import annotations

import json
import time

import pytest
import torch

from svp import (
    AUTO_SWITCH_PER_CLASS,
    Strategy,
    cold_start,
    fit_linear_head,
    kcenter_greedy,
    margin,
    predict,
    select,
)
from svp.strategies import top_k
from tests.svp.factories import BLOBS, DIM, OUTLIERS, blob_of, blob_pool


def test_cold_start_on_embeddings() -> None:
    x, ids = blob_pool()
    for strategy in ("typiclust", "auto"):
        res = cold_start(x, BLOBS, strategy, seed=0)
        assert sorted(blob_of(ids, res.indices)) == list(range(BLOBS))
    auto = cold_start(x, 4, "auto")
    assert auto.details["auto_choice"] == "typiclust"
    assert auto.details["labels_per_class"] == 0.0
    # k-centres on embeddings, the control, takes the inputs as its features too.
    kc = cold_start(x, 4, "kcenter", seed=0)
    assert len(set(kc.indices)) == 4
    with pytest.raises(ValueError, match="needs a trained model"):
        select(None, x, [], 4, "margin_clusters")
    with pytest.raises(ValueError, match="a cold start is one of"):
        cold_start(x, 4, "margin")


@pytest.mark.parametrize(
    ("labels", "held_out"),
    [
        ([3], 0),  # one label
        ([2, 2, 2, 2], 0),  # one class present
        ([0, 1], 0),  # two classes, one example each: nothing can be held out
        ([0, 0, 1], 0),  # only class 0 could be held out, and a fold needs both
        ([0, 0, 1, 1, 5], 4),  # the singleton cannot be scored by a fold that never saw it
    ],
)
def test_tiny_budgets_fit_and_select(labels: list[int], held_out: int) -> None:
    x, ids = blob_pool(seed=6, outliers=0)
    idx = [int((ids == b).nonzero()[j]) for j, b in enumerate(labels)]
    proxy = fit_linear_head(x[idx], torch.tensor(labels), num_classes=BLOBS)
    assert proxy.calibration.held_out == held_out
    if held_out == 0:
        assert proxy.calibration.temperature == 1.0
        assert proxy.calibration.ece_before is None
    probs = predict(proxy.model, x).probs
    assert torch.isfinite(probs).all()
    assert set(probs.argmax(1).tolist()) <= set(labels)
    for strategy in ("auto", "typiclust", "margin_clusters", "margin", "entropy", "kcenter"):
        res = select(proxy.model, x, idx, 5, strategy, seed=0)
        assert len(set(res.indices)) == 5
        assert not set(res.indices) & set(idx)


def test_margin_clusters_spreads_a_batch_that_top_k_margin_crowds() -> None:
    g = torch.Generator().manual_seed(0)
    x, ids = blob_pool(seed=7, outliers=0)
    # Thirty near-copies of one point halfway between blobs 0 and 1: the most uncertain region.
    mid = (x[ids == 0].mean(0) + x[ids == 1].mean(0)) / 2
    dupes = mid + 0.01 * torch.randn(30, DIM, generator=g)
    x = torch.cat([x, dupes])
    ids = torch.cat([ids, torch.full((30,), -2)])
    labelled = [int((ids == b).nonzero()[j]) for b in range(BLOBS) for j in range(3)]
    proxy = fit_linear_head(x[labelled], ids[labelled], num_classes=BLOBS)
    plain = select(proxy.model, x, labelled, 10, "margin", seed=0)
    spread = select(proxy.model, x, labelled, 10, "margin_clusters", seed=0)
    assert sum(ids[i] == -2 for i in plain.indices) == 10  # top-k takes ten near-copies
    assert sum(ids[i] == -2 for i in spread.indices) == 1  # one stands for them all
    assert spread.details["clusters"] == 10
    assert spread.details["candidates"] == 100
    # Its first pick is still the most uncertain point of the pool.
    scores = margin(predict(proxy.model, x).probs.double())
    scores[labelled] = -1
    assert spread.indices[0] == int(top_k(scores, 1)[0])


def test_auto_switches_at_the_documented_point_and_says_why() -> None:
    x, ids = blob_pool(seed=8, outliers=0)
    k = BLOBS
    below = int(AUTO_SWITCH_PER_CLASS * k) - 1
    at = int(AUTO_SWITCH_PER_CLASS * k)
    assert at < len(ids) - 10
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).tolist()
    for count, want in ((below, "typiclust"), (at, "margin_clusters")):
        labelled = order[:count]
        proxy = fit_linear_head(x[labelled], ids[labelled], num_classes=k, calibrate=False)
        res = select(proxy.model, x, labelled, 10, Strategy.AUTO, seed=0)
        assert res.strategy == Strategy.AUTO
        assert res.details["auto_choice"] == want
        assert res.details["labels_per_class"] == pytest.approx(count / k, abs=1e-3)
        assert res.details["switch_at"] == AUTO_SWITCH_PER_CLASS
        assert res.details["reason"]
        assert json.loads(json.dumps(res.details)) == res.details
        # The same batch as asking for the chosen strategy directly.
        direct = select(proxy.model, x, labelled, 10, want, seed=0)
        assert direct.indices == res.indices
    # A project may move the switch; the result says which rule applied.
    labelled = order[:16]
    proxy = fit_linear_head(x[labelled], ids[labelled], num_classes=k, calibrate=False)
    res = select(proxy.model, x, labelled, 10, "auto", auto_switch_at=2.0)
    assert res.details["auto_choice"] == "margin_clusters"
    assert res.details["switch_at"] == 2.0


def test_kcenter_on_embeddings_is_the_control() -> None:
    x, ids = blob_pool(seed=9)
    chosen, _ = kcenter_greedy(x, [], BLOBS, generator=torch.Generator().manual_seed(0))
    # Farthest-first goes for the outliers: the behaviour typiclust exists to avoid.
    assert sum(int(ids[i]) == -1 for i in chosen.tolist()) >= OUTLIERS - 1


def test_typiclust_and_auto_scale_to_a_50k_pool() -> None:
    # Seconds, and memory linear in the pool: k-means on a 128-d projection, typicality only
    # inside the clusters a pick reaches, in row chunks.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(100, 1280, generator=g)
    x = centres[torch.randint(100, (50_000,), generator=g)] + torch.randn(50_000, 1280, generator=g)
    start = time.perf_counter()
    res = cold_start(x, 100, "auto", seed=0)
    cold = time.perf_counter() - start
    assert len(set(res.indices)) == 100
    start = time.perf_counter()
    res = select(None, x, res.indices, 100, "typiclust", seed=1)
    second = time.perf_counter() - start
    print(f"\n50,000 x 1280, batch 100: auto cold start {cold:.1f} s, typiclust {second:.1f} s")
    assert cold < 30
    assert second < 30
