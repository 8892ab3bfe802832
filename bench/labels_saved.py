"""Labels saved at small budgets: selection on frozen embeddings with the linear proxy, on
CIFAR-10 (images) or on 20 Newsgroups / Reuters R8 (text, ../shared/data/text).

A pool and test set are embedded once with a frozen backbone (cached in bench-out/embeddings:
images keyed by backbone, size and the subset; texts by content in an EmbeddingStore, see
bench/text_common.py). CIFAR-10 and 20 Newsgroups subsets are class-balanced; Reuters R8 keeps
its imbalance (all of it by default). Each arm then labels the pool
up to cumulative budgets (20, 50, ..., 2000): every step fits the same calibrated linear head
(svp.fit_linear_head, C=10) on the labels so far, selects the increment through svp.select,
and tests the head on the test set. Cold starts: typiclust and auto from nothing (they need
no model); random, margin, least_confidence, kcenter and margin_clusters from the same random
first 20 as random's seed (they have no model to score with yet), so every arm is paired by
seed with random.

Reported per budget: mean test accuracy and its 95% t-interval, labels saved = 1 - b/b_random
(b_random: the random budget reaching the same mean accuracy, interpolated on log budget; None
past random's last budget), and whether the paired-by-seed 95% interval of (arm - random)
excludes zero. Also the suggestions' accuracy (share of each new batch whose true label is the
head's prediction), the calibrated confidence next to the accuracy, and seconds per round.
``--switch-at 2,5,10,20,50`` adds auto arms with other switch points (labels per class), which
share their typiclust prefix with the typiclust arm, so the sweep costs only its tails.

On text the arm ``fasttext`` selects by margin with the paper's proxy (svp.fasttext_proxy,
trained from scratch on the labelled texts each step) from random's first batch; like every
arm it is scored by the same linear head on the embeddings, so the table compares the labels
each selector picked. It runs where svp.fasttext_proxy exists and is skipped with a note where not.

    python bench/labels_saved.py [--quick] [--out bench-out/labels_saved.json]
    python bench/labels_saved.py --dataset 20newsgroups [--quick] [--embed-workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import REPO, add_common_args, environment, require_data, table, write_json
from bench.text_common import DATASETS, TEXT_DATA, embed_cached, pick_subset, read_split
from svp import (
    AUTO_SWITCH_PER_CLASS,
    Strategy,
    auto_choice,
    cold_start,
    fit_linear_head,
    get_spec,
    load_backbone,
    load_cifar10,
    margin,
    predict,
    select,
    typiclust,
)

BUDGETS = (20, 50, 100, 200, 500, 1000, 2000)
ARMS = ("auto", "typiclust", "margin", "least_confidence", "kcenter", "margin_clusters")
# Text: the arms (DESIGN 4c); budgets stop at 1,000, a quarter of the 4,000-text pool.
TEXT_BUDGETS = (20, 50, 100, 200, 500, 1000)
TEXT_ARMS = ("auto", "typiclust", "margin", "fasttext")
# Sized on this machine kind (2 shared CPU cores, other jobs at load 5-9, one thread): the
# default with the switch sweep took 19 minutes, 9 of them embedding 12,000 images (23 images/s
# under that load; cached afterwards), --quick about 4. Rounds take 1-3 s each.
DEFAULTS = {"pool": 10_000, "test": 2_000, "random_seeds": 10, "seeds": 5}
QUICK = {"pool": 4_000, "test": 1_000, "random_seeds": 6, "seeds": 3}
# Text pools, sized for embedding on 2 shared cores (MiniLM ~10-20 long texts/s each there):
# 20 Newsgroups 200 posts a class and 100 a class to test; R8 3,000 and 1,500 in its own
# proportions (of 5,485 and 2,189: 41-2,840 a class).
TEXT_SIZES = {"20newsgroups": (4_000, 2_000), "reuters-r8": (3_000, 1_500)}
EMBED_DIR = REPO / "bench-out" / "embeddings"


def parse() -> argparse.Namespace:
    """Command-line options; --quick swaps in the small defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.set_defaults(out=None)
    p.add_argument("--dataset", choices=("cifar10", *DATASETS), default="cifar10")
    p.add_argument("--text-data", type=Path, default=TEXT_DATA, help="folder of the text sets")
    p.add_argument("--embed-workers", type=int, default=2, help="processes embedding missing texts")
    p.add_argument("--quick", action="store_true", help="a smaller pool, fewer seeds")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    p.add_argument("--budgets", default=None, help="cumulative budgets")
    p.add_argument("--arms", default=None, help="strategies besides random")
    p.add_argument(
        "--switch-at", default="", help="extra auto arms: switch points in labels per class"
    )
    p.add_argument("--backbone", default=None, help="efficientnet_lite0; minilm_l6 for text")
    p.add_argument("--subset-seed", type=int, default=0, help="which pool and test subset")
    p.add_argument("--c", type=float, default=10.0, help="the head's inverse L2 strength")
    p.add_argument("--no-scale", action="store_true", help="skip the 50,000-row timing")
    args = p.parse_args()
    text = args.dataset != "cifar10"
    base = dict(QUICK if args.quick else DEFAULTS)
    if text:
        base["pool"], base["test"] = TEXT_SIZES[args.dataset]
        if args.quick:
            base["pool"], base["test"] = 2_000, 1_000
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        suffix = "" if args.dataset == "cifar10" else "_" + args.dataset.replace("-", "_")
        args.out = REPO / "bench-out" / f"labels_saved{suffix}.json"
    if args.backbone is None:
        args.backbone = "minilm_l6" if text else "efficientnet_lite0"
    default_budgets = TEXT_BUDGETS if text else BUDGETS
    args.budgets = [
        int(b) for b in (args.budgets or ",".join(map(str, default_budgets))).split(",")
    ]
    args.arms = [a for a in (args.arms or ",".join(TEXT_ARMS if text else ARMS)).split(",") if a]
    args.switch_at = [float(s) for s in args.switch_at.split(",") if s]
    if "fasttext" in args.arms and not text:
        p.error("the fasttext arm needs a text data set")
    if args.budgets[-1] > (args.pool or args.budgets[-1]) or args.budgets != sorted(
        set(args.budgets)
    ):
        p.error("budgets must increase and fit in the pool")
    return args


def balanced(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices with the same count of every class (a seeded choice within each class)."""
    classes = int(labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    per = n // classes
    out = []
    for c in range(classes):
        members = (labels == c).nonzero().squeeze(1)
        out.append(members[torch.randperm(len(members), generator=g)[:per]])
    return torch.cat(out).sort().values


def embeddings(
    name: str, images: torch.Tensor, tag: str, index: torch.Tensor, threads: int
) -> tuple[torch.Tensor, float]:
    """The subset's embeddings and the seconds computing them took (cached on disk)."""
    side = get_spec(name).image_size
    digest = hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16]
    path = EMBED_DIR / f"{name}-{side}-{tag}-{len(index)}-{digest}.npy"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return torch.from_numpy(np.load(path)), float(json.loads(meta.read_text())["seconds"])
    backbone = load_backbone(name, device="cpu")
    start = time.perf_counter()
    feats = backbone.embed(images[index], batch_size=64, num_threads=threads)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats.numpy())
    meta.write_text(json.dumps({"seconds": seconds, "rows": len(index), "image_size": side}))
    return feats, seconds


@dataclass
class Step:
    """One budget of one run: what the head scored after it, and what the batch was."""

    budget: int
    accuracy: float
    confidence: float  # mean calibrated top probability on the test set
    temperature: float
    seconds: float  # fit + select of the batch that reached this budget
    suggestion_accuracy: float | None  # share of the batch the head labelled right
    suggestion_confidence: float | None
    choice: str
    labelled: list[int] = field(repr=False, default_factory=list)


@dataclass
class Data:
    """The embedded pool and test set."""

    pool: torch.Tensor
    pool_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    classes: int
    # The pool's texts, for the fasttext arm (None for images).
    texts: list[str] | None = None


def evaluate_head(data: Data, labelled: list[int], seed: int, c: float) -> tuple[Any, Step]:
    """Fit the head on the labels so far and test it; the Step's selection fields are blank."""
    start = time.perf_counter()
    proxy = fit_linear_head(
        data.pool[labelled], data.pool_labels[labelled], data.classes, seed=seed, c=c
    )
    fit_s = time.perf_counter() - start
    probs = predict(proxy.model, data.test).probs
    top = probs.max(1)
    acc = float((top.indices == data.test_labels).double().mean())
    step = Step(
        budget=len(labelled),
        accuracy=acc,
        confidence=float(top.values.double().mean()),
        temperature=proxy.calibration.temperature,
        seconds=fit_s,
        suggestion_accuracy=None,
        suggestion_confidence=None,
        choice="",
        labelled=list(labelled),
    )
    return proxy, step


def run(
    data: Data,
    arm: str,
    seed: int,
    budgets: list[int],
    c: float,
    memo: dict[tuple[Any, ...], tuple[Any, Step]],
) -> list[Step]:
    """One arm, one seed, through every budget; prefixes shared with other arms are reused."""
    strategy, switch = arm, AUTO_SWITCH_PER_CLASS
    if arm.startswith("auto@"):
        strategy, switch = "auto", float(arm.split("@")[1])
    # fasttext: margin, scored by the fastText proxy instead of the linear head.
    strategy = Strategy("margin" if arm == "fasttext" else strategy)
    steps: list[Step] = []
    # Memo keys are the choices so far: two arms that chose alike hold the same labels.
    first = "typical" if strategy in (Strategy.TYPICLUST, Strategy.AUTO) else "random"
    key: tuple[Any, ...] = (seed, first)
    if key not in memo:
        start = time.perf_counter()
        if first == "typical":
            chosen = cold_start(data.pool, budgets[0], Strategy.TYPICLUST, seed=seed).indices
        else:
            chosen = cold_start(data.pool, budgets[0], Strategy.RANDOM, seed=seed).indices
        sel_s = time.perf_counter() - start
        proxy, step = evaluate_head(data, chosen, seed, c)
        step.seconds += sel_s
        step.choice = "typiclust" if first == "typical" else "random"
        memo[key] = (proxy, step)
    proxy, step = memo[key]
    steps.append(step)
    for j, budget in enumerate(budgets[1:], start=1):
        labelled = steps[-1].labelled
        choice = strategy
        if strategy == Strategy.AUTO:
            choice, _ = auto_choice(len(labelled), data.classes, switch)
        key = (*key, "fasttext" if arm == "fasttext" else choice.value)
        if key not in memo:
            start = time.perf_counter()
            if arm == "fasttext":
                indices, predicted, prob = fasttext_margin(
                    data, labelled, budget - len(labelled), 1000 * seed + j
                )
            else:
                res = select(
                    proxy.model,
                    data.pool,
                    labelled,
                    budget - len(labelled),
                    strategy,
                    seed=1000 * seed + j,
                    auto_switch_at=switch,
                )
                if strategy == Strategy.AUTO:
                    assert res.details["auto_choice"] == choice.value
                indices, predicted = res.indices, res.predicted_class
                prob = [p for p in res.predicted_prob if p is not None]
            sel_s = time.perf_counter() - start
            truth = data.pool_labels[indices]
            pred = torch.tensor(predicted)
            new_proxy, new_step = evaluate_head(data, labelled + indices, seed, c)
            new_step.seconds += sel_s
            new_step.suggestion_accuracy = float((pred == truth).double().mean())
            new_step.suggestion_confidence = statistics.fmean(prob)
            new_step.choice = "fasttext-margin" if arm == "fasttext" else choice.value
            memo[key] = (new_proxy, new_step)
        proxy, step = memo[key]
        steps.append(step)
    return steps


def fasttext_available() -> bool:
    """Whether svp.fasttext_proxy (the paper's text proxy) is on this branch."""
    return importlib.util.find_spec("svp.fasttext_proxy") is not None


def fasttext_margin(
    data: Data, labelled: list[int], budget: int, seed: int
) -> tuple[list[int], list[int], list[float]]:
    """The ``budget`` unlabelled texts of smallest fastText margin: pool indices, the proxy's
    predicted class and its probability for each."""
    from svp import fasttext_proxy

    assert data.texts is not None
    proxy = fasttext_proxy.fit_fasttext(
        [data.texts[i] for i in labelled],
        data.pool_labels[labelled].tolist(),
        data.classes,
        fasttext_proxy.FastTextConfig(seed=seed),
    )
    taken = set(labelled)
    candidates = torch.tensor([i for i in range(len(data.texts)) if i not in taken])
    probs = torch.as_tensor(
        np.asarray(proxy.predict_proba([data.texts[i] for i in candidates.tolist()])),
        dtype=torch.float64,
    )
    # Plain top-k margin, as the margin arm does with the linear head; stable ties.
    pos = torch.sort(margin(probs), descending=True, stable=True).indices[:budget]
    top = probs[pos].max(1)
    return (
        candidates[pos].tolist(),
        [int(c) for c in top.indices.tolist()],
        [float(p) for p in top.values.tolist()],
    )


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    half = (
        float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
    )
    return m, half


def random_budget(acc: float, budgets: list[int], rand: list[float]) -> float | None:
    """The budget at which random's mean accuracy reaches ``acc``, interpolated on log budget.

    Random's curve is made monotone (running maximum) first. Below its first budget the first
    segment is extended (a loss can be measured there); above its last, None (not measured).
    """
    lb = [math.log(b) for b in budgets]
    r = list(np.maximum.accumulate(rand))
    if acc > r[-1]:
        return None
    if acc <= r[0]:
        slope = (r[1] - r[0]) / (lb[1] - lb[0]) if r[1] > r[0] else 0.0
        return math.exp(lb[0] - (r[0] - acc) / slope) if slope > 0 else float(budgets[0])
    i = next(i for i, v in enumerate(r) if v >= acc)
    frac = (acc - r[i - 1]) / (r[i] - r[i - 1])
    return math.exp(lb[i - 1] + frac * (lb[i] - lb[i - 1]))


def scale_timing() -> dict[str, float]:
    """Seconds of typiclust / auto cold start on a 50,000 x 1280 pool with a batch of 100."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(100, 1280, generator=g)
    x = centres[torch.randint(100, (50_000,), generator=g)] + torch.randn(50_000, 1280, generator=g)
    start = time.perf_counter()
    first = cold_start(x, 100, Strategy.AUTO, seed=0)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    typiclust(x, first.indices, 100, seed=1)
    second = time.perf_counter() - start
    return {"auto_cold_start_s": cold, "typiclust_100_labelled_s": second}


def image_data(args: argparse.Namespace) -> tuple[Data, float]:
    """CIFAR-10's class-balanced pool and test set, embedded; and the seconds embedding took."""
    require_data(args.data)
    train_set = load_cifar10(args.data, "train", args.cache)
    test_set = load_cifar10(args.data, "test", args.cache)
    pool_ix = balanced(train_set.labels, args.pool, args.subset_seed)
    test_ix = balanced(test_set.labels, args.test, args.subset_seed + 1)
    pool, pool_s = embeddings(args.backbone, train_set.images, "train", pool_ix, args.threads)
    test, test_s = embeddings(args.backbone, test_set.images, "test", test_ix, args.threads)
    data = Data(
        pool, train_set.labels[pool_ix], test, test_set.labels[test_ix], len(train_set.classes)
    )
    embed_s = pool_s + test_s
    print(
        f"embedded {len(pool_ix) + len(test_ix)} images with {args.backbone} in {embed_s:.0f} s "
        f"({(len(pool_ix) + len(test_ix)) / max(embed_s, 1e-9):.0f} images/s; cached in "
        f"{EMBED_DIR})",
        flush=True,
    )
    return data, embed_s


def text_data(args: argparse.Namespace) -> tuple[Data, float]:
    """A text set's pool and test set, embedded (only texts not cached yet); embedding seconds."""
    train_set = read_split(args.dataset, "train", args.text_data)
    test_set = read_split(args.dataset, "test", args.text_data)
    pool_ix = pick_subset(train_set.labels, args.pool, args.subset_seed)
    test_ix = pick_subset(test_set.labels, args.test, args.subset_seed + 1)
    texts = [train_set.texts[i] for i in pool_ix.tolist()]
    pool, pool_s, pool_n = embed_cached(args.backbone, texts, workers=args.embed_workers)
    test, test_s, test_n = embed_cached(
        args.backbone, [test_set.texts[i] for i in test_ix.tolist()], workers=args.embed_workers
    )
    args.pool, args.test = len(pool_ix), len(test_ix)
    print(
        f"{args.dataset}: pool {len(pool_ix)}, test {len(test_ix)}, {len(train_set.classes)} "
        f"classes; embedded {pool_n + test_n} new texts with {args.backbone} in "
        f"{pool_s + test_s:.0f} s",
        flush=True,
    )
    data = Data(
        pool,
        train_set.labels[pool_ix],
        test,
        test_set.labels[test_ix],
        len(train_set.classes),
        texts=texts,
    )
    return data, pool_s + test_s


def main() -> None:
    """Embed, run every arm and seed, print the tables, write the JSON."""
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    text = args.dataset != "cifar10"
    data, embed_s = text_data(args) if text else image_data(args)
    if args.budgets[-1] > args.pool:
        raise SystemExit(f"the last budget {args.budgets[-1]} exceeds the pool ({args.pool})")
    if "fasttext" in args.arms and not fasttext_available():
        print(
            "fasttext arm skipped: svp/fasttext_proxy.py is not on this branch yet "
            "(FLAG: rerun with --arms fasttext once it lands)",
            flush=True,
        )
        args.arms = [a for a in args.arms if a != "fasttext"]

    arms = ["random", *args.arms, *(f"auto@{s:g}" for s in args.switch_at)]
    memo: dict[tuple[Any, ...], tuple[Any, Step]] = {}
    runs: dict[str, list[list[Step]]] = {}
    for arm in arms:
        seeds = args.random_seeds if arm == "random" else args.seeds
        start = time.perf_counter()
        runs[arm] = [run(data, arm, s, args.budgets, args.c, memo) for s in range(seeds)]
        accs = [
            statistics.fmean(r[j].accuracy for r in runs[arm]) for j in range(len(args.budgets))
        ]
        print(
            f"{arm:>18}: {seeds} seeds in {time.perf_counter() - start:.0f} s; accuracy "
            + " ".join(f"{100 * a:.1f}" for a in accs),
            flush=True,
        )

    budgets = args.budgets
    nb = len(budgets)
    accuracy: dict[str, list[float]] = {}
    ci95: dict[str, list[float]] = {}
    for arm, rs in runs.items():
        pairs = [interval([r[j].accuracy for r in rs]) for j in range(nb)]
        accuracy[arm] = [m for m, _ in pairs]
        ci95[arm] = [h for _, h in pairs]
    saved: dict[str, list[float | None]] = {}
    b_random: dict[str, list[float | None]] = {}
    paired: dict[str, list[list[float]]] = {}
    excludes: dict[str, list[bool]] = {}
    for arm, rs in runs.items():
        b_random[arm] = [random_budget(a, budgets, accuracy["random"]) for a in accuracy[arm]]
        saved[arm] = [
            None if br is None else 1.0 - b / br
            for b, br in zip(budgets, b_random[arm], strict=True)
        ]
        diffs = [
            [r[j].accuracy - runs["random"][s][j].accuracy for s, r in enumerate(rs)]
            for j in range(nb)
        ]
        paired[arm], excludes[arm] = [], []
        for d in diffs:
            m, h = interval(d)
            paired[arm].append([m - h, m + h])
            excludes[arm].append(bool(len(d) > 1 and (m - h > 0 or m + h < 0)))

    def per_budget(arm: str, attr: str) -> list[float | None]:
        out: list[float | None] = []
        for j in range(nb):
            vals = [getattr(r[j], attr) for r in runs[arm] if getattr(r[j], attr) is not None]
            out.append(statistics.fmean(vals) if vals else None)
        return out

    suggestion_accuracy = {arm: per_budget(arm, "suggestion_accuracy") for arm in runs}
    suggestion_confidence = {arm: per_budget(arm, "suggestion_confidence") for arm in runs}
    confidence = {arm: per_budget(arm, "confidence") for arm in runs}
    temperature = {arm: per_budget(arm, "temperature") for arm in runs}
    choices = {arm: [runs[arm][0][j].choice for j in range(nb)] for arm in runs}
    all_steps = [st for rs in runs.values() for r in rs for st in r[1:]]
    per_round = statistics.fmean(st.seconds for st in all_steps)
    per_round_by_arm = {
        arm: statistics.fmean(st.seconds for r in rs for st in r[1:]) for arm, rs in runs.items()
    }
    # The 50,000 x 1280 timing is the image pool's; text pools are 384-d or narrower.
    scale = {} if args.no_scale or text else scale_timing()

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    print()
    print(
        f"Labels saved on {args.dataset}: pool {args.pool}, test {args.test}, {args.backbone} "
        f"embeddings, linear head C={args.c:g} (calibrated), random {args.random_seeds} seeds, "
        f"others {args.seeds}; auto switches at {AUTO_SWITCH_PER_CLASS:g} labels per class"
    )
    print()
    print("Test accuracy %, mean ± 95% half-width:")
    print(
        table(
            ["arm", *map(str, budgets)],
            [
                [
                    arm,
                    *(
                        f"{100 * m:.1f}±{100 * h:.1f}"
                        for m, h in zip(accuracy[arm], ci95[arm], strict=True)
                    ),
                ]
                for arm in runs
            ],
        )
    )
    print()
    print("Labels saved vs random % (* paired 95% interval of arm - random excludes 0):")
    print(
        table(
            ["arm", *map(str, budgets)],
            [
                [
                    arm,
                    *(
                        pct(s) + ("*" if e else "")
                        for s, e in zip(saved[arm], excludes[arm], strict=True)
                    ),
                ]
                for arm in runs
                if arm != "random"
            ],
        )
    )
    print()
    print("Paired difference arm - random, accuracy points, 95% interval:")
    print(
        table(
            ["arm", *map(str, budgets)],
            [
                [arm, *(f"{100 * lo:+.1f}..{100 * hi:+.1f}" for lo, hi in paired[arm])]
                for arm in runs
                if arm != "random"
            ],
        )
    )
    print()
    print("Suggestions: accuracy % of each new batch / mean calibrated confidence % of it:")
    print(
        table(
            ["arm", *map(str, budgets[1:])],
            [
                [
                    arm,
                    *(
                        f"{pct(a)}/{pct(c)}"
                        for a, c in zip(
                            suggestion_accuracy[arm][1:],
                            suggestion_confidence[arm][1:],
                            strict=True,
                        )
                    ),
                ]
                for arm in runs
            ],
        )
    )
    print()
    print("Test set: accuracy % / mean calibrated confidence % (temperature):")
    print(
        table(
            ["arm", *map(str, budgets)],
            [
                [
                    arm,
                    *(
                        f"{pct(a)}/{pct(c)} ({t:.2f})"
                        for a, c, t in zip(
                            accuracy[arm], confidence[arm], temperature[arm], strict=True
                        )
                        if t is not None
                    ),
                ]
                for arm in ("random", "auto")
                if arm in runs
            ],
        )
    )
    print()
    print("auto's choice per budget:", " ".join(choices.get("auto", [])) or "-")
    print(
        f"seconds: embedding {embed_s:.0f}, per round (fit + calibrate + select) {per_round:.2f}"
        + "".join(f"; {a} {s:.2f}" for a, s in per_round_by_arm.items())
    )
    if scale:
        print(
            f"50,000 x 1280 pool, batch 100: auto cold start {scale['auto_cold_start_s']:.1f} s, "
            f"typiclust with 100 labelled {scale['typiclust_100_labelled_s']:.1f} s"
        )
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")

    payload = {
        "budgets": budgets,
        "accuracy": accuracy,
        "ci95": ci95,
        "labels_saved": saved,
        "paired_ci_excludes_zero": excludes,
        "seconds": {"embedding": embed_s, "per_round": per_round},
        "paired_ci95": paired,
        "b_random": b_random,
        "suggestion_accuracy": suggestion_accuracy,
        "suggestion_confidence": suggestion_confidence,
        "test_confidence": confidence,
        "temperature": temperature,
        "auto_choice": choices.get("auto"),
        "auto_switch_per_class": AUTO_SWITCH_PER_CLASS,
        "per_round_seconds_by_arm": per_round_by_arm,
        "scale_50k_x_1280_batch_100": scale,
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "environment": environment(),
        "total_s": total,
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
