"""Core-sets on frozen embeddings: can a selected fraction of the labels replace all of them?

SVP (Coleman et al., ICLR 2020) claims a proxy-chosen core-set removes up to half of CIFAR-10
without hurting the target. Here the proxy is the product's own: the ``linear`` head
(``svp.fit_linear_head``) on EfficientNet-Lite0 embeddings, fitted on the whole labelled set,
and the core-set comes from the engine's ``svp.coreset()`` with the embeddings as inputs.

On a class-balanced CIFAR-10 training set it keeps each fraction by typiclust, kcenter, margin,
least confidence, margin_clusters and at random (several seeds), plus one variant the engine
does not offer: ``margin_easy``, the *most* confident items of the same margin ranking (Sorscher
et al. 2022: at small fractions easy examples help, at large ones hard examples do). Two targets
train on each kept part and on everything, and are scored on class-balanced test images:

(a) the linear head on the embeddings (deterministic: the spread comes from the selection);
(b) a CNN trained from scratch on the 32 px pixels with a truncated schedule, one seed a subset
    (the paper's kind of target); the random half is also trained at more seeds, as a gauge of
    this target's noise.

Embeddings are computed once and kept in the engine's content-keyed ``EmbeddingStore`` under
``--cache`` (so any subset of the same images, quick or default, reads them back).

    python bench/coreset_embeddings.py [--quick] [--out bench-out/coreset_embeddings.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import add_common_args, environment, require_data, table, write_json
from svp import (
    EmbeddingStore,
    LabeledImages,
    Strategy,
    TrainConfig,
    coreset,
    evaluate,
    fit_linear_head,
    get_spec,
    load_backbone,
    load_cifar10,
    predict,
    train,
)

BACKBONE = "efficientnet_lite0"
# Sized for 2 shared CPU cores with one torch thread (a second thread ran tiny_cnn 6x slower
# under a load average of 5-7 here). Measured training speed on 32 px CIFAR-10, one thread:
# tiny_cnn ~1,500-2,500 img/s, small_cnn ~900-1,000, preact20 ~235. The default trains 22+
# pixel targets for 10 epochs over ~125,000 images an epoch: with preact20 that is ~90 minutes,
# so the pixel target is tiny_cnn (50.8% on all 10,000 images after 10 epochs, small_cnn 48.3%
# after 8: the faster model is also the better one at this budget).
DEFAULTS: dict[str, Any] = {
    "train_size": 10000,
    "test_size": 2000,
    "fractions": "0.3,0.5,0.7",
    "random_seeds": 5,
    "strategy_seeds": 3,
    "pixel_target": "tiny_cnn",
    "pixel_epochs": 10,
    "pixel_noise_seeds": 3,
}
QUICK: dict[str, Any] = {
    "train_size": 2000,
    "test_size": 2000,
    "fractions": "0.5",
    "random_seeds": 5,
    "strategy_seeds": 3,
    "pixel_target": "tiny_cnn",
    "pixel_epochs": 10,
    "pixel_noise_seeds": 3,
}
# (name, engine strategy, whether the seed changes the choice). margin and least confidence
# rank by the head's deterministic scores, so one seed is all there is.
ARMS: tuple[tuple[str, Strategy, bool], ...] = (
    ("random", Strategy.RANDOM, True),
    ("typiclust", Strategy.TYPICLUST, True),
    ("kcenter", Strategy.KCENTER, True),
    ("margin_clusters", Strategy.MARGIN_CLUSTERS, True),
    ("margin", Strategy.MARGIN, False),
    ("least_confidence", Strategy.LEAST_CONFIDENCE, False),
    # The other end of coreset()'s margin ranking: the most confident items.
    ("margin_easy", Strategy.MARGIN, False),
)


def parse() -> argparse.Namespace:
    """Command-line options; --quick swaps in the small defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.set_defaults(threads=1)
    p.add_argument("--quick", action="store_true", help="a run of a few minutes")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    args = p.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.fraction_list = [float(f) for f in str(args.fractions).split(",") if f.strip()]
    if not args.fraction_list or not all(0.0 < f < 1.0 for f in args.fraction_list):
        raise SystemExit(f"--fractions must be in (0, 1): {args.fractions}")
    return args


def balanced(labels: Tensor, n: int, num_classes: int, seed: int) -> Tensor:
    """n indices, n / num_classes of each class, in a seeded order; nested in n for one seed."""
    per = n // num_classes
    if per * num_classes != n:
        raise SystemExit(f"{n} is not a multiple of the {num_classes} classes")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        if members.numel() < per:
            raise SystemExit(f"class {c} has {members.numel()} images, {per} asked for")
        out.append(members[torch.randperm(members.numel(), generator=gen)[:per]])
    return torch.stack(out, 1).reshape(-1)  # interleaved: class 0, 1, ..., 9, 0, 1, ...


def embeddings(data: LabeledImages, ix: Tensor, cache: Path, threads: int) -> tuple[Tensor, int]:
    """Embeddings of ``data.images[ix]``, computing only what the store lacks (and how many)."""
    spec = get_spec(BACKBONE)
    store = EmbeddingStore(cache, spec.name, spec.image_size, spec.dim)
    keys = [data.keys[i] for i in ix.tolist()]
    todo = store.missing(keys)
    if todo:
        row = {k: i for i, k in zip(ix.tolist(), keys, strict=True)}
        images = data.images[torch.tensor([row[k] for k in todo])]
        net = load_backbone(spec.name, device="cpu")
        for s in range(0, len(todo), 1024):
            store.add(todo[s : s + 1024], net.embed(images[s : s + 1024], num_threads=threads))
            print(f"  embedded {min(s + 1024, len(todo))}/{len(todo)}", flush=True)
    return store.load(keys), len(todo)


def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t interval (None for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float(a.mean()), None
    half = stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean()), float(half)


def diff_interval(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """mean(a) - mean(b) with a Welch 95% half-width; a single value counts as exact.

    A lone value is a deterministic selection scored by a deterministic head (linear target),
    so its variance is 0, not unknown; for the pixel target the caller passes no interval.
    """
    va = np.var(a, ddof=1) / len(a) if len(a) > 1 else 0.0
    vb = np.var(b, ddof=1) / len(b) if len(b) > 1 else 0.0
    d = float(np.mean(a) - np.mean(b))
    se2 = va + vb
    if se2 == 0.0:
        return d, None if len(a) < 2 and len(b) < 2 else 0.0
    parts = [(v, len(x)) for v, x in ((va, a), (vb, b)) if len(x) > 1]
    df = se2**2 / sum(v**2 / (n - 1) for v, n in parts)
    return d, float(stats.t.ppf(0.975, df) * math.sqrt(se2))


def hits(model: torch.nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """Which test items the model gets right (bool per item), for paired comparisons."""
    return predict(model, inputs).probs.argmax(1) == labels


def paired_half(a: Tensor, b: Tensor) -> float:
    """95% half-width of mean(a) - mean(b) over the same test items (paired, normal)."""
    d = a.double() - b.double()
    return float(1.96 * d.std() / math.sqrt(d.numel()))


def pct(mean: float, half: float | None, sign: bool = False) -> str:
    """A percentage (points) with its interval, e.g. 76.3 ± 0.4."""
    s = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return s if half is None else f"{s} ± {100 * half:.1f}"


def class_spread(y: Tensor, num_classes: int) -> float:
    """Smallest class count over the largest in a kept set (1.0 = balanced)."""
    counts = torch.bincount(y, minlength=num_classes)
    return float(counts.min()) / max(float(counts.max()), 1.0)


def main() -> None:
    """Run the experiment, print the tables and the wall time per part, write the JSON."""
    args = parse()
    torch.set_num_threads(args.threads)
    require_data(args.data)
    wall: dict[str, float] = {}
    t0 = time.perf_counter()

    start = time.perf_counter()
    train_set = load_cifar10(args.data, "train", args.cache)
    test_set = load_cifar10(args.data, "test", args.cache)
    k = len(train_set.classes)
    ix = balanced(train_set.labels, args.train_size, k, args.seed)
    tix = balanced(test_set.labels, args.test_size, k, args.seed + 1)
    x, y = train_set.images[ix], train_set.labels[ix]
    xt, yt = test_set.images[tix], test_set.labels[tix]
    wall["load_images"] = time.perf_counter() - start

    start = time.perf_counter()
    emb, new_train = embeddings(train_set, ix, args.cache, args.threads)
    emb_t, new_test = embeddings(test_set, tix, args.cache, args.threads)
    wall["embed"] = time.perf_counter() - start
    print(
        f"embeddings: {new_train + new_test} computed, "
        f"{len(ix) + len(tix) - new_train - new_test} from the cache "
        f"({wall['embed']:.1f}s)",
        flush=True,
    )

    # The selecting model: the product's linear proxy (calibrated) on every labelled item.
    start = time.perf_counter()
    proxy = fit_linear_head(emb, y, k, seed=args.seed)
    wall["selecting_head"] = time.perf_counter() - start
    proxy_train_acc = evaluate(proxy.model, emb, y)
    print(
        f"selecting head: train acc {proxy_train_acc:.3f}, T={proxy.calibration.temperature:.2f} "
        f"({wall['selecting_head']:.1f}s)",
        flush=True,
    )

    # --- selection: every (fraction, arm, seed) through coreset() ------------------------
    start = time.perf_counter()
    kept: dict[tuple[float, str], dict[int, list[int]]] = {}
    select_s: dict[str, float] = {}
    easy_order: list[int] | None = None
    for f in args.fraction_list:
        keep = max(1, round(len(y) * f))
        for name, strategy, seeded in ARMS:
            n_seeds = (
                (args.random_seeds if name == "random" else args.strategy_seeds) if seeded else 1
            )
            kept[(f, name)] = {}
            for s in range(args.seed, args.seed + n_seeds):
                t = time.perf_counter()
                if name == "margin_easy":
                    if easy_order is None:
                        # The whole margin ranking once (hardest first); keep its easy end.
                        full = coreset(proxy.model, emb, 1.0, Strategy.MARGIN, seed=s)
                        easy_order = full.indices[::-1]
                    chosen = easy_order[:keep]
                else:
                    model = None if strategy == Strategy.RANDOM else proxy.model
                    chosen = coreset(model, emb, f, strategy, seed=s).indices
                assert len(set(chosen)) == len(chosen) == keep
                kept[(f, name)][s] = chosen
                select_s[name] = select_s.get(name, 0.0) + time.perf_counter() - t
    wall["select"] = time.perf_counter() - start
    print(
        "selection seconds: " + ", ".join(f"{n} {v:.1f}" for n, v in select_s.items()),
        flush=True,
    )

    # --- target (a): the linear head on embeddings, every seed ---------------------------
    start = time.perf_counter()

    def linear_hits(idx: list[int] | Tensor) -> Tensor:
        head = fit_linear_head(emb[idx], y[idx], k, seed=args.seed, calibrate=False)
        return hits(head.model, emb_t, yt)

    lin_full_hits = linear_hits(torch.arange(len(y)))
    lin_full = float(lin_full_hits.float().mean())
    lin_hits = {
        key: [linear_hits(idx) for idx in by_seed.values()] for key, by_seed in kept.items()
    }
    lin = {key: [float(h.float().mean()) for h in v] for key, v in lin_hits.items()}
    wall["linear_targets"] = time.perf_counter() - start
    print(f"linear targets: all {lin_full:.3f} ({wall['linear_targets']:.1f}s)", flush=True)

    # --- target (b): a CNN from scratch on pixels, one seed a subset ---------------------
    start = time.perf_counter()
    img_s: list[float] = []

    def pixel_hits(idx: list[int] | Tensor, seed: int) -> Tensor:
        ti = torch.as_tensor(idx)
        cfg = TrainConfig.truncated(args.pixel_epochs, seed=seed)
        fit = train(args.pixel_target, x[ti], y[ti], cfg, num_classes=k)
        img_s.append(fit.stats.examples * fit.stats.epochs / fit.stats.seconds)
        return hits(fit.model, xt, yt)

    pix_full_hits = pixel_hits(torch.arange(len(y)), args.seed)
    pix_full = float(pix_full_hits.float().mean())
    print(f"pixel target {args.pixel_target}: all {pix_full:.3f}", flush=True)
    pix_hits: dict[tuple[float, str], Tensor] = {}
    pix: dict[tuple[float, str], float] = {}
    for key, by_seed in kept.items():
        pix_hits[key] = pixel_hits(by_seed[args.seed], args.seed)
        pix[key] = float(pix_hits[key].float().mean())
        print(f"  {key[0]:.1f} {key[1]}: {pix[key]:.3f}", flush=True)
    # The noise gauge: random halves (closest fraction to 0.5) at more seeds, subset and
    # training seed varying together, as a random draw would.
    f_noise = min(args.fraction_list, key=lambda f: abs(f - 0.5))
    noise = [pix[(f_noise, "random")]]
    for s in range(args.seed + 1, args.seed + min(args.pixel_noise_seeds, args.random_seeds)):
        noise.append(float(pixel_hits(kept[(f_noise, "random")][s], s).float().mean()))
    noise_mean, noise_half = interval(noise)
    wall["pixel_targets"] = time.perf_counter() - start
    wall["total"] = time.perf_counter() - t0

    # --- report --------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    for (f, name), by_seed in kept.items():
        accs = lin[(f, name)]
        rnd = lin[(f, "random")]
        mean, half = interval(accs)
        dr, dr_half = diff_interval(accs, rnd)
        dfull, dfull_half = diff_interval(accs, [lin_full])
        first = by_seed[args.seed]
        rows.append(
            {
                "fraction": f,
                "kept_by": name,
                "examples": len(first),
                "seeds": len(accs),
                "class_spread": class_spread(y[torch.tensor(first)], k),
                "linear_accs": accs,
                "linear_mean": mean,
                "linear_ci95": half,
                "linear_vs_random": dr,
                "linear_vs_random_ci95": dr_half,
                "linear_vs_full": dfull,
                "linear_vs_full_ci95": dfull_half,
                # Seed 0's subset against all, on the same test images: the test set's own
                # sampling error, which the seed interval (or a lone value) does not show.
                "linear_vs_full_test_ci95": paired_half(lin_hits[(f, name)][0], lin_full_hits),
                "pixel_acc": pix[(f, name)],
                "pixel_vs_random": pix[(f, name)] - pix[(f, "random")],
                "pixel_vs_full": pix[(f, name)] - pix_full,
                "pixel_vs_full_test_ci95": paired_half(pix_hits[(f, name)], pix_full_hits),
            }
        )
    payload = {
        "config": {
            k_: (str(v) if isinstance(v, Path) else v)
            for k_, v in vars(args).items()
            if k_ != "out"
        },
        "environment": environment(),
        "backbone": BACKBONE,
        "image_size": get_spec(BACKBONE).image_size,
        "selecting_head": {
            "train_acc": proxy_train_acc,
            "calibration": proxy.calibration.as_dict(),
        },
        "linear_full": lin_full,
        "pixel_full": pix_full,
        "pixel_target": args.pixel_target,
        "pixel_epochs": args.pixel_epochs,
        "pixel_train_img_per_s": float(np.median(img_s)),
        "pixel_noise": {
            "fraction": f_noise,
            "accs": noise,
            "mean": noise_mean,
            "ci95": noise_half,
            "sd": float(np.std(noise, ddof=1)) if len(noise) > 1 else None,
        },
        "rows": rows,
        "selection_s": select_s,
        "wall_s": wall,
    }

    print()
    print(
        f"Core-sets on {BACKBONE} embeddings ({get_spec(BACKBONE).image_size} px), CIFAR-10: "
        f"{args.train_size} class-balanced training images, {args.test_size} test images; "
        f"selecting model: linear head on all of them (train acc {proxy_train_acc:.1%})."
    )
    print(
        f"Targets: (a) linear head on embeddings, mean ± 95% t interval over seeds "
        f"(random {args.random_seeds}, seeded strategies {args.strategy_seeds}); "
        f"(b) {args.pixel_target} from scratch on pixels, {args.pixel_epochs} epochs, one seed."
    )
    print(f"Full data: linear {100 * lin_full:.1f}%, {args.pixel_target} {100 * pix_full:.1f}%.")
    print()
    print(
        table(
            [
                "fraction",
                "kept by",
                "n",
                "seeds",
                "classes",
                "linear %",
                "vs random",
                "vs full",
                "test ±",
                "pixel %",
                "vs random",
                "vs full",
                "test ±",
            ],
            [
                [
                    f"{r['fraction']:.1f}",
                    r["kept_by"],
                    r["examples"],
                    r["seeds"],
                    f"{r['class_spread']:.2f}",
                    pct(r["linear_mean"], r["linear_ci95"]),
                    "-"
                    if r["kept_by"] == "random"
                    else pct(r["linear_vs_random"], r["linear_vs_random_ci95"], True),
                    pct(r["linear_vs_full"], r["linear_vs_full_ci95"], True),
                    f"{100 * r['linear_vs_full_test_ci95']:.1f}",
                    f"{100 * r['pixel_acc']:.1f}",
                    "-" if r["kept_by"] == "random" else f"{100 * r['pixel_vs_random']:+.1f}",
                    f"{100 * r['pixel_vs_full']:+.1f}",
                    f"{100 * r['pixel_vs_full_test_ci95']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    print()
    print(
        f"classes: smallest class count / largest in the kept set (seed {args.seed}). "
        f"test ±: 95% half-width of seed {args.seed}'s difference from full data over the same "
        f"test images (the test set's sampling error). "
        f"Pixel-target noise: random {f_noise:.0%} at {len(noise)} seeds "
        f"{pct(noise_mean, noise_half)} (sd {100 * (payload['pixel_noise']['sd'] or 0):.1f}); "
        f"{args.pixel_target} trained at {payload['pixel_train_img_per_s']:.0f} img/s."
    )
    print(
        "wall time, s: "
        + ", ".join(f"{name} {secs:.1f}" for name, secs in wall.items())
        + f" (load average {environment()['loadavg_1m']:.1f})"
    )
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
