"""Clustering a pool for selection: features without a model (raw pixels), the clustering space
(L2-normalised, PCA), seeded k-means, typicality, TypiClust and cluster-margin.

TypiClust (Hacohen et al. 2022) covers the pool at low budgets; cluster-margin (Citovsky et al.
2021) spreads uncertainty across clusters once a model is good. Both are reached through
``svp.strategies.select``.

Pools of a million (docs/engine.md): features may be float16 and are upcast a chunk of rows at a
time, never as a whole; k-means is fitted on a seeded sample and every row assigned to its
nearest centre in chunks; typicality inside a big cluster is measured against a seeded sample of
it. Below those sizes every step is what it was on the whole pool.
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
# k-means is fitted on at most this many rows (seeded), then every row goes to its nearest
# centre: 100 rows a centre at the 500-cluster cap, and seconds on one thread; a million rows
# would cost mini-batch k-means minutes of passes for the same centres.
KMEANS_FIT_ROWS = 50_000
# Typicality in a cluster of more members is measured against this many of them (seeded), and
# its unlabelled members are scored this many at a time, as picks reach them: a 20,000-member
# cluster costs 1,000 x 1,000 distances a visit instead of 20,000 x 20,000.
TYPICALITY_REFERENCE = 1_000
TYPICALITY_BLOCK = 1_000
# margin_clusters clusters the top factor x budget candidates by margin (Citovsky et al. 2021
# use a multiple of the batch too): wide enough to hold diverse uncertain points.
MARGIN_CANDIDATE_FACTOR = 10
# torch threads while a strategy chooses (after the model scored the pool). Measured on the 2
# shared cores at load 4-7: greedy k-centres on 78,000 x 384 took 13-28 ms a centre on one
# thread and 40-61 ms on two (each small step waits for the busier core), as scikit-learn's
# k-means does (svp.config.SKLEARN_THREADS).
SELECT_THREADS = 1
# Rows upcast to float32 at a time where a (float16) pool is computed on: 16,384 x 1280 x 4
# bytes is 80 MiB.
ROW_CHUNK = 16_384


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
    """Features of a pool without a model: embeddings as they are (any float width: users upcast
    rows as they compute), raw pixels for images."""
    if images.ndim == 2 and images.is_floating_point():
        return images
    return pixel_features(images)


def feature_rows(features: Tensor, rows: Tensor, *, normalise: bool = False) -> Tensor:
    """``features[rows]`` as float32, L2-normalised if asked, upcast a chunk at a time."""
    out = torch.empty((rows.numel(), features.shape[1]), dtype=torch.float32)
    for s in range(0, rows.numel(), ROW_CHUNK):
        x = features[rows[s : s + ROW_CHUNK]].float()
        out[s : s + x.shape[0]] = F.normalize(x, dim=1) if normalise else x
    return out


def _pca(features: Tensor, dims: int, seed: int) -> tuple[Tensor, Tensor]:
    """Mean and components (float32) of a PCA of the normalised rows, fitted on a sample."""
    n = features.shape[0]
    rng = np.random.default_rng(seed)
    if n <= PCA_FIT_ROWS:
        fit_rows = F.normalize(features.float(), dim=1).numpy()
    else:
        pick = torch.from_numpy(np.sort(rng.choice(n, PCA_FIT_ROWS, replace=False)))
        fit_rows = feature_rows(features, pick, normalise=True).numpy()
    with threadpool_limits(SKLEARN_THREADS):
        pca = PCA(
            n_components=min(dims, fit_rows.shape[0]), svd_solver="randomized", random_state=seed
        ).fit(fit_rows)
    mean = torch.from_numpy(np.asarray(pca.mean_, dtype=np.float32))
    return mean, torch.from_numpy(np.asarray(pca.components_, dtype=np.float32))


def cluster_space(features: Tensor, *, seed: int = 0) -> np.ndarray:
    """Features for clustering: L2-normalised rows, PCA to CLUSTER_DIMS when wider (float32).

    Rows are normalised and projected a chunk at a time into the output, so a float16 pool of a
    million rows costs the 128-column result (512 MB), not float32 copies of itself.
    """
    n, d = features.shape
    dims = min(CLUSTER_DIMS, n)
    project = None if d <= CLUSTER_DIMS or dims < 2 else _pca(features, dims, seed)
    width = d if project is None else project[1].shape[0]
    out = np.empty((n, width), dtype=np.float32)
    view = torch.from_numpy(out)
    for s in range(0, n, ROW_CHUNK):
        x = F.normalize(features[s : s + ROW_CHUNK].float(), dim=1)
        if project is not None:
            mean, components = project
            x = (x - mean) @ components.T
        view[s : s + x.shape[0]] = x
    return out


def _kmeans(rows: int, k: int, seed: int) -> KMeans | MiniBatchKMeans:
    """scikit-learn's seeded k-means: full while the work is small, mini-batch above."""
    # Full k-means is exact and cheap on small work; mini-batches keep 500 clusters of a
    # 50,000-row pool to about a second on one thread.
    if rows * k <= FULL_KMEANS_WORK:
        return KMeans(n_clusters=k, n_init=1, random_state=seed)
    return MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=1024, random_state=seed)


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centre, in row chunks (one matrix product each)."""
    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    # argmin ||x - c||² = argmin (||c||² - 2 x·c): the rows' own norms do not change it.
    c_sq = (c * c).sum(1)
    xt = torch.from_numpy(x)
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], ROW_CHUNK):
        d = c_sq[None, :] - 2.0 * (xt[s : s + ROW_CHUNK] @ c.T)
        out[s : s + d.shape[0]] = d.argmin(1).numpy()
    return out


def kmeans_labels(x: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Cluster ids of each row from scikit-learn's seeded k-means (mini-batch on big work);
    past KMEANS_FIT_ROWS rows the centres come from a seeded sample and every row is assigned
    to its nearest."""
    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if n <= KMEANS_FIT_ROWS:
        with threadpool_limits(SKLEARN_THREADS):
            return np.asarray(_kmeans(n, k, seed).fit_predict(x), dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, KMEANS_FIT_ROWS, replace=False))]
    with threadpool_limits(SKLEARN_THREADS):
        km = _kmeans(KMEANS_FIT_ROWS, k, seed).fit(sample)
    return nearest_centre(x, km.cluster_centers_)


def typicality(
    x: Tensor,
    k: int = TYPICALITY_NEIGHBOURS,
    chunk_elems: int = 1 << 22,
    *,
    reference: Tensor | None = None,
    own: Tensor | None = None,
) -> Tensor:
    """1 / mean distance to each row's k nearest other rows (Hacohen et al. 2022).

    With ``reference`` the neighbours are its rows (a sample standing in for a big cluster);
    ``own`` gives each row's position in it, -1 where the row is not there, so no row is its
    own neighbour.
    """
    m = x.shape[0]
    if reference is None:
        reference, own = x, torch.arange(m)
    elif own is None:
        own = torch.full((m,), -1, dtype=torch.int64)
    r = reference.shape[0]
    if r < 2:
        return torch.zeros(m, dtype=torch.float64)
    k = min(k, r - 1)
    sq = (x * x).sum(1)
    out = torch.empty(m, dtype=torch.float64)
    # Rows in chunks so the distance temporary is at most chunk_elems floats.
    step = max(1, chunk_elems // r)
    for s in range(0, m, step):
        d = squared_distances(x[s : s + step], sq[s : s + step], reference)
        mine = own[s : s + step]
        rows = (mine >= 0).nonzero().squeeze(1)
        d[rows, mine[rows]] = float("inf")  # a point is not its own neighbour
        near = d.topk(k, dim=1, largest=False).values.sqrt().mean(1)
        out[s : s + step] = 1.0 / (near.double() + 1e-8)
    return out


class _Members:
    """The rows of each cluster, in row order, from one sort (not one scan per cluster)."""

    def __init__(self, assign: np.ndarray, k: int) -> None:
        self.order = np.argsort(assign, kind="stable")
        self.ends = np.cumsum(np.bincount(assign, minlength=k))

    def of(self, c: int) -> np.ndarray:
        """Rows of cluster ``c``, ascending."""
        start = 0 if c == 0 else int(self.ends[c - 1])
        return self.order[start : int(self.ends[c])]


class _TypicalQueue:
    """A cluster's unlabelled members, most typical first, scored a block at a time as picks
    reach them. Up to TYPICALITY_REFERENCE members the reference is the whole cluster
    (labelled members count: they are part of its density) and one block holds every
    unlabelled member in row order: the paper's typicality, exactly. Bigger clusters are
    measured against a seeded sample and scored in seeded blocks."""

    def __init__(
        self, x: Tensor, members: np.ndarray, labelled: np.ndarray, seed: tuple[int, int]
    ) -> None:
        rng = np.random.default_rng(seed)
        self.ref = members
        if members.size > TYPICALITY_REFERENCE:
            self.ref = np.sort(rng.choice(members, TYPICALITY_REFERENCE, replace=False))
        self.x = x
        self.ref_x = x[torch.from_numpy(self.ref)]
        free = members[~labelled[members]]
        self.pending = rng.permutation(free) if free.size > TYPICALITY_BLOCK else free
        self.rows = np.empty(0, dtype=np.int64)
        self.typ = np.empty(0, dtype=np.float64)
        self.next = 0

    def __len__(self) -> int:
        return self.rows.size - self.next + self.pending.size

    def _score_block(self) -> None:
        block, self.pending = self.pending[:TYPICALITY_BLOCK], self.pending[TYPICALITY_BLOCK:]
        at = np.searchsorted(self.ref, block).clip(max=self.ref.size - 1)
        own = np.where(self.ref[at] == block, at, -1)
        typ = typicality(
            self.x[torch.from_numpy(block)],
            reference=self.ref_x,
            own=torch.from_numpy(own),
        ).numpy()
        order = np.argsort(-typ, kind="stable")
        self.rows, self.typ, self.next = block[order], typ[order], 0

    def pop(self) -> tuple[int, float]:
        """The most typical unlabelled member not taken yet, and its typicality."""
        if self.next >= self.rows.size:
            self._score_block()
        i = self.next
        self.next += 1
        return int(self.rows[i]), float(self.typ[i])


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
    members = _Members(assign, k)
    queues: dict[int, _TypicalQueue] = {}
    chosen: list[int] = []
    scores: list[float] = []
    while len(chosen) < budget:
        tiny, count, neg_size, c = heapq.heappop(heap)
        if c not in queues:
            # Typicality is computed only for clusters a pick reaches.
            queues[c] = _TypicalQueue(xt, members.of(c), lab, seed=(seed, c))
        row, typ = queues[c].pop()
        chosen.append(row)
        scores.append(typ)
        if len(queues[c]):
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
    rows: Tensor | None = None,
    seed: int = 0,
    factor: int = MARGIN_CANDIDATE_FACTOR,
    max_clusters: int = MAX_CLUSTERS,
) -> tuple[Tensor, dict[str, Any]]:
    """Uncertainty spread across clusters: positions (of ``scores``) in pick order.

    ``scores[i]`` is the score of ``features[rows[i]]`` (of ``features[i]`` without ``rows``):
    only the rows clustered are gathered, never a copy of a million candidates' features.
    The ``factor x budget`` highest-scoring rows are clustered into ``budget`` k-means clusters
    (at most ``max_clusters``); clusters are visited round-robin, the one with the most uncertain
    member first, each visit taking its most uncertain row left. Plain top-k would fill the batch
    with near-duplicates of one confusing region.
    """
    n = scores.shape[0]
    if budget > n:
        raise ValueError(f"budget {budget} exceeds the {n} candidates")
    m = min(n, max(budget, factor * budget))
    top = top_k(scores, m)
    x = cluster_space(features[top if rows is None else rows[top]], seed=seed)
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
