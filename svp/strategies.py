"""Selection strategies: pure scoring functions, greedy k-centres, select() and coreset().

Every score is "higher means pick first". Scoring runs the model in eval mode on the un-augmented
images; the labelled set is never chosen and nothing is chosen twice (asserted on every call).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from svp.train import predict


class Strategy(StrEnum):
    """How to rank candidates."""

    RANDOM = "random"
    LEAST_CONFIDENCE = "least_confidence"
    ENTROPY = "entropy"
    MARGIN = "margin"
    KCENTER = "kcenter"
    # Core-sets only: forgetting events are counted on labelled examples while a model trains.
    FORGETTING = "forgetting"


UNCERTAINTY = (Strategy.LEAST_CONFIDENCE, Strategy.ENTROPY, Strategy.MARGIN)


def least_confidence(probs: Tensor) -> Tensor:
    """1 - max probability: the flatter the row, the higher."""
    return 1.0 - probs.max(dim=1).values


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy of each row; 0·log 0 counts as 0, so one-hot rows give 0, never NaN."""
    # Named with its type: torch.special is untyped.
    h: Tensor = -torch.special.xlogy(probs, probs).sum(dim=1)
    return h


def margin(probs: Tensor) -> Tensor:
    """1 - (top probability - runner-up): a small margin scores high."""
    if probs.shape[1] < 2:
        return torch.zeros(probs.shape[0], dtype=probs.dtype)
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def uncertainty_scores(probs: Tensor, strategy: Strategy) -> Tensor:
    """Score rows of probabilities with an uncertainty strategy."""
    if strategy == Strategy.LEAST_CONFIDENCE:
        return least_confidence(probs)
    if strategy == Strategy.ENTROPY:
        return entropy(probs)
    if strategy == Strategy.MARGIN:
        return margin(probs)
    raise ValueError(f"{strategy.value} is not an uncertainty strategy")


def top_k(scores: Tensor, k: int) -> Tensor:
    """Positions of the k highest scores; ties go to the earlier position (stable, reproducible)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def _sq_dists(x: Tensor, sq: Tensor, centres: Tensor) -> Tensor:
    # ||x - c||² = ||x||² - 2 x·c + ||c||²: one matrix product instead of an N x C x D temporary.
    d = sq[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(1)[None, :]
    return d.clamp_min_(0.0)


def kcenter_greedy(
    features: Tensor,
    labeled: Tensor | Sequence[int],
    budget: int,
    *,
    generator: torch.Generator | None = None,
    chunk_elems: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Greedy k-centres (Sener & Savarese 2018): indices chosen in order and their distances.

    The labelled rows are the first centres; with none, the first centre is random (its distance
    is reported as 0). Memory is linear in the pool: one running min-distance vector, updated with
    each new centre, never a |selected| x |pool| matrix.
    """
    x = features.detach().float()
    n = x.shape[0]
    lab = torch.as_tensor(labeled, dtype=torch.int64).reshape(-1)
    if budget > n - lab.unique().numel():
        raise ValueError(
            f"budget {budget} exceeds the {n - lab.unique().numel()} unlabelled points"
        )
    sq = (x * x).sum(1)
    min_d = torch.full((n,), float("inf"))
    # Labelled centres in chunks, so the temporary is at most chunk_elems floats.
    step = max(1, chunk_elems // max(n, 1))
    for s in range(0, lab.numel(), step):
        min_d = torch.minimum(min_d, _sq_dists(x, sq, x[lab[s : s + step]]).min(1).values)
    # -1 marks centres: below every real distance, so argmax never picks one again.
    min_d[lab] = -1.0
    chosen = torch.empty(budget, dtype=torch.int64)
    dists = torch.empty(budget, dtype=torch.float64)
    for i in range(budget):
        if lab.numel() == 0 and i == 0:
            j = int(torch.randint(n, (1,), generator=generator).item())
            dist = 0.0
        else:
            j = int(torch.argmax(min_d).item())
            dist = float(min_d[j].item()) ** 0.5
        chosen[i] = j
        dists[i] = dist
        min_d = torch.minimum(min_d, _sq_dists(x, sq, x[j : j + 1]).squeeze(1))
        min_d[j] = -1.0
    return chosen, dists


def pixel_features(images: Tensor, side: int = 8) -> Tensor:
    """Raw-pixel features for a cold start: images average-pooled to side x side, in [0, 1]."""
    # 3 x 8 x 8 = 192 numbers an image keeps a 100k pool at 77 MB instead of 1.2 GB at 32 x 32.
    x = images.float().div_(255.0)
    if x.shape[-1] > side or x.shape[-2] > side:
        x = F.adaptive_avg_pool2d(x, side)
    return x.flatten(1)


@dataclass(frozen=True)
class SelectionResult:
    """A chosen batch in rank order, with the model's suggestion for each item, and timings."""

    strategy: Strategy
    indices: list[int]
    scores: list[float]
    # The selecting model's predicted class and its probability; None on a cold start.
    predicted_class: list[int | None]
    predicted_prob: list[float | None]
    scoring_seconds: float
    selecting_seconds: float
    # Uncertainty strategies: the score of every candidate (unlabelled item), for comparisons.
    candidates: Tensor | None = None
    candidate_scores: Tensor | None = None


def labeled_mask(labeled: Tensor | Sequence[int], n: int) -> Tensor:
    """A boolean mask of length n from a mask or from indices."""
    t = torch.as_tensor(labeled)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ValueError(f"labelled mask has shape {tuple(t.shape)}, pool has {n} items")
        return t.clone()
    mask = torch.zeros(n, dtype=torch.bool)
    idx = t.to(torch.int64).reshape(-1)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError("labelled index out of range of the pool")
    mask[idx] = True
    return mask


def _check(indices: Tensor, mask: Tensor, budget: int) -> None:
    chosen = indices.tolist()
    assert len(chosen) == budget, f"chose {len(chosen)} of a budget of {budget}"
    assert len(set(chosen)) == len(chosen), "an item was chosen twice"
    assert not bool(mask[indices].any()), "an already labelled item was chosen"


def _candidate_probs(
    model: nn.Module | None,
    images: Tensor,
    candidates: Tensor,
    *,
    batch_size: int,
    device: str | torch.device | None,
) -> tuple[Tensor | None, float]:
    """The model's class probabilities over the candidates (for suggestions) and the seconds
    scoring took; nothing without a model."""
    if model is None:
        return None, 0.0
    preds = predict(model, images[candidates], batch_size=batch_size, device=device)
    return preds.probs, preds.seconds


def select(
    model: nn.Module | None,
    images: Tensor,
    labeled: Tensor | Sequence[int],
    budget: int,
    strategy: Strategy | str,
    *,
    seed: int = 0,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    scores: Tensor | None = None,
) -> SelectionResult:
    """Choose ``budget`` unlabelled items of a uint8 pool with a strategy and a trained model.

    ``labeled`` is a boolean mask over the pool or a list of indices. With ``model=None`` (cold
    start) only ``random`` and ``kcenter`` (on raw pixels) work. ``scores`` supplies per-item
    scores for the whole pool instead of a model (e.g. forgetting counts for a core-set).
    """
    strategy = Strategy(strategy)
    n = images.shape[0]
    mask = labeled_mask(labeled, n)
    candidates = (~mask).nonzero().squeeze(1)
    if budget < 1:
        raise ValueError(f"budget must be at least 1, not {budget}")
    if budget > candidates.numel():
        raise ValueError(
            f"budget {budget} is larger than the unlabelled pool ({candidates.numel()} items)"
        )
    gen = torch.Generator().manual_seed(seed)
    probs: Tensor | None = None
    cand_scores: Tensor | None = None
    scoring = 0.0
    start = time.perf_counter()
    if strategy == Strategy.RANDOM:
        cand_scores = torch.rand(candidates.numel(), generator=gen, dtype=torch.float64)
        probs, scoring = _candidate_probs(
            model, images, candidates, batch_size=batch_size, device=device
        )
        start = time.perf_counter()
        pos = top_k(cand_scores, budget)
        chosen, chosen_scores = candidates[pos], cand_scores[pos]
    elif strategy in UNCERTAINTY:
        if model is None:
            raise ValueError(
                f"{strategy.value} needs a trained model; cold starts use random or kcenter"
            )
        preds = predict(model, images[candidates], batch_size=batch_size, device=device)
        probs, scoring = preds.probs, preds.seconds
        start = time.perf_counter()
        cand_scores = uncertainty_scores(probs.double(), strategy)
        pos = top_k(cand_scores, budget)
        chosen, chosen_scores = candidates[pos], cand_scores[pos]
    elif strategy == Strategy.KCENTER:
        if model is None:
            feats = pixel_features(images)
        else:
            preds = predict(model, images, batch_size=batch_size, device=device)
            feats, scoring = preds.features, preds.seconds
            probs = preds.probs[candidates]
        start = time.perf_counter()
        chosen, chosen_scores = kcenter_greedy(
            feats, mask.nonzero().squeeze(1), budget, generator=gen
        )
        # Position of each chosen item among the candidates, for the suggestion lookup below.
        pos = torch.searchsorted(candidates, chosen)
    elif strategy == Strategy.FORGETTING:
        if scores is None or scores.shape != (n,):
            raise ValueError("forgetting needs per-item scores (forgetting counts) for the pool")
        cand_scores = scores[candidates].double()
        probs, scoring = _candidate_probs(
            model, images, candidates, batch_size=batch_size, device=device
        )
        start = time.perf_counter()
        pos = top_k(cand_scores, budget)
        chosen, chosen_scores = candidates[pos], cand_scores[pos]
    else:  # pragma: no cover - the Enum is closed
        raise ValueError(f"unknown strategy {strategy}")
    selecting = time.perf_counter() - start
    _check(chosen, mask, budget)
    if probs is not None:
        top = probs[pos].max(dim=1)
        pred_class: list[int | None] = [int(c) for c in top.indices.tolist()]
        pred_prob: list[float | None] = [float(p) for p in top.values.tolist()]
    else:
        pred_class, pred_prob = [None] * budget, [None] * budget
    return SelectionResult(
        strategy=strategy,
        indices=chosen.tolist(),
        scores=[float(s) for s in chosen_scores.tolist()],
        predicted_class=pred_class,
        predicted_prob=pred_prob,
        scoring_seconds=scoring,
        selecting_seconds=selecting,
        candidates=candidates if cand_scores is not None else None,
        candidate_scores=cand_scores,
    )


def cold_start(
    images: Tensor, budget: int, strategy: Strategy | str = Strategy.RANDOM, *, seed: int = 0
) -> SelectionResult:
    """The first batch, before any label: random, or k-centres on raw pixels."""
    strategy = Strategy(strategy)
    if strategy not in (Strategy.RANDOM, Strategy.KCENTER):
        raise ValueError(f"a cold start is random or kcenter, not {strategy.value}")
    empty = torch.zeros(images.shape[0], dtype=torch.bool)
    return select(None, images, empty, budget, strategy, seed=seed)


def coreset(
    model: nn.Module | None,
    images: Tensor,
    fraction: float,
    strategy: Strategy | str,
    *,
    forgetting: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> SelectionResult:
    """Keep a fraction of a labelled set: the hardest items by the strategy (indices into it).

    Uncertainty strategies keep the items the model trained on them is least sure of, forgetting
    keeps the most forgotten (never-learned first), kcenter covers the feature space.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    n = images.shape[0]
    keep = max(1, round(n * fraction))
    strategy = Strategy(strategy)
    if strategy == Strategy.FORGETTING and forgetting is None:
        raise ValueError("a forgetting core-set needs the forgetting scores from train()")
    nothing = torch.zeros(n, dtype=torch.bool)
    return select(
        model,
        images,
        nothing,
        keep,
        strategy,
        seed=seed,
        batch_size=batch_size,
        device=device,
        scores=forgetting,
    )
