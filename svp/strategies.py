"""Selection strategies: pure scoring functions, greedy k-centres, TypiClust, cluster-margin,
``auto``, select() and coreset().

Every score is "higher means pick first". Scoring runs the model in eval mode on the un-augmented
images; the labelled set is never chosen and nothing is chosen twice (asserted on every call).
The pool is a uint8 image tensor, or an ``N x D`` float tensor of embeddings: then the proxy is a
head on them (``svp.heads``), and without a model the embeddings themselves are the features.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.nn import functional as F

from svp.config import SKLEARN_THREADS
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

# TypiClust's neighbourhood size for typicality, as in the paper.
TYPICALITY_NEIGHBOURS = 20
# Clusters of fewer points are outliers' clusters: used only once every larger one is spent
# (the paper drops them; keeping them last lets a tiny pool still fill its budget).
MIN_CLUSTER_SIZE = 5
# The paper caps k-means at 500 clusters. k-means costs n x k x d a pass, and past a few hundred
# labels typicality has done its job (auto has switched to margin_clusters by then); with more
# labels than clusters the batch goes to the clusters holding the fewest labels, largest first.
MAX_CLUSTERS = 500
# Features are L2-normalised, then projected to this many principal components for clustering.
CLUSTER_DIMS = 128
# PCA is fitted on at most this many rows (seeded), then applied to all: the top components of
# a 5,000-row sample are what clustering needs, and fitting on 50,000 x 1280 would dominate.
PCA_FIT_ROWS = 5_000
# Full k-means while rows x clusters stays under this (a 10,000 pool up to 200 clusters: under
# a second); mini-batch k-means above it.
FULL_KMEANS_WORK = 2_000_000
# margin_clusters clusters the top factor x budget candidates by margin (Citovsky et al. 2021
# use a multiple of the batch too): wide enough to hold diverse uncertain points.
MARGIN_CANDIDATE_FACTOR = 10
# auto: typiclust below this many labelled items per class, margin_clusters from it on.
# Measured with bench/labels_saved.py (docs/engine.md, "Low budgets").
AUTO_SWITCH_PER_CLASS = 20.0


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


# Images converted to float at a time by pixel_features: 4096 x 3 x 32 x 32 floats is 50 MB.
PIXEL_CHUNK = 4096


def pixel_features(images: Tensor, side: int = 8) -> Tensor:
    """Raw-pixel features for a cold start: images average-pooled to side x side, in [0, 1]."""
    # 3 x 8 x 8 = 192 numbers an image keeps a 100k pool at 77 MB instead of 1.2 GB at 32 x 32;
    # converted in chunks, so the float copy of the whole pool is never made either.
    n = images.shape[0]
    out_side = (min(side, images.shape[-2]), min(side, images.shape[-1]))
    out = torch.empty((n, images.shape[1] * out_side[0] * out_side[1]), dtype=torch.float32)
    for start in range(0, n, PIXEL_CHUNK):
        x = images[start : start + PIXEL_CHUNK].float().div_(255.0)
        if x.shape[-2:] != out_side:
            x = F.adaptive_avg_pool2d(x, out_side)
        out[start : start + x.shape[0]] = x.flatten(1)
    return out


def pool_features(images: Tensor) -> Tensor:
    """Features of a pool without a model: embeddings as they are, raw pixels for images."""
    if images.ndim == 2 and images.is_floating_point():
        return images.float()
    return pixel_features(images)


def cluster_space(features: Tensor, *, seed: int = 0) -> np.ndarray:
    """Features for clustering: L2-normalised rows, PCA to CLUSTER_DIMS when wider (float32)."""
    x = F.normalize(features.detach().float(), dim=1).numpy()
    n, d = x.shape
    dims = min(CLUSTER_DIMS, n)
    if d <= CLUSTER_DIMS or dims < 2:
        return np.ascontiguousarray(x)
    rng = np.random.default_rng(seed)
    fit_rows = x if n <= PCA_FIT_ROWS else x[np.sort(rng.choice(n, PCA_FIT_ROWS, replace=False))]
    with threadpool_limits(SKLEARN_THREADS):
        pca = PCA(
            n_components=min(dims, fit_rows.shape[0]), svd_solver="randomized", random_state=seed
        ).fit(fit_rows)
        return np.ascontiguousarray(pca.transform(x), dtype=np.float32)


def kmeans_labels(x: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Cluster ids of each row from scikit-learn's k-means (mini-batch on big pools), seeded."""
    k = max(1, min(k, x.shape[0]))
    if k == 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    # Full k-means is exact and cheap on small work; mini-batches keep 500 clusters of a
    # 50,000-row pool to about a second on one thread.
    if x.shape[0] * k <= FULL_KMEANS_WORK:
        km: KMeans | MiniBatchKMeans = KMeans(n_clusters=k, n_init=1, random_state=seed)
    else:
        km = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=1024, random_state=seed)
    with threadpool_limits(SKLEARN_THREADS):
        return np.asarray(km.fit_predict(x), dtype=np.int64)


def typicality(x: Tensor, k: int = TYPICALITY_NEIGHBOURS, chunk_elems: int = 1 << 22) -> Tensor:
    """1 / mean distance to each row's k nearest other rows (Hacohen et al. 2022)."""
    m = x.shape[0]
    if m < 2:
        return torch.zeros(m, dtype=torch.float64)
    k = min(k, m - 1)
    sq = (x * x).sum(1)
    out = torch.empty(m, dtype=torch.float64)
    # Rows in chunks so the distance temporary is at most chunk_elems floats.
    step = max(1, chunk_elems // m)
    for s in range(0, m, step):
        d = _sq_dists(x[s : s + step], sq[s : s + step], x)
        rows = torch.arange(d.shape[0])
        d[rows, rows + s] = float("inf")  # a point is not its own neighbour
        near = d.topk(k, dim=1, largest=False).values.sqrt().mean(1)
        out[s : s + step] = 1.0 / (near.double() + 1e-8)
    return out


def typiclust(
    features: Tensor,
    labeled: Tensor | Sequence[int],
    budget: int,
    *,
    seed: int = 0,
    max_clusters: int = MAX_CLUSTERS,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """TypiClust: the most typical point of each of the largest clusters holding no label.

    The pool's features are clustered into |L| + budget clusters (at most ``max_clusters`` and
    n / MIN_CLUSTER_SIZE); clusters are visited by fewest labelled points, then largest, and
    each visit takes the most typical unlabelled point left in it. Outliers' clusters (under
    MIN_CLUSTER_SIZE points) come last. Returns the pool indices in pick order, their
    typicality and what it did.
    """
    n = features.shape[0]
    mask = labeled_mask(labeled, n)
    if budget > n - int(mask.sum()):
        raise ValueError(f"budget {budget} exceeds the {n - int(mask.sum())} unlabelled points")
    x = cluster_space(features, seed=seed)
    # A cluster needs a few points for typicality to mean anything: at most n / MIN_CLUSTER_SIZE.
    k = max(1, min(int(mask.sum()) + budget, max_clusters, n // MIN_CLUSTER_SIZE))
    assign = kmeans_labels(x, k, seed=seed)
    k = int(assign.max()) + 1
    lab = mask.numpy()
    sizes = np.bincount(assign, minlength=k)
    counts = np.bincount(assign[lab], minlength=k)
    free = sizes - counts
    heap = [
        (bool(sizes[c] < MIN_CLUSTER_SIZE), int(counts[c]), -int(sizes[c]), c)
        for c in range(k)
        if free[c] > 0
    ]
    heapq.heapify(heap)
    uncovered = int(((counts == 0) & (sizes >= MIN_CLUSTER_SIZE)).sum())
    xt = torch.from_numpy(x)
    queues: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    taken: dict[int, int] = {}
    chosen: list[int] = []
    scores: list[float] = []
    while len(chosen) < budget:
        tiny, count, neg_size, c = heapq.heappop(heap)
        if c not in queues:
            # Typicality over the whole cluster (labelled points are part of its density),
            # computed only for clusters a pick reaches.
            members = np.flatnonzero(assign == c)
            typ = typicality(xt[members]).numpy()
            order = np.argsort(-typ, kind="stable")
            members, typ = members[order], typ[order]
            keep = ~lab[members]
            queues[c] = (members[keep], typ[keep])
            taken[c] = 0
        members, typ = queues[c]
        i = taken[c]
        chosen.append(int(members[i]))
        scores.append(float(typ[i]))
        taken[c] = i + 1
        if i + 1 < members.size:
            heapq.heappush(heap, (tiny, count + 1, neg_size, c))
    details = {"clusters": k, "clusters_uncovered": uncovered}
    return (
        torch.tensor(chosen, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float64),
        details,
    )


def cluster_margin(
    features: Tensor,
    scores: Tensor,
    budget: int,
    *,
    seed: int = 0,
    factor: int = MARGIN_CANDIDATE_FACTOR,
    max_clusters: int = MAX_CLUSTERS,
) -> tuple[Tensor, dict[str, Any]]:
    """Uncertainty spread across clusters: positions (rows of ``features``) in pick order.

    The ``factor x budget`` highest-scoring rows are clustered into ``budget`` k-means clusters
    (at most ``max_clusters``); clusters are visited round-robin, the one with the most uncertain
    member first, each visit taking its most uncertain row left. Plain top-k would fill the batch
    with near-duplicates of one confusing region.
    """
    n = features.shape[0]
    if budget > n:
        raise ValueError(f"budget {budget} exceeds the {n} candidates")
    m = min(n, max(budget, factor * budget))
    top = top_k(scores, m)
    x = cluster_space(features[top], seed=seed)
    assign = kmeans_labels(x, min(budget, max_clusters, m), seed=seed)
    # top is in score order, so a cluster's first appearance is its most uncertain member.
    rank_in_cluster = np.zeros(m, dtype=np.int64)
    first_pos = np.full(int(assign.max()) + 1, -1, dtype=np.int64)
    seen = np.zeros(int(assign.max()) + 1, dtype=np.int64)
    for pos, c in enumerate(assign.tolist()):
        if first_pos[c] < 0:
            first_pos[c] = pos
        rank_in_cluster[pos] = seen[c]
        seen[c] += 1
    # Round-robin: every cluster's best, then every cluster's second best, ...
    order = np.lexsort((first_pos[assign], rank_in_cluster))[:budget]
    details = {"clusters": int((seen > 0).sum()), "candidates": m}
    return top[torch.from_numpy(order)], details


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


def _select_clustered(
    strategy: Strategy,
    feats: Tensor,
    all_probs: Tensor | None,
    mask: Tensor,
    candidates: Tensor,
    budget: int,
    seed: int,
    auto_switch_at: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, dict[str, Any]]:
    """typiclust, margin_clusters or auto's choice between them on the pool's features:
    (chosen, their scores, their positions among the candidates, candidate scores, details)."""
    choice, details = strategy, dict[str, Any]()
    if strategy == Strategy.AUTO:
        width = None if all_probs is None else int(all_probs.shape[1])
        choice, details = auto_choice(int(mask.sum()), width, auto_switch_at)
    if choice == Strategy.TYPICLUST:
        chosen, chosen_scores, more = typiclust(feats, mask, budget, seed=seed)
        return (
            chosen,
            chosen_scores,
            torch.searchsorted(candidates, chosen),
            None,
            {
                **details,
                **more,
            },
        )
    assert all_probs is not None
    cand_scores = margin(all_probs[candidates].double())
    pos, more = cluster_margin(feats[candidates], cand_scores, budget, seed=seed)
    return candidates[pos], cand_scores[pos], pos, cand_scores, {**details, **more}


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
    n = images.shape[0]
    mask = labeled_mask(labeled, n)
    candidates = _candidates(mask, budget)
    gen = torch.Generator().manual_seed(seed)
    probs: Tensor | None = None
    cand_scores: Tensor | None = None
    details: dict[str, Any] = {}
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
            feats = pool_features(images)
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
    elif strategy in CLUSTERED:
        if model is None:
            if strategy == Strategy.MARGIN_CLUSTERS:
                raise ValueError("margin_clusters needs a trained model; cold starts use typiclust")
            feats, all_probs = pool_features(images), None
        else:
            preds = predict(model, images, batch_size=batch_size, device=device)
            feats, all_probs, scoring = preds.features, preds.probs, preds.seconds
            probs = all_probs[candidates]
        start = time.perf_counter()
        chosen, chosen_scores, pos, cand_scores, details = _select_clustered(
            strategy, feats, all_probs, mask, candidates, budget, seed, auto_switch_at
        )
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
        details=details,
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
