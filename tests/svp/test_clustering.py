"""Clustering a pool: features without a model (raw pixels)."""

from __future__ import annotations

import pytest
import torch

from svp import clustering


def test_pixel_features_in_chunks_match_the_whole_pool_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cold start's k-centre features are made a chunk at a time (never a float copy of the
    # whole pool); chunk edges must not change them.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=gen)
    whole = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 8).flatten(1)
    monkeypatch.setattr(clustering, "PIXEL_CHUNK", 5)
    chunked = clustering.pixel_features(images)
    assert chunked.shape == (23, 192)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole)
    small = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=gen)
    torch.testing.assert_close(clustering.pixel_features(small), small.float().div(255).flatten(1))
