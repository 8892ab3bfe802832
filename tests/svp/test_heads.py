"""The linear proxy on embeddings: fitting, calibration, and the engine taking float inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from svp import (
    Strategy,
    evaluate,
    expected_calibration_error,
    fit_linear_head,
    predict,
    select,
)
from svp.data import to_float
from tests.svp.factories import BLOBS, blob_pool


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
