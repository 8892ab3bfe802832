"""Low-budget selection on embeddings: the linear proxy, calibration, typiclust and auto.

Synthetic features stand in for a backbone's embeddings: well-separated Gaussian blobs (one per
class) plus a few far outliers, wider than the PCA's 128 dimensions so the projection runs too.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from svp import (
    AUTO_SWITCH_PER_CLASS,
    Strategy,
    cold_start,
    evaluate,
    expected_calibration_error,
    fit_linear_head,
    kcenter_greedy,
    margin,
    predict,
    select,
    typicality,
    typiclust,
)
from svp.data import to_float
from svp.strategies import top_k

BLOBS = 8
PER_BLOB = 40
DIM = 160
OUTLIERS = 6


def blob_pool(
    seed: int = 0, spread: float = 1.0, outliers: int = OUTLIERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and blob ids (-1 for outliers): blobs far apart, outliers farther still."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(BLOBS, DIM, generator=g)
    centres = 12.0 * centres / centres.norm(dim=1, keepdim=True)
    ids = torch.arange(BLOBS).repeat_interleave(PER_BLOB)
    x = centres[ids] + spread * torch.randn(len(ids), DIM, generator=g) / DIM**0.5 * 4
    # Outliers: each off in its own random direction, far from every blob.
    out = torch.randn(outliers, DIM, generator=g)
    out = 40.0 * out / out.norm(dim=1, keepdim=True)
    return torch.cat([x, out]), torch.cat([ids, torch.full((outliers,), -1)])


def blob_of(ids: torch.Tensor, picks: list[int]) -> list[int]:
    return [int(ids[i]) for i in picks]


# --- typiclust -------------------------------------------------------------------------------


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


# --- the linear proxy and calibration ---------------------------------------------------------


def test_float_inputs_pass_through_predict_unchanged() -> None:
    emb = torch.randn(5, 7) * 300
    before = emb.clone()
    assert torch.equal(to_float(emb), before)
    assert torch.equal(emb, before)  # not divided in place either
    assert to_float(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).eq(1.0).all()
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_float(torch.zeros(2, 2, dtype=torch.int64))


def test_linear_head_fits_separable_data_and_works_with_the_engine() -> None:
    x, ids = blob_pool(outliers=0)
    train = torch.arange(len(ids)) % 4 == 0
    # Class 9 of 10 has no label: it keeps its column with ~0 probability.
    proxy = fit_linear_head(x[train], ids[train], num_classes=BLOBS + 2)
    assert proxy.classes_seen == list(range(BLOBS))
    assert proxy.seconds < 30
    assert evaluate(proxy.model, x[~train], ids[~train]) == 1.0
    preds = predict(proxy.model, x)
    assert preds.probs.shape == (len(ids), BLOBS + 2)
    assert preds.probs[:, BLOBS:].max() < 1e-6
    assert torch.allclose(preds.probs.sum(1), torch.ones(len(ids)), atol=1e-5)
    # Its features are the normalised embeddings: what the clustering strategies see.
    assert torch.allclose(preds.features.norm(dim=1), torch.ones(len(ids)), atol=1e-5)
    for strategy in Strategy:
        if strategy == Strategy.FORGETTING:
            continue
        res = select(proxy.model, x, train, 12, strategy, seed=0)
        assert len(set(res.indices)) == 12
        assert not train[res.indices].any()
        assert all(c is not None and 0 <= c < BLOBS for c in res.predicted_class)
        json.dumps(res.details)


def test_binary_head_matches_logistic_regression() -> None:
    x, ids = blob_pool(seed=3, spread=8.0, outliers=0)
    keep = ids < 2
    xs, ys = x[keep], ids[keep]
    proxy = fit_linear_head(xs, ys, num_classes=3, calibrate=False)
    xn = torch.nn.functional.normalize(xs, dim=1).numpy()
    want = LogisticRegression(C=10.0, max_iter=1000).fit(xn, ys.numpy()).predict_proba(xn)
    got = predict(proxy.model, xs).probs
    assert np.allclose(got[:, :2].numpy(), want, atol=1e-3)
    assert got[:, 2].max() < 1e-6


def test_calibration_tempers_an_over_confident_head() -> None:
    # Overlapping classes and almost no regularisation: the head is sure of wrong answers.
    x, ids = blob_pool(seed=5, spread=14.0, outliers=0)
    proxy = fit_linear_head(x, ids, num_classes=BLOBS, c=1e4, seed=0)
    cal = proxy.calibration
    assert cal.held_out == len(ids)
    assert cal.folds == 5
    assert cal.temperature > 1.5
    assert cal.nll_after is not None
    assert cal.nll_before is not None
    assert cal.ece_after is not None
    assert cal.ece_before is not None
    assert cal.nll_after < cal.nll_before
    assert cal.ece_after < cal.ece_before
    json.dumps(cal.as_dict())
    # The module divides its logits by T: confidences drop, the argmax does not move.
    raw = fit_linear_head(x, ids, num_classes=BLOBS, c=1e4, calibrate=False)
    p_cal, p_raw = predict(proxy.model, x).probs, predict(raw.model, x).probs
    assert torch.equal(p_cal.argmax(1), p_raw.argmax(1))
    assert p_cal.max(1).values.mean() < p_raw.max(1).values.mean()


def test_expected_calibration_error_on_known_numbers() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    # Bin 0.9: accuracy 0.5 at confidence 0.9; bin 0.6: accuracy 1 at 0.6. (0.4 * 2 + 0.4 * 2) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


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


# --- diversified uncertainty and auto ---------------------------------------------------------


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
