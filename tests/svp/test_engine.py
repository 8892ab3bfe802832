"""Behaviour of the selection engine on small generated data (no ../shared needed)."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svp import (
    ImageStore,
    Strategy,
    TrainConfig,
    TrainingCancelled,
    accuracy,
    augment,
    cold_start,
    coreset,
    create_model,
    entropy,
    evaluate,
    forgetting_events,
    kcenter_greedy,
    least_confidence,
    load_cifar10,
    margin,
    model_names,
    overlap,
    rankdata,
    scaled_schedule,
    select,
    spearman,
    train,
)
from svp.strategies import CLUSTERED, top_k

SHARED_CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def png_bytes(
    color: tuple[int, int, int] | int, size: tuple[int, int] = (40, 24), mode: str = "RGB"
) -> bytes:
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def blobs(
    n: int = 240, k: int = 3, side: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: each class brightens its own colour channel (survives crops and flips)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    x = torch.randint(0, 60, (n, 3, side, side), generator=g).to(torch.uint8)
    q = side // 4
    for i in range(n):
        x[i, int(labels[i]) % 3, q : side - q, q : side - q] = 220
    return x, labels


# --- strategies on hand-made numbers ---------------------------------------------------------


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


def test_forgetting_counts_on_a_known_sequence() -> None:
    # Rows are presentations, columns examples.
    correct = torch.tensor(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 1],
            [1, 0, 0, 1],
            [0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    counts, learned = forgetting_events(correct)
    assert counts.tolist() == [2, 0, 1, 0]
    assert learned.tolist() == [True, False, True, True]


def test_forgetting_core_set_keeps_never_learned_first() -> None:
    from svp.train import ForgettingTracker

    tracker = ForgettingTracker(4)
    for row in ([1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1]):
        tracker.update(torch.arange(4), torch.tensor(row, dtype=torch.bool))
    scores = tracker.scores()
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    kept = coreset(None, images, 0.75, Strategy.FORGETTING, forgetting=scores)
    assert kept.indices == [1, 0, 2]  # never learned, then forgotten once (ties by index)


# --- metrics ---------------------------------------------------------------------------------


def test_rankdata_averages_ties_and_spearman_agrees_with_definition() -> None:
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    a = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    b = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    ra, rb = rankdata(a), rankdata(b)
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_overlap_and_accuracy() -> None:
    assert overlap([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert accuracy(
        torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
    ) == pytest.approx(2 / 3)


# --- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_every_model_returns_logits_and_features(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=3).eval()
    with torch.inference_mode():
        logits, feats = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert feats.ndim == 2
    assert feats.shape[0] == 2
    assert feats.shape[1] == model.fc.in_features
    # The logits are the head applied to these very features.
    with torch.inference_mode():
        assert torch.allclose(model.fc(feats), logits, atol=1e-5)


def test_models_take_other_channel_counts_and_sizes() -> None:
    model = create_model("preact8", num_classes=4, in_channels=1).eval()
    with torch.inference_mode():
        logits, _ = model(torch.rand(3, 1, 24, 24))
    assert logits.shape == (3, 4)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet9000")


def test_paper_depths() -> None:
    def convs(name: str) -> int:
        return sum(
            isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            for m in create_model(name).modules()
        )

    # Basic blocks: 2 3x3 convs each plus the stem: depth - 1 3x3 convs (the fc is the last layer).
    for depth in (8, 20, 56, 110):
        assert convs(f"preact{depth}") == depth - 1
    # Bottlenecks: 18 blocks a stage x 3 stages, 3 convs each, + stem + fc = 164.
    blocks = [
        m for m in create_model("preact164").modules() if type(m).__name__ == "PreActBottleneck"
    ]
    assert len(blocks) * 3 + 2 == 164


# --- data -------------------------------------------------------------------------------------


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


# --- training and selection --------------------------------------------------------------------


def test_schedule_shapes() -> None:
    assert scaled_schedule(20) == ((1, 0.01), (10, 0.1), (15, 0.01), (20, 0.001))
    cfg = TrainConfig.paper()
    assert cfg.epochs == 181
    assert [cfg.lr_at(e) for e in (1, 2, 91, 92, 137, 181)] == [0.01, 0.1, 0.1, 0.01, 0.001, 0.001]
    with pytest.raises(ValueError, match="increase"):
        TrainConfig(lr_schedule=((5, 0.1), (3, 0.01)))


def test_trainer_fits_a_learnable_set_and_reports() -> None:
    x, y = blobs(n=120)
    seen: list[tuple[int, int]] = []
    cfg = TrainConfig.truncated(8, batch_size=32, seed=0)
    result = train(
        "tiny_cnn",
        x,
        y,
        cfg,
        num_classes=3,
        progress=lambda e, t, loss, acc: seen.append((e, t)),
        track_forgetting=True,
    )
    assert seen == [(e, 8) for e in range(1, 9)]
    assert result.stats.final_train_acc > 0.9
    assert len(result.stats.losses) == 8
    assert result.stats.losses[-1] < result.stats.losses[0]
    assert result.forgetting is not None
    assert result.forgetting.shape == (len(y),)
    assert not result.model.training
    xt, yt = blobs(n=120, seed=1)
    assert evaluate(result.model, xt, yt) > 0.9


def test_progress_callback_cancels() -> None:
    x, y = blobs(n=60)
    with pytest.raises(TrainingCancelled, match="after epoch 2"):
        train(
            "tiny_cnn", x, y, TrainConfig.truncated(5), num_classes=3, progress=lambda e, *_: e < 2
        )


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
    assert res.scoring_seconds >= 0
    assert res.selecting_seconds >= 0
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


def test_kcenter_memory_is_linear_in_the_pool() -> None:
    # 20,000 points and 500 centres: a |selected| x |pool| float matrix would be 40 MB;
    # the running min vector and one column are 160 KB. Time stays small either way.
    feats = torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    chosen, dists = kcenter_greedy(feats, torch.arange(100), 500)
    assert len(set(chosen.tolist())) == 500
    assert (dists[1:] <= dists[:-1] + 1e-4).all()  # greedy distances never grow
    assert time.perf_counter() - start < 20


def test_pixel_features_in_chunks_match_the_whole_pool_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cold start's k-centre features are made a chunk at a time (never a float copy of the
    # whole pool); chunk edges must not change them.
    from svp import strategies

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=gen)
    whole = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 8).flatten(1)
    monkeypatch.setattr(strategies, "PIXEL_CHUNK", 5)
    chunked = strategies.pixel_features(images)
    assert chunked.shape == (23, 192)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole)
    small = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=gen)
    torch.testing.assert_close(strategies.pixel_features(small), small.float().div(255).flatten(1))


def test_training_leaves_denormal_floats_as_it_found_them() -> None:
    # Training flushes denormals to zero (they slow x86 CPUs down); the switch is the process's,
    # and left on it broke whatever ran next in a worker or a test run (Hypothesis refused to
    # generate floats: "can't represent subnormal floats").
    import sys

    x, y = blobs(n=24)
    train("tiny_cnn", x, y, TrainConfig.truncated(1, batch_size=8, seed=0), num_classes=3)
    assert sys.float_info.min / 2 > 0.0
    assert float(torch.tensor([sys.float_info.min], dtype=torch.float64).div(2)) > 0.0
