"""Training: the schedule, fitting and reporting, cancelling, forgetting events, process state."""

from __future__ import annotations

import sys

import pytest
import torch

from svp import (
    TrainConfig,
    TrainingCancelled,
    evaluate,
    forgetting_events,
    scaled_schedule,
    train,
)
from tests.svp.factories import blobs


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


def test_training_leaves_denormal_floats_as_it_found_them() -> None:
    # Training flushes denormals to zero (they slow x86 CPUs down); the switch is the process's,
    # and left on it broke whatever ran next in a worker or a test run (Hypothesis refused to
    # generate floats: "can't represent subnormal floats").

    x, y = blobs(n=24)
    train("tiny_cnn", x, y, TrainConfig.truncated(1, batch_size=8, seed=0), num_classes=3)
    assert sys.float_info.min / 2 > 0.0
    assert float(torch.tensor([sys.float_info.min], dtype=torch.float64).div(2)) > 0.0
