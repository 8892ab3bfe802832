"""The model zoo: every model returns logits and the features they come from, at the paper's
depths."""

from __future__ import annotations

import pytest
import torch

from svp import (
    create_model,
    model_names,
)


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
