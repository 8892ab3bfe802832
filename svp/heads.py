"""Light heads on frozen embeddings: the ``linear`` proxy, with temperature calibration.

A head is an ``nn.Module`` whose ``forward(x)`` returns ``(logits, features)`` like every model of
the zoo, so ``predict``, ``select`` and ``evaluate`` take an ``N x D`` float embedding pool where
they take uint8 images. The fit is scikit-learn's multinomial logistic regression (L-BFGS, L2) on
L2-normalised rows: deterministic, and seconds for a few thousand 1280-d rows on a CPU.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.nn import functional as F

from svp.config import SKLEARN_THREADS

# Logit of a class with no labelled example: its softmax probability is 0 in float32 for any
# temperature the calibration can choose, and it stays finite (no NaN in entropy or margins).
ABSENT_LOGIT = -1.0e4
# Temperatures searched, on a log scale; T = 1 (no change) is inside.
T_BOUNDS = (0.05, 20.0)
# A weak Gaussian prior on log T (weight 5 against the summed NLL: sd 0.32, about five held-out
# rows' worth) pulls T toward 1 when few rows are held out. Measured on CIFAR-10 embeddings,
# test ECE mean of 5 draws: 20 random labels 0.161 -> 0.098 (0.087 with T = 1), 20 typical
# ones 0.066 -> 0.054, 50 typical 0.080 -> 0.049, 100 random 0.031 -> 0.027; weights of 20 and
# 50 were worse from 50 labels on.
TEMPERATURE_PRIOR = 5.0


class LinearHead(nn.Module):
    """Logits of L2-normalised embeddings through a linear layer, divided by a temperature."""

    def __init__(self, weight: Tensor, bias: Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.temperature: Tensor

    @property
    def num_classes(self) -> int:
        """Number of output columns."""
        return self.fc.out_features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(calibrated logits, normalised embeddings)`` of an ``N x D`` float batch."""
        f = F.normalize(x.float(), dim=1)
        return self.fc(f) / self.temperature, f


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling's fit on out-of-fold logits, and what it changed there."""

    temperature: float
    # Labelled examples whose out-of-fold logits were scored; 0 when there were too few labels
    # to hold any out (then the temperature is 1 and the figures below are None).
    held_out: int
    folds: int
    ece_before: float | None
    ece_after: float | None
    nll_before: float | None
    nll_after: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """The stats as JSON-able numbers, for a round's metrics."""
        return {
            "temperature": self.temperature,
            "held_out": self.held_out,
            "folds": self.folds,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
        }


@dataclass(frozen=True)
class LinearProxy:
    """A fitted linear head (in eval mode), its calibration and the seconds the fit took."""

    model: LinearHead
    calibration: Calibration
    classes_seen: list[int]
    seconds: float


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| over equal-width confidence bins, weighted."""
    if probs.shape[0] == 0:
        raise ValueError("no rows to measure calibration on")
    conf, pred = probs.double().max(dim=1)
    correct = (pred == labels.to(pred.device)).double()
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins bin 0.
    which = (conf * bins).ceil().long().clamp(1, bins) - 1
    total = torch.zeros(bins, dtype=torch.float64)
    gap = torch.zeros(bins, dtype=torch.float64)
    total.index_add_(0, which, torch.ones_like(conf))
    gap.index_add_(0, which, correct - conf)
    return float(gap.abs().sum() / probs.shape[0])


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits)."""
    return float(F.cross_entropy(logits.double(), labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, *, prior: float = TEMPERATURE_PRIOR) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (Guo et al. 2017), plus
    ``prior`` x (log T)², a weak pull toward T = 1 that only matters with few rows."""
    z = logits.double()
    y = labels.long()

    def loss(log_t: float) -> float:
        nll_sum = float(F.cross_entropy(z / math.exp(log_t), y, reduction="sum"))
        return nll_sum + prior * log_t * log_t

    lo, hi = (math.log(b) for b in T_BOUNDS)
    # One parameter on a bounded interval: Brent's method is deterministic and needs no gradient.
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    # The objective is convex in log T near its optimum; keep T = 1 when it is as good.
    return math.exp(float(res.x)) if loss(float(res.x)) < loss(0.0) else 1.0


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, num_classes: int, c: float
) -> tuple[Tensor, Tensor]:
    """Weights and biases over ``num_classes`` columns; classes absent from ``y`` get ~0."""
    present = np.unique(y)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float32)
    bias = torch.full((num_classes,), ABSENT_LOGIT, dtype=torch.float32)
    if present.size == 1:
        # One class seen: nothing to separate, every row is that class.
        bias[int(present[0])] = 0.0
        return weight, bias
    clf = LogisticRegression(C=c, max_iter=1000, tol=1e-4)
    with warnings.catch_warnings():
        # Near-separable small sets stop at max_iter with a usable solution; the fit is the same
        # on every call, so the warning is noise here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    coef = torch.from_numpy(np.asarray(clf.coef_, dtype=np.float32))
    intercept = torch.from_numpy(np.asarray(clf.intercept_, dtype=np.float32))
    cls = [int(k) for k in clf.classes_]
    if len(cls) == 2:
        # Binary fits return one row w for class 1 against class 0: logits (-z/2, z/2) give the
        # same softmax as the logistic sigmoid(z).
        weight[cls[0]], bias[cls[0]] = -coef[0] / 2, -intercept[0] / 2
        weight[cls[1]], bias[cls[1]] = coef[0] / 2, intercept[0] / 2
    else:
        weight[cls], bias[cls] = coef, intercept
    return weight, bias


def _normalised(features: Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(features).float()
    if x.ndim != 2:
        raise ValueError(f"features must be N x D, not {tuple(x.shape)}")
    return F.normalize(x, dim=1).numpy()


def _out_of_fold_logits(
    x: np.ndarray, y: np.ndarray, num_classes: int, c: float, seed: int, max_folds: int
) -> tuple[Tensor, Tensor, int]:
    """Logits of each labelled row from a head fitted without it; rows that cannot be held out
    honestly are dropped (see below). Returns logits, their labels and the number of folds."""
    counts = np.bincount(y, minlength=num_classes)
    # Stratified folds need two examples of a class to put one on each side; the folds are
    # limited by the best-represented class (2..max_folds) so tiny budgets still calibrate.
    folds = int(min(max_folds, counts.max()))
    if folds < 2 or (counts >= 2).sum() < 2:
        return torch.empty(0, num_classes), torch.empty(0, dtype=torch.long), 0
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    with warnings.catch_warnings():
        # Classes with fewer members than folds are expected at small budgets.
        warnings.simplefilter("ignore", UserWarning)
        splits = list(skf.split(x, y))
    for train_ix, test_ix in splits:
        # sklearn's objective is C x the summed loss + |w|²/2: scaling C by n / n_train gives a
        # fold head the deployed head's balance of loss and penalty, so its logits are as sharp
        # (measured: test ECE at 100 random labels 0.079 -> 0.062).
        w, b = _fit_logistic(x[train_ix], y[train_ix], num_classes, c * len(y) / len(train_ix))
        seen = np.isin(y[test_ix], np.unique(y[train_ix]))
        # A held-out row of a class its fold never saw says nothing about the deployed head,
        # which has seen every labelled class: its NLL would be ~1e4 and drag T up for nothing.
        keep = test_ix[seen]
        if keep.size == 0:
            continue
        z = torch.from_numpy(x[keep]) @ w.T + b
        logits.append(z)
        labels.append(torch.from_numpy(y[keep]).long())
    if not logits:
        return torch.empty(0, num_classes), torch.empty(0, dtype=torch.long), folds
    return torch.cat(logits), torch.cat(labels), folds


def fit_linear_head(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int,
    *,
    seed: int = 0,
    c: float = 10.0,
    calibrate: bool = True,
    folds: int = 5,
) -> LinearProxy:
    """Fit the ``linear`` proxy on labelled embeddings: logistic regression, then temperature.

    Rows are L2-normalised (the module does the same at prediction). ``num_classes`` columns are
    always there; classes with no label get probability ~0. With ``calibrate``, T is fitted on
    out-of-fold logits from stratified k-fold (k = min(folds, largest class count)); with too few
    labels to hold any out, T stays 1 and the stats say so (``held_out == 0``).
    """
    with threadpool_limits(SKLEARN_THREADS):
        return _fit_linear_head(features, labels, num_classes, seed, c, calibrate, folds)


def _fit_linear_head(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int,
    seed: int,
    c: float,
    calibrate: bool,
    folds: int,
) -> LinearProxy:
    start = time.perf_counter()
    x = _normalised(features)
    y = torch.as_tensor(labels).long().numpy()
    if x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise ValueError(f"need one label per row and at least one row (got {x.shape[0]})")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    weight, bias = _fit_logistic(x, y, num_classes, c)
    temperature = 1.0
    stats = Calibration(1.0, 0, 0, None, None, None, None)
    if calibrate:
        z, zy, k = _out_of_fold_logits(x, y, num_classes, c, seed, folds)
        if zy.numel():
            temperature = fit_temperature(z, zy)
            stats = Calibration(
                temperature=temperature,
                held_out=int(zy.numel()),
                folds=k,
                ece_before=expected_calibration_error(F.softmax(z, dim=1), zy),
                ece_after=expected_calibration_error(F.softmax(z / temperature, dim=1), zy),
                nll_before=nll(z, zy),
                nll_after=nll(z / temperature, zy),
            )
        else:
            stats = Calibration(1.0, 0, k, None, None, None, None)
    model = LinearHead(weight, bias, temperature).eval()
    return LinearProxy(
        model=model,
        calibration=stats,
        classes_seen=[int(k) for k in np.unique(y)],
        seconds=time.perf_counter() - start,
    )
