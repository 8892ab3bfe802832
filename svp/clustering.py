"""Clustering a pool for selection: features without a model (raw pixels), the clustering space
(L2-normalised, PCA), seeded k-means, typicality, TypiClust and cluster-margin.

TypiClust (Hacohen et al. 2022) covers the pool at low budgets; cluster-margin (Citovsky et al.
2021) spreads uncertainty across clusters once a model is good. Both are reached through
``svp.strategies.select``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.nn import functional as F

from svp.config import SKLEARN_THREADS
from svp.ranking import labeled_mask, top_k

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


def squared_distances(x: Tensor, sq: Tensor, centres: Tensor) -> Tensor:
    """Squared distances of rows ``x`` (with squared norms ``sq``) to ``centres``, >= 0."""
    # ||x - c||² = ||x||² - 2 x·c + ||c||²: one matrix product instead of an N x C x D temporary.
    d = sq[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(1)[None, :]
    return d.clamp_min_(0.0)


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
        d = squared_distances(x[s : s + step], sq[s : s + step], x)
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
