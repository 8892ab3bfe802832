"""Selection strategies: the pure uncertainty scores, greedy k-centres, ``auto``, select() and
coreset(); the clustering ones (TypiClust, cluster-margin) are in ``svp.clustering``.

Every score is "higher means pick first". Scoring runs the model in eval mode on the un-augmented
images; the labelled set is never chosen and nothing is chosen twice (asserted on every call).
The pool is a uint8 image tensor, or an ``N x D`` float tensor of embeddings: then the proxy is a
head on them (``svp.heads``), and without a model the embeddings themselves are the features.
To add a strategy: a member of ``Strategy`` and its function in ``_SELECTORS``.

Pools of a million (docs/engine.md): the model scores the pool a chunk of rows at a time into
one probability matrix; a linear head's features are its normalised inputs, so they are never
stored beside the (float16) pool; k-centres runs on a seeded sample of the candidates when one
pass per centre over all of them would take minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from svp.clustering import (
    SELECT_THREADS,
    cluster_margin,
    feature_rows,
    pool_features,
    squared_distances,
    typiclust,
)
from svp.device import torch_threads
from svp.heads import LinearHead
from svp.ranking import labeled_mask, top_k
from svp.train import predict


class Strategy(StrEnum):
    """How to rank candidates."""

    RANDOM = "random"
    LEAST_CONFIDENCE = "least_confidence"
    ENTROPY = "entropy"
    MARGIN = "margin"
    KCENTER = "kcenter"
    # Hacohen et al. 2022: the most typical point of each of the largest uncovered clusters.
    TYPICLUST = "typiclust"
    # Margin spread across k-means clusters of the most uncertain candidates (cluster-margin).
    MARGIN_CLUSTERS = "margin_clusters"
    # typiclust while labels per class are few, margin_clusters after (AUTO_SWITCH_PER_CLASS).
    AUTO = "auto"
    # Core-sets only: forgetting events are counted on labelled examples while a model trains.
    FORGETTING = "forgetting"


UNCERTAINTY = (Strategy.LEAST_CONFIDENCE, Strategy.ENTROPY, Strategy.MARGIN)
CLUSTERED = (Strategy.TYPICLUST, Strategy.MARGIN_CLUSTERS, Strategy.AUTO)

# auto: typiclust below this many labelled items per class, margin_clusters from it on.
# Measured with bench/labels_saved.py (docs/engine.md, "Low budgets").
AUTO_SWITCH_PER_CLASS = 20.0
# Rows of the pool a model scores per call of predict(): the chunk's float32 copy and features
# (65,536 x 1280 x 4 bytes = 320 MiB) are what is held beside the pool while it scores.
SCORE_CHUNK = 65_536
# Greedy k-centres costs (labelled + budget) x rows x width multiply-adds: a pass over the rows
# for each centre. Above this work it covers a seeded sample of the candidates (the labelled
# items stay centres) of the size that fits, but never under KCENTER_MIN_SAMPLE x the budget.
KCENTER_WORK = 20_000_000_000
KCENTER_MIN_SAMPLE = 20
# The rows it covers are held as float32 (upcast from the pool once): at most this many bytes,
# so a batch of one on a million 1280-d rows does not copy the pool at 5 GB.
KCENTER_MAX_BYTES = 1 << 30


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
        min_d = torch.minimum(min_d, squared_distances(x, sq, x[lab[s : s + step]]).min(1).values)
    # -1 marks centres: below every real distance, so argmax never picks one again.
    min_d[lab] = -1.0
    chosen = torch.empty(budget, dtype=torch.int64)
    dists = torch.empty(budget, dtype=torch.float64)
    d = torch.empty(n)
    for i in range(budget):
        if lab.numel() == 0 and i == 0:
            j = int(torch.randint(n, (1,), generator=generator).item())
            dist = 0.0
        else:
            j = int(torch.argmax(min_d).item())
            dist = float(min_d[j].item()) ** 0.5
        chosen[i] = j
        dists[i] = dist
        # ||x - c||² = ||x||² - 2 x·c + ||c||²: one matrix-vector product into a reused buffer.
        torch.addmv(sq, x, x[j], alpha=-2.0, out=d)
        d.add_(sq[j]).clamp_min_(0.0)
        torch.minimum(min_d, d, out=min_d)
        min_d[j] = -1.0
    return chosen, dists


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
    # JSON-able facts about the choice, for the round's metrics: auto's choice and its reason,
    # the clusters a clustering strategy used.
    details: dict[str, Any] = field(default_factory=dict)


def auto_choice(
    labeled: int, num_classes: int | None, switch_at: float = AUTO_SWITCH_PER_CLASS
) -> tuple[Strategy, dict[str, Any]]:
    """auto's rule: typiclust while labels per class < ``switch_at``, then margin_clusters."""
    switch_at = float(switch_at)
    if num_classes is None:
        return Strategy.TYPICLUST, {
            "auto_choice": Strategy.TYPICLUST.value,
            "labels_per_class": 0.0,
            "switch_at": switch_at,
            "reason": "no model yet: typical points first",
        }
    per_class = labeled / max(num_classes, 1)
    few = per_class < switch_at
    choice = Strategy.TYPICLUST if few else Strategy.MARGIN_CLUSTERS
    reason = (
        f"{per_class:g} labels per class < {switch_at:g}: typical points first"
        if few
        else f"{per_class:g} labels per class >= {switch_at:g}: uncertainty across clusters"
    )
    return choice, {
        "auto_choice": choice.value,
        "labels_per_class": round(per_class, 3),
        "switch_at": switch_at,
        "reason": reason,
    }


def _check(indices: Tensor, mask: Tensor, budget: int) -> None:
    chosen = indices.tolist()
    assert len(chosen) == budget, f"chose {len(chosen)} of a budget of {budget}"
    assert len(set(chosen)) == len(chosen), "an item was chosen twice"
    assert not bool(mask[indices].any()), "an already labelled item was chosen"


def _candidates(mask: Tensor, budget: int) -> Tensor:
    """Positions of the unlabelled items, once the budget is known to fit among them."""
    candidates = (~mask).nonzero().squeeze(1)
    if budget < 1:
        raise ValueError(f"budget must be at least 1, not {budget}")
    if budget > candidates.numel():
        raise ValueError(
            f"budget {budget} is larger than the unlabelled pool ({candidates.numel()} items)"
        )
    return candidates


@dataclass(frozen=True)
class _Outputs:
    """What selection reads of the pool: features, and with a model its probabilities."""

    # N x F, any float width: users upcast the rows they compute on.
    features: Tensor
    # The features are to be L2-normalised where used (a linear head's are its normalised
    # inputs: the pool itself stands for them, never a second N x D copy).
    normalise: bool
    probs: Tensor | None
    seconds: float


def score_pool(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> _Outputs:
    """The model's probabilities (float32) and features for every row, a chunk at a time.

    Features are kept at the pool's float width (float16 for a float16 pool), and not at all
    for a ``LinearHead``, whose features are the normalised rows of the pool.
    """
    lazy = isinstance(model, LinearHead) and images.ndim == 2 and images.is_floating_point()
    width = images.dtype if images.is_floating_point() else torch.float32
    n = images.shape[0]
    probs: Tensor | None = None
    feats: Tensor | None = None
    seconds = 0.0
    # A linear head's batches can be whole chunks: a layer or two per row, no activations to
    # hold (measured 1M x 384 rows: 7-18 s in batches of 512 on the loaded cores, 1-2 s so).
    step = SCORE_CHUNK if lazy else batch_size
    for s in range(0, n, SCORE_CHUNK):
        part = predict(model, images[s : s + SCORE_CHUNK], batch_size=step, device=device)
        seconds += part.seconds
        if probs is None:
            probs = torch.empty((n, part.probs.shape[1]), dtype=torch.float32)
            if not lazy:
                feats = torch.empty((n, part.features.shape[1]), dtype=width)
        probs[s : s + part.probs.shape[0]] = part.probs
        if feats is not None:
            feats[s : s + part.features.shape[0]] = part.features
    features = images if lazy else feats
    assert features is not None, "an empty pool has nothing to score"
    return _Outputs(features, lazy, probs, seconds)


@dataclass(frozen=True)
class _Request:
    """One call of select(): the pool, what is labelled, and how to score."""

    strategy: Strategy
    model: nn.Module | None
    images: Tensor
    mask: Tensor
    candidates: Tensor
    budget: int
    seed: int
    generator: torch.Generator
    batch_size: int
    device: str | torch.device | None
    scores: Tensor | None
    auto_switch_at: float

    @cached_property
    def outputs(self) -> _Outputs:
        """The pool's features, with the model's probabilities and seconds when there is a
        model; the embeddings (or raw pixels) and nothing else without. Scored once."""
        if self.model is None:
            return _Outputs(pool_features(self.images), False, None, 0.0)
        return score_pool(self.model, self.images, batch_size=self.batch_size, device=self.device)

    def candidate_probs(self) -> tuple[Tensor | None, float]:
        """The candidates' class probabilities (for suggestions) and the seconds scoring took;
        nothing without a model."""
        out = self.outputs
        return (None, 0.0) if out.probs is None else (out.probs[self.candidates], out.seconds)


@dataclass(frozen=True)
class _Pick:
    """What a strategy chose: pool indices in pick order, their scores and positions among the
    candidates (for the suggestion lookup), the candidates' probabilities and scores if any."""

    chosen: Tensor
    scores: Tensor
    positions: Tensor
    probs: Tensor | None
    candidate_scores: Tensor | None
    scoring_seconds: float
    selecting_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _ranked(
    req: _Request,
    pos: Tensor,
    cand_scores: Tensor,
    probs: Tensor | None,
    scoring: float,
    start: float,
    details: dict[str, Any] | None = None,
) -> _Pick:
    """The pick at positions ``pos`` among the candidates, scored by ``cand_scores``."""
    seconds = time.perf_counter() - start
    chosen = req.candidates[pos]
    return _Pick(chosen, cand_scores[pos], pos, probs, cand_scores, scoring, seconds, details or {})


def _top_scores(req: _Request, cand_scores: Tensor, probs: Tensor | None, scoring: float) -> _Pick:
    """The budget's highest candidate scores, ties to the earlier candidate."""
    start = time.perf_counter()
    return _ranked(req, top_k(cand_scores, req.budget), cand_scores, probs, scoring, start)


def _random(req: _Request) -> _Pick:
    cand_scores = torch.rand(req.candidates.numel(), generator=req.generator, dtype=torch.float64)
    return _top_scores(req, cand_scores, *req.candidate_probs())


def _uncertain(req: _Request) -> _Pick:
    if req.model is None:
        raise ValueError(
            f"{req.strategy.value} needs a trained model; cold starts use random or kcenter"
        )
    probs, scoring = req.candidate_probs()
    assert probs is not None
    return _top_scores(req, uncertainty_scores(probs.double(), req.strategy), probs, scoring)


def _forgetting(req: _Request) -> _Pick:
    n = req.images.shape[0]
    if req.scores is None or req.scores.shape != (n,):
        raise ValueError("forgetting needs per-item scores (forgetting counts) for the pool")
    cand_scores = req.scores[req.candidates].double()
    return _top_scores(req, cand_scores, *req.candidate_probs())


def kcenter_sample_size(candidates: int, labelled: int, budget: int, width: int) -> int:
    """How many candidates greedy k-centres covers: all of them while (labelled + budget) passes
    over them fit KCENTER_WORK, else the sample that fits (at least KCENTER_MIN_SAMPLE x the
    budget), and never more float32 rows than KCENTER_MAX_BYTES hold (nor fewer than the
    budget)."""
    fits = KCENTER_WORK // max(1, (labelled + budget) * width)
    size = min(max(fits, KCENTER_MIN_SAMPLE * budget), KCENTER_MAX_BYTES // (4 * max(1, width)))
    return int(min(candidates, max(size, budget)))


def _kcenter(req: _Request) -> _Pick:
    out = req.outputs
    probs, scoring = req.candidate_probs()
    start = time.perf_counter()
    labelled = req.mask.nonzero().squeeze(1)
    n_cand = req.candidates.numel()
    size = kcenter_sample_size(n_cand, labelled.numel(), req.budget, out.features.shape[1])
    covered = req.candidates
    if size < n_cand:
        covered = req.candidates[torch.randperm(n_cand, generator=req.generator)[:size].sort()[0]]
    # Candidates (or their sample) then the labelled rows, as float32: the labelled rows are the
    # first centres, so the batch covers what they do not.
    rows = torch.cat([covered, labelled])
    x = feature_rows(out.features, rows, normalise=out.normalise)
    at, chosen_scores = kcenter_greedy(
        x, torch.arange(covered.numel(), rows.numel()), req.budget, generator=req.generator
    )
    chosen = rows[at]
    # Position of each chosen item among the candidates, for the suggestion lookup.
    pos = torch.searchsorted(req.candidates, chosen)
    details = {"covered": int(covered.numel()), "candidates": n_cand}
    seconds = time.perf_counter() - start
    return _Pick(chosen, chosen_scores, pos, probs, None, scoring, seconds, details)


def _clustered(req: _Request) -> _Pick:
    """typiclust, margin_clusters or auto's choice between them on the pool's features."""
    if req.model is None and req.strategy == Strategy.MARGIN_CLUSTERS:
        raise ValueError("margin_clusters needs a trained model; cold starts use typiclust")
    # Clustering L2-normalises the features itself: a linear head's raw pool serves as they are.
    feats = req.outputs.features
    probs, scoring = req.candidate_probs()
    start = time.perf_counter()
    choice, details = req.strategy, dict[str, Any]()
    if req.strategy == Strategy.AUTO:
        width = None if probs is None else int(probs.shape[1])
        choice, details = auto_choice(int(req.mask.sum()), width, req.auto_switch_at)
    if choice == Strategy.TYPICLUST:
        chosen, chosen_scores, more = typiclust(feats, req.mask, req.budget, seed=req.seed)
        pos = torch.searchsorted(req.candidates, chosen)
        seconds = time.perf_counter() - start
        return _Pick(chosen, chosen_scores, pos, probs, None, scoring, seconds, details | more)
    assert probs is not None
    cand_scores = margin(probs.double())
    pos, more = cluster_margin(feats, cand_scores, req.budget, rows=req.candidates, seed=req.seed)
    return _ranked(req, pos, cand_scores, probs, scoring, start, details | more)


# Each strategy's way of choosing; select() checks and packages whatever it returns.
_SELECTORS: dict[Strategy, Callable[[_Request], _Pick]] = {
    Strategy.RANDOM: _random,
    Strategy.LEAST_CONFIDENCE: _uncertain,
    Strategy.ENTROPY: _uncertain,
    Strategy.MARGIN: _uncertain,
    Strategy.KCENTER: _kcenter,
    Strategy.TYPICLUST: _clustered,
    Strategy.MARGIN_CLUSTERS: _clustered,
    Strategy.AUTO: _clustered,
    Strategy.FORGETTING: _forgetting,
}
assert set(_SELECTORS) == set(Strategy), "every strategy needs its selector"


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
    auto_switch_at: float = AUTO_SWITCH_PER_CLASS,
) -> SelectionResult:
    """Choose ``budget`` unlabelled items of a pool with a strategy and a trained model.

    The pool is uint8 images or an ``N x D`` float embedding pool. ``labeled`` is a boolean mask
    over the pool or a list of indices. With ``model=None`` (cold start) ``random``, ``kcenter``,
    ``typiclust`` and ``auto`` work, on the embeddings (or raw pixels of images). ``scores``
    supplies per-item scores for the whole pool instead of a model (e.g. forgetting counts).
    ``auto_switch_at`` is auto's labels per class from which it leaves typiclust.
    """
    strategy = Strategy(strategy)
    mask = labeled_mask(labeled, images.shape[0])
    request = _Request(
        strategy=strategy,
        model=model,
        images=images,
        mask=mask,
        candidates=_candidates(mask, budget),
        budget=budget,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        batch_size=batch_size,
        device=device,
        scores=scores,
        auto_switch_at=auto_switch_at,
    )
    # Scored first, on the process's torch threads; the choosing is many small steps (a
    # matrix-vector product a k-centre, a cluster's typicality), which one thread runs faster
    # on shared cores than two that wait for each other.
    _ = request.outputs
    with torch_threads(SELECT_THREADS):
        pick = _SELECTORS[strategy](request)
    _check(pick.chosen, mask, budget)
    if pick.probs is not None:
        top = pick.probs[pick.positions].max(dim=1)
        pred_class: list[int | None] = [int(c) for c in top.indices.tolist()]
        pred_prob: list[float | None] = [float(p) for p in top.values.tolist()]
    else:
        pred_class, pred_prob = [None] * budget, [None] * budget
    return SelectionResult(
        strategy=strategy,
        indices=pick.chosen.tolist(),
        scores=[float(s) for s in pick.scores.tolist()],
        predicted_class=pred_class,
        predicted_prob=pred_prob,
        scoring_seconds=pick.scoring_seconds,
        selecting_seconds=pick.selecting_seconds,
        candidates=request.candidates if pick.candidate_scores is not None else None,
        candidate_scores=pick.candidate_scores,
        details=pick.details,
    )


def cold_start(
    images: Tensor, budget: int, strategy: Strategy | str = Strategy.RANDOM, *, seed: int = 0
) -> SelectionResult:
    """The first batch, before any label: random, k-centres or TypiClust (auto) on the pool's
    embeddings, or on raw pixels for images."""
    strategy = Strategy(strategy)
    allowed = (Strategy.RANDOM, Strategy.KCENTER, Strategy.TYPICLUST, Strategy.AUTO)
    if strategy not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise ValueError(f"a cold start is one of {names}, not {strategy.value}")
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
