"""Selection strategies: uncertainty scores on hand-made numbers, greedy k-centres, and the
contract of select(), cold_start() and coreset() for every strategy."""

from __future__ import annotations

import math
import time

import pytest
import torch

from svp import (
    LinearHead,
    Strategy,
    TrainConfig,
    cold_start,
    coreset,
    create_model,
    entropy,
    kcenter_greedy,
    least_confidence,
    margin,
    select,
    train,
)
from svp.strategies import CLUSTERED, top_k
from tests.svp.factories import blobs


def test_least_confidence_ranks_flattest_rows_first() -> None:
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.4, 0.1], [1.0, 0.0, 0.0]]
    )
    scores = least_confidence(probs)
    assert top_k(scores, 2).tolist() == [1, 2]
    assert scores[3].item() == pytest.approx(0.0)


def test_entropy_is_finite_with_zero_probabilities() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    h = entropy(probs)
    assert torch.isfinite(h).all()
    assert h.tolist() == pytest.approx([0.0, math.log(2), math.log(3)])


def test_margin_prefers_close_top_two() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.45, 0.44, 0.11], [0.98, 0.01, 0.01]])
    assert top_k(margin(probs), 3).tolist() == [1, 0, 2]
    assert margin(probs)[1].item() == pytest.approx(1 - 0.01)


def test_kcenter_picks_farthest_first_and_never_a_labelled_point() -> None:
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [5.0, 5.0], [0.1, 0.1]])
    chosen, dists = kcenter_greedy(feats, [0], 2)
    assert chosen.tolist() == [3, 4]  # (10,10) is farthest from (0,0); then (5,5)
    assert dists[0].item() == pytest.approx(math.hypot(10, 10))
    assert dists[1].item() == pytest.approx(math.hypot(5, 5))
    chosen, _ = kcenter_greedy(feats, [3, 4], 4)
    assert not {3, 4} & set(chosen.tolist())
    assert len(set(chosen.tolist())) == 4


def test_kcenter_with_no_labels_starts_at_a_seeded_random_point() -> None:
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    a, _ = kcenter_greedy(feats, [], 5, generator=torch.Generator().manual_seed(7))
    b, _ = kcenter_greedy(feats, [], 5, generator=torch.Generator().manual_seed(7))
    assert a.tolist() == b.tolist()
    # Every later centre is the point farthest from those before it.
    centres = [int(a[0])]
    for j in a[1:].tolist():
        d = torch.cdist(feats, feats[centres]).min(1).values
        d[centres] = -1
        assert j == int(d.argmax())
        centres.append(j)


def test_kcenter_matches_brute_force_with_tiny_chunks() -> None:
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(2))
    labelled = list(range(0, 300, 7))
    fast, _ = kcenter_greedy(feats, labelled, 20, chunk_elems=300)
    centres = list(labelled)
    for j in fast.tolist():
        d = torch.cdist(feats, feats[centres]).min(1).values
        d[centres] = -1
        assert j == int(d.argmax())
        centres.append(j)


def test_kcenter_memory_is_linear_in_the_pool() -> None:
    # 20,000 points and 500 centres: a |selected| x |pool| float matrix would be 40 MB;
    # the running min vector and one column are 160 KB. Time stays small either way.
    feats = torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    chosen, dists = kcenter_greedy(feats, torch.arange(100), 500)
    assert len(set(chosen.tolist())) == 500
    assert (dists[1:] <= dists[:-1] + 1e-4).all()  # greedy distances never grow
    assert time.perf_counter() - start < 20


def test_same_seed_same_selection() -> None:
    x, y = blobs(n=120)
    labelled = list(range(30))

    def run() -> list[int]:
        fit = train(
            "tiny_cnn", x[labelled], y[labelled], TrainConfig.truncated(2, seed=3), num_classes=3
        )
        return select(fit.model, x, labelled, 10, "entropy", seed=3).indices

    assert run() == run()


@pytest.mark.parametrize("strategy", [s for s in Strategy if s != Strategy.FORGETTING])
def test_select_contract(strategy: Strategy) -> None:
    x, _y = blobs(n=90)
    labelled = torch.zeros(90, dtype=torch.bool)
    labelled[:20] = True
    model = create_model("tiny_cnn", num_classes=3).eval()
    res = select(model, x, labelled, 15, strategy, seed=1)
    assert len(res.indices) == len(set(res.indices)) == 15
    assert all(i >= 20 for i in res.indices)
    assert len(res.scores) == len(res.predicted_class) == len(res.predicted_prob) == 15
    assert all(c in (0, 1, 2) for c in res.predicted_class)
    assert all(p is not None and 0 < p <= 1 for p in res.predicted_prob)
    # Greedy and clustered strategies pick in coverage order, not score order.
    if strategy not in (Strategy.KCENTER, *CLUSTERED):
        assert res.scores == sorted(res.scores, reverse=True)


def test_select_scores_without_augmentation_in_eval_mode() -> None:
    x, _ = blobs(n=40)
    model = create_model("preact8", num_classes=3)
    model.train()
    a = select(model, x, [], 10, "least_confidence")
    b = select(model, x, [], 10, "least_confidence")
    # Eval mode and no augmentation: scoring is deterministic and leaves the BN statistics alone.
    assert a.indices == b.indices
    assert a.scores == b.scores
    assert model.training


def test_budget_larger_than_pool_raises() -> None:
    x, _ = blobs(n=20)
    with pytest.raises(ValueError, match="larger than the unlabelled pool"):
        select(create_model("tiny_cnn", num_classes=3), x, list(range(15)), 6, "margin")
    with pytest.raises(ValueError, match="needs a trained model"):
        select(None, x, [], 3, "entropy")


def test_cold_starts() -> None:
    x, _ = blobs(n=60)
    r = cold_start(x, 12, "random", seed=5)
    assert r.indices == cold_start(x, 12, "random", seed=5).indices
    assert r.predicted_class == [None] * 12
    k = cold_start(x, 3, "kcenter", seed=5)
    assert len(set(k.indices)) == 3
    # Three colours, three classes: pixel k-centres covers them before repeating one.
    _, y = blobs(n=60)
    assert len({int(y[i]) for i in k.indices}) == 3


def test_coreset_keeps_a_fraction() -> None:
    x, y = blobs(n=80)
    fit = train("tiny_cnn", x, y, TrainConfig.truncated(2), num_classes=3, track_forgetting=True)
    for strategy in ("least_confidence", "forgetting", "kcenter", "random"):
        kept = coreset(fit.model, x, 0.25, strategy, forgetting=fit.forgetting)
        assert len(kept.indices) == 20 == len(set(kept.indices))


def test_forgetting_core_set_keeps_never_learned_first() -> None:
    from svp.train import ForgettingTracker

    tracker = ForgettingTracker(4)
    for row in ([1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1]):
        tracker.update(torch.arange(4), torch.tensor(row, dtype=torch.bool))
    scores = tracker.scores()
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    kept = coreset(None, images, 0.75, Strategy.FORGETTING, forgetting=scores)
    assert kept.indices == [1, 0, 2]  # never learned, then forgotten once (ties by index)


class SlowModel(torch.nn.Module):
    """A model whose every forward pass takes at least ``delay`` seconds."""

    def __init__(self, inner: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.inner = inner
        self.delay = delay

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.delay)
        logits, feats = self.inner(x)
        return logits, feats


@pytest.mark.parametrize("strategy", list(Strategy))
def test_scoring_time_is_the_models_and_selecting_time_is_not(strategy: Strategy) -> None:
    x, _y = blobs(n=60)
    labelled = list(range(12))
    # Long enough that k-means on 60 points stays well under it on a loaded machine (0.64 s
    # measured at load average 19 on two cores).
    delay = 1.5
    model = SlowModel(create_model("tiny_cnn", num_classes=3), delay=delay)
    forgetting = torch.arange(60, dtype=torch.float32)
    res = select(model, x, labelled, 8, strategy, seed=2, scores=forgetting)
    # One forward pass scores the whole pool (batch 512): its time is scoring, never selecting.
    assert res.scoring_seconds >= delay
    assert res.selecting_seconds < delay


def test_every_strategy_selects_the_same_batch_for_the_same_seed() -> None:
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(200, 8, generator=g)
    head = LinearHead(torch.randn(4, 8, generator=g), torch.zeros(4))
    scores = torch.rand(200, generator=g)
    labelled = list(range(0, 200, 5))
    for strategy in Strategy:
        a = select(head, pool, labelled, 12, strategy, seed=4, scores=scores)
        b = select(head, pool, labelled, 12, strategy, seed=4, scores=scores)
        assert (a.indices, a.scores, a.details) == (b.indices, b.scores, b.details), strategy
        assert not set(a.indices) & set(labelled)
