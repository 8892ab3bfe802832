"""The paper's text proxy: fastText (Joulin et al. 2017) trained from scratch each round.

``fit_fasttext(texts, labels, num_classes, config)`` trains a supervised fastText model with word
n-grams and returns a ``FastTextProxy`` whose ``predict_proba(texts)`` gives an ``N x K`` matrix
in the project's class order (row i, column k: class k), rows summing to 1, classes with no
labelled example at 0. Where the ``fasttext`` module cannot be imported, a scikit-learn hashing
vectoriser with a logistic-loss SGD classifier stands in; the result's ``backend`` says which ran.

Traps this module avoids (each has a test):
- fastText reads its training file front to back and never shuffles: a class-sorted file gave 13%
  accuracy. The rows are written in a seeded random order on every fit.
- fastText's ``DenseMatrix::uniform`` splits the input matrix into blocks of a tenth of its size
  and fills one block per training thread, so with one thread only the first 10% of the rows
  get their random start; the rest is whatever the allocator hands back. Fresh pages are zeros,
  reused heap memory is garbage: measured here, ``wordNgrams=1`` (a matrix of vocabulary rows
  only, small enough to come from the heap) stopped with "Encountered NaN" on every learning
  rate tried, and bigram models gave different probabilities on the same seed once the process
  had freed an earlier model. Training therefore runs with glibc's ``M_PERTURB`` set so every
  allocation starts zeroed (the rows past the first tenth start at 0, the same on every run):
  no NaN, and one seed on one thread gives the same model every time.
- Unigram models are trained with ``bucket=0`` (the binding forces it anyway), n-gram models
  with a bounded bucket count: the default 2,000,000 x dim float32 rows cost seconds a round.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

try:  # pragma: no branch - which arm runs depends on the installation
    import fasttext as _fasttext
except ImportError as exc:  # pragma: no cover - exercised where the wheel is absent
    _fasttext = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

Backend = Literal["fasttext", "sklearn"]
LABEL_PREFIX = "__label__"
# fastText splits lines on these (and treats the NUL as the end of a word); a newline inside a
# text would start a new training example, and predict() refuses one outright.
_BREAKS = re.compile(r"[\s\x00]+")
# Rows per predict call: bounds the Python lists fastText returns for a large pool.
PREDICT_CHUNK = 10_000


# glibc's mallopt parameter: allocations are filled with the complement of this byte's value.
_M_PERTURB = -6
_PERTURB_LOCK = threading.Lock()


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover - no C library by that name
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


_LIBC = _load_libc()


@contextmanager
def _zeroed_allocations() -> Iterator[None]:
    """Make every heap allocation start as zeros while fastText builds its matrices.

    The setting is the process's: other threads pay a memset per allocation meanwhile, so it is
    held only around the training call, under a lock, and always put back.
    """
    if _LIBC is None:  # pragma: no cover - not glibc: fastText's start rows stay undefined
        yield
        return
    with _PERTURB_LOCK:
        _LIBC.mallopt(_M_PERTURB, 0xFF)
        try:
            yield
        finally:
            _LIBC.mallopt(_M_PERTURB, 0)


@dataclass(frozen=True)
class FastTextConfig:
    """How to train the fastText proxy.

    Defaults measured on 20 Newsgroups (1,000 labelled posts of ~1,460 characters, 20 classes,
    one thread): fastText's own lr of 0.1 left the loss at log(20) and every probability at 0.05
    (long documents average hundreds of tiny random vectors, so the gradients start near zero);
    lr 1.0 with 50 epochs reached 44% test accuracy in 10 s with bigrams (unigrams: 47% in 2 s
    at lr 0.5); lr 0.2 reached 17%.
    """

    dim: int = 50
    epochs: int = 50
    word_ngrams: int = 2
    lr: float = 1.0
    seed: int = 0
    # Hash buckets for word n-grams (ignored, and 0, for unigrams: see the module's note).
    bucket: int = 200_000
    min_count: int = 1
    lowercase: bool = True
    # fastText's Hogwild threads; one thread with a seed is reproducible, more are not.
    num_threads: int = 1
    # "auto": fastText where importable, else the scikit-learn stand-in.
    backend: Literal["auto", "fasttext", "sklearn"] = "auto"

    def __post_init__(self) -> None:
        for name in ("dim", "epochs", "word_ngrams", "min_count", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, not {self.lr}")
        if self.bucket < 1:
            raise ValueError(f"bucket must be at least 1, not {self.bucket}")
        if self.backend not in ("auto", "fasttext", "sklearn"):
            raise ValueError(f"backend must be auto, fasttext or sklearn, not {self.backend!r}")


def fasttext_available() -> bool:
    """Whether the ``fasttext`` module (the fasttext-numpy2 wheel) imports here."""
    return _fasttext is not None


def clean_text(text: str, *, lowercase: bool = True) -> str:
    """One line of space-separated tokens, as fastText reads them."""
    line = _BREAKS.sub(" ", text).strip()
    return line.lower() if lowercase else line


@dataclass(frozen=True)
class FastTextProxy:
    """A trained text proxy: class probabilities in the project's order, and how it was made."""

    backend: Backend
    num_classes: int
    classes_seen: list[int]
    seconds: float
    config: FastTextConfig
    _model: Any

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``N x num_classes`` float64 probabilities; rows sum to 1, unseen classes are 0."""
        start = time.perf_counter()
        lines = [clean_text(t, lowercase=self.config.lowercase) for t in texts]
        out = np.zeros((len(lines), self.num_classes), dtype=np.float64)
        if not lines:
            return out
        if len(self.classes_seen) == 1:
            out[:, self.classes_seen[0]] = 1.0
        elif self.backend == "fasttext":
            for lo in range(0, len(lines), PREDICT_CHUNK):
                self._fasttext_chunk(lines[lo : lo + PREDICT_CHUNK], out[lo : lo + PREDICT_CHUNK])
        else:
            with threadpool_limits(self.config.num_threads):
                probs = self._model.predict_proba(lines)
            out[:, [int(c) for c in self._model.classes_]] = probs
        # fastText adds 1e-5 inside its log before exponentiating, so its rows sum to a little
        # over 1; renormalise in float64 so the strategies see a distribution.
        sums = out.sum(axis=1, keepdims=True)
        empty = sums[:, 0] <= 0
        if empty.any():
            # No token the model knows: say nothing rather than divide by zero.
            out[np.ix_(empty, self.classes_seen)] = 1.0 / len(self.classes_seen)
            sums = out.sum(axis=1, keepdims=True)
        out /= sums
        log.debug(
            "fasttext proxy scored %d texts in %.2fs", len(lines), time.perf_counter() - start
        )
        return out

    def _fasttext_chunk(self, lines: list[str], out: np.ndarray) -> None:
        labels, probs = self._model.predict(lines, k=-1)
        # predict(k=-1) lists every trained label, most probable first: map each back by name.
        for row, (names, ps) in enumerate(zip(labels, probs, strict=True)):
            cols = [int(name[len(LABEL_PREFIX) :]) for name in names]
            out[row, cols] = np.asarray(ps, dtype=np.float64)


def _check_inputs(texts: Sequence[str], labels: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(texts) == 0 or y.shape[0] != len(texts):
        raise ValueError(f"need one label per text and at least one text (got {len(texts)})")
    if k < 1:
        raise ValueError(f"num_classes must be at least 1, not {k}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in 0..{k - 1}")
    return y


def _fit_fasttext(lines: list[str], y: np.ndarray, config: FastTextConfig) -> Any:
    assert _fasttext is not None
    # Shuffled on every fit: fastText trains in file order, and a file sorted by class trains
    # a model that predicts the last class it read.
    order = np.random.default_rng(config.seed).permutation(len(lines))
    ngram_args = (
        {"wordNgrams": config.word_ngrams, "bucket": config.bucket}
        if config.word_ngrams > 1
        else {"wordNgrams": 1, "bucket": 0}
    )
    with tempfile.TemporaryDirectory(prefix="svp-fasttext-") as tmp:
        path = Path(tmp) / "train.txt"
        with path.open("w", encoding="utf-8") as f:
            for i in order:
                f.write(f"{LABEL_PREFIX}{y[i]} {lines[i]}\n")
        with _zeroed_allocations():
            return _fasttext.train_supervised(
                input=str(path),
                dim=config.dim,
                epoch=config.epochs,
                lr=config.lr,
                minCount=config.min_count,
                thread=config.num_threads,
                seed=config.seed,
                loss="softmax",
                verbose=0,
                **ngram_args,
            )


def _fit_sklearn(lines: list[str], y: np.ndarray, config: FastTextConfig) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline

    order = np.random.default_rng(config.seed).permutation(len(lines))
    model = make_pipeline(
        HashingVectorizer(
            ngram_range=(1, config.word_ngrams),
            n_features=2**20,
            alternate_sign=False,
            token_pattern=r"\S+",  # noqa: S106 - a regex, not a password
            lowercase=False,
        ),
        SGDClassifier(
            loss="log_loss",
            alpha=1e-5,
            max_iter=config.epochs,
            tol=None,
            random_state=config.seed,
        ),
    )
    with threadpool_limits(config.num_threads):
        model.fit([lines[i] for i in order], y[order])
    return model


def fit_fasttext(
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    config: FastTextConfig | None = None,
) -> FastTextProxy:
    """Train the text proxy from scratch on labelled texts (labels are class indices)."""
    config = config or FastTextConfig()
    y = _check_inputs(texts, labels, num_classes)
    start = time.perf_counter()
    lines = [clean_text(t, lowercase=config.lowercase) for t in texts]
    seen = [int(c) for c in np.unique(y)]
    backend: Backend = "fasttext"
    if config.backend == "sklearn":
        backend = "sklearn"
    elif _fasttext is None:
        if config.backend == "fasttext":
            raise RuntimeError(f"fastText is not importable here: {_IMPORT_ERROR}")
        backend = "sklearn"
        log.warning(
            "fastText is not importable (%s): the fasttext proxy runs scikit-learn's hashing "
            "vectoriser + SGD (log loss) instead",
            _IMPORT_ERROR,
        )
    model: Any = None
    if len(seen) > 1:
        # One class has nothing to separate: every prediction is that class, no model needed.
        model = (
            _fit_fasttext(lines, y, config)
            if backend == "fasttext"
            else _fit_sklearn(lines, y, config)
        )
    return FastTextProxy(
        backend=backend,
        num_classes=num_classes,
        classes_seen=seen,
        seconds=time.perf_counter() - start,
        config=config,
        _model=model,
    )
