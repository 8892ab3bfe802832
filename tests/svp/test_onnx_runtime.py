"""Image backbones through ONNX Runtime: torch's features within the stated tolerance, the export
cached by weights and versions and written atomically, and torch whenever ONNX cannot run."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from svp import backbones, load_backbone, register_backbone
from svp import onnx_runtime as ox
from svp.backbones import Backbone, BackboneSpec, load_embedder, resolve_runtime

pytestmark = [
    pytest.mark.database_free,
    pytest.mark.skipif(not ox.importable(), reason="onnxruntime and onnx are not installed"),
]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations and loads made by a test end with it."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    monkeypatch.setattr(backbones, "_LOADED", {})


def images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def onnx_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.onnx"))


class Tiny(nn.Module):
    """A small network with a strided convolution and pooling: quick to export."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_lite0_features_match_torch_within_the_tolerance(registry: None, tmp_path: Path) -> None:
    onnx = load_backbone("efficientnet_lite0", device="cpu", runtime="onnx", cache_dir=tmp_path)
    ref = load_backbone("efficientnet_lite0", device="cpu", runtime="torch")
    assert isinstance(onnx, ox.OnnxBackbone)
    assert onnx.runtime == "onnx"
    assert ref.runtime == "torch"
    assert onnx.spec == ref.spec
    # Natural-looking and noise images, at the spec side and resized from CIFAR's 32 px.
    smooth = torch.nn.functional.interpolate(images(3, 8, seed=1).float(), size=128)
    for x in (images(5, 128), smooth.to(torch.uint8), images(3, 32, seed=2)):
        expected = ref.embed(x, num_threads=1)
        got = onnx.embed(x, num_threads=1)
        assert ox.mismatch(expected, got) is None
        assert (got - expected).abs().max() <= ox.ATOL + ox.RTOL * expected.abs().max()
    # Any thread count and batch size gives the same features.
    x = images(7, 128, seed=3)
    assert torch.allclose(onnx.embed(x, batch_size=3, num_threads=2), onnx.embed(x), atol=1e-5)
    assert onnx.embed(images(0, 128)).shape == (0, 1280)
    assert onnx_files(tmp_path) == [ox.model_path(tmp_path, *_key(ref)).name]


def pad_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Pad"]


def test_lite0_export_has_its_same_padding_folded_into_the_convolutions(
    registry: None, tmp_path: Path
) -> None:
    onnx = load_backbone("efficientnet_lite0", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert isinstance(onnx, ox.OnnxBackbone)
    # The five strided convolutions each had a Pad before them in torch's export.
    assert pad_nodes(onnx.path) == []


class Padded(nn.Module):
    """Uneven zero padding before a convolution (folded), and reflection padding before another
    and zero padding before a pooling (both kept: a Conv's pads cannot say them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(nn.functional.pad(x, (0, 1, 2, 0)))
        x = self.b(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))
        x = nn.functional.max_pool2d(nn.functional.pad(x, (0, 1, 0, 1)), 2)
        return self.fc(x.mean((2, 3)))


def test_only_zero_padding_into_a_convolution_is_folded(tmp_path: Path) -> None:
    module = backbones._Frozen(Padded(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch_backbone = Backbone(BackboneSpec("padded", 5, 21), module, torch.device("cpu"), False)
    path = tmp_path / "padded.onnx"
    ox.export(torch_backbone.module, 21, path)
    # Three pads in torch; the one into a convolution is gone, added to that one's own padding.
    assert len(pad_nodes(path)) == 2
    x = images(6, 21)
    assert (
        ox.mismatch(torch_backbone.embed(x), ox.OnnxBackbone(torch_backbone, path).embed(x)) is None
    )
    # Folding again finds nothing more to fold, and changes nothing.
    assert ox.fold_padding(path, 21) == 0
    assert len(pad_nodes(path)) == 2


def _key(backbone: Backbone) -> tuple[str, int, nn.Module]:
    return backbone.spec.name, backbone.spec.image_size, backbone.module


def test_mismatch_names_the_difference() -> None:
    a = torch.ones(2, 3)
    assert ox.mismatch(a, a + 5e-5) is None
    assert "differ from torch's by up to 0.01" in str(ox.mismatch(a, a + 0.01))
    assert "shape (2, 2)" in str(ox.mismatch(a, a[:, :2]))
    assert ox.mismatch(a, torch.full((2, 3), float("nan"))) is not None


def tiny_backbone() -> Backbone:
    module = backbones._Frozen(Tiny(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return Backbone(BackboneSpec("tiny", 6, 20), module, torch.device("cpu"), False)


def test_the_export_is_reused_and_keyed_by_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ox.to_onnx(tiny_backbone(), tmp_path)
    (name,) = onnx_files(tmp_path)
    assert name.startswith("tiny-20px-")
    mtime = os.stat(tmp_path / name).st_mtime_ns

    def no_export(*_: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(ox, "export", no_export)
    again = ox.to_onnx(tiny_backbone(), tmp_path)
    assert again.path == first.path
    assert os.stat(tmp_path / name).st_mtime_ns == mtime
    monkeypatch.undo()
    # Other weights are another file: a stale export is never run.
    changed = tiny_backbone()
    with torch.no_grad():
        changed.module.net.fc.bias += 1
    ox.to_onnx(changed, tmp_path)
    assert len(onnx_files(tmp_path)) == 2
    # And so is another side.
    other = tiny_backbone()
    other.spec = BackboneSpec("tiny", 6, 24)
    ox.to_onnx(other, tmp_path)
    assert any(n.startswith("tiny-24px-") for n in onnx_files(tmp_path))
    # No temporary file is left behind.
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_corrupt_or_wrong_cached_file_is_rebuilt(tmp_path: Path) -> None:
    path = ox.to_onnx(tiny_backbone(), tmp_path).path
    path.write_bytes(b"not an onnx file")
    rebuilt = ox.to_onnx(tiny_backbone(), tmp_path)
    assert rebuilt.path == path
    assert path.stat().st_size > 100
    x = images(3, 20)
    assert ox.mismatch(tiny_backbone().embed(x), rebuilt.embed(x)) is None
    # A valid file of another network under this name: its features betray it.
    wrong = tiny_backbone()
    with torch.no_grad():
        wrong.module.net.fc.bias += 1
    ox.export(wrong.module, 20, path)
    assert ox.mismatch(tiny_backbone().embed(x), ox.OnnxBackbone(wrong, path).embed(x)) is not None
    fixed = ox.to_onnx(tiny_backbone(), tmp_path)
    assert ox.mismatch(tiny_backbone().embed(x), fixed.embed(x)) is None


def _export_in_a_process(folder: str, barrier: Any) -> None:
    backbone = tiny_backbone()
    barrier.wait()
    onnx = ox.to_onnx(backbone, Path(folder))
    assert ox.mismatch(backbone.embed(images(2, 20)), onnx.embed(images(2, 20))) is None


def test_processes_racing_to_export_each_get_a_whole_file(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_export_in_a_process, args=(str(tmp_path), barrier)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    (name,) = onnx_files(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != name]
    ox.to_onnx(tiny_backbone(), tmp_path)  # the survivor loads and checks


def test_a_registered_network_runs_through_onnx(registry: None, tmp_path: Path) -> None:
    register_backbone("tiny", Tiny, dim=6, image_size=20)
    onnx = load_backbone("tiny", device="cpu", runtime="auto", cache_dir=tmp_path)
    assert isinstance(onnx, ox.OnnxBackbone)
    assert load_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path) is onnx
    ref = load_backbone("tiny", device="cpu")
    assert type(ref) is Backbone
    x = images(4, 20)
    assert ox.mismatch(ref.embed(x), onnx.embed(x)) is None


def test_torch_is_the_fallback_and_says_why_once(
    registry: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register_backbone("tiny", Tiny, dim=6, image_size=20)
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made here")
    with caplog.at_level(logging.INFO, logger="svp.backbones"):
        got = load_backbone("tiny", device="cpu", runtime="onnx", cache_dir=blocked / "onnx")
        assert load_backbone("tiny", device="cpu", runtime="onnx", cache_dir=blocked) is got
    assert type(got) is Backbone
    lines = [r for r in caplog.records if "onnx_unavailable" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "backbone=tiny" in lines[0].getMessage()
    assert got.embed(images(2, 20)).shape == (2, 6)


def test_without_onnxruntime_auto_is_torch(
    registry: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_backbone("tiny", Tiny, dim=6, image_size=20)
    monkeypatch.setattr(ox, "importable", lambda: False)
    assert resolve_runtime("auto", torch.device("cpu")) == "torch"
    assert type(load_backbone("tiny", device="cpu", runtime="auto", cache_dir=tmp_path)) is Backbone
    with caplog.at_level(logging.INFO, logger="svp.backbones"):
        forced = load_backbone("tiny", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert type(forced) is Backbone
    assert "onnxruntime or onnx is not installed" in caplog.text
    assert onnx_files(tmp_path) == []


def test_the_runtime_is_resolved_per_device() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_runtime("auto", cpu) == "onnx"
    assert resolve_runtime("onnx", cpu) == "onnx"
    assert resolve_runtime("torch", cpu) == "torch"
    # GPU workers keep torch, whatever the setting.
    assert resolve_runtime("auto", gpu) == "torch"
    assert resolve_runtime("onnx", gpu) == "torch"
    with pytest.raises(ValueError, match="runtime is one of auto, onnx, torch"):
        resolve_runtime("tensorrt", cpu)  # type: ignore[arg-type]


def test_text_encoders_keep_torch(registry: None, tmp_path: Path) -> None:
    glove = load_embedder("glove_6b_50d", device="cpu", runtime="onnx", cache_dir=tmp_path)
    assert glove.embed(["a cat"]).shape == (1, 50)
    assert onnx_files(tmp_path) == []
