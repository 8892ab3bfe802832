"""The worker's text pieces in process: a fastText proxy's rows through every strategy, and the
core-set request a text proxy cannot serve (DESIGN 4c). The real processes: test_e2e_text.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import svp
from svp.strategies import Strategy
from tests.factories import Factory
from worker.inputs import ProbColumns, TrainSpec, join_probs


@pytest.mark.database_free
def test_fasttext_rows_serve_every_strategy() -> None:
    rng = np.random.default_rng(0)
    embeddings = torch.from_numpy(rng.normal(size=(40, 8))).float()
    probs = rng.dirichlet(np.ones(3), size=40)
    # Class 2 never labelled: fastText gives it 0, which must not become -inf.
    probs[:, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    rows = join_probs(embeddings, probs)
    model = ProbColumns(8)
    pred = svp.predict(model, rows)
    assert torch.allclose(pred.probs[:, :2], torch.from_numpy(probs[:, :2]).float(), atol=1e-5)
    assert torch.equal(pred.features, embeddings)
    labelled = torch.arange(30, 40)
    for strategy in Strategy:
        if strategy == Strategy.FORGETTING:
            continue
        result = svp.select(model, rows, labelled, 5, strategy, seed=1)
        assert len(set(result.indices)) == 5
        assert not set(result.indices) & set(labelled.tolist())
        assert all(c in (0, 1) for c in result.predicted_class), strategy
    # margin ranks by fastText's probabilities: the five closest calls among the candidates.
    margin = svp.select(model, rows, labelled, 5, "margin", seed=1)
    gaps = np.abs(probs[:30, 0] - probs[:30, 1])
    assert set(margin.indices) == set(np.argsort(gaps)[:5].tolist())


@pytest.mark.database_free
def test_train_spec_keeps_a_text_encoders_side_and_fasttexts_settings() -> None:
    linear = TrainSpec.from_proxy({"arch": "linear", "backbone": "glove_6b_50d", "image_size": 0})
    assert (linear.image_size, linear.embeds, linear.vdcnn) == (0, True, False)
    ft = TrainSpec.from_proxy(
        {"arch": "fasttext", "dim": 20, "epochs": 3, "lr": None, "word_ngrams": 1}
    )
    config = ft.fasttext_config(seed=7)
    assert (config.dim, config.epochs, config.word_ngrams, config.seed) == (20, 3, 1, 7)
    assert config.lr == 1.0  # fastText's own: the image proxies' lr setting is not for it
    assert TrainSpec.from_proxy({"arch": "vdcnn17"}).vdcnn


def test_forgetting_core_set_is_refused_for_text_proxies(factory: Factory) -> None:
    engineer = factory.user("engineer")
    project = factory.project(engineer, kind="text", classes=["pos", "neg"])
    c = factory.client(engineer)
    rows = "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6))
    r = c.post(
        f"/api/projects/{project.id}/items",
        files={"file": ("pool.csv", rows.encode(), "text/csv")},
        data={"split": "pool"},
    )
    assert r.status_code == 202, r.text
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    for proxy in ({}, {"arch": "fasttext"}):
        r = c.post(
            f"/api/projects/{project.id}/coresets",
            json={"fraction": 0.5, "strategy": "forgetting", "proxy": proxy},
        )
        assert r.status_code == 422, r.text
        assert "forgetting" in r.json()["detail"]
