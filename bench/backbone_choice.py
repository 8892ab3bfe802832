"""Which backbone and input side by default: labels saved against seconds of embedding.

For each candidate (``name@side``), a class-balanced CIFAR-10 pool and test set are decoded from
the data set's zips the way a worker decodes them (``svp.decode_image`` at the input side) and
embedded (ONNX Runtime by default, one thread; cached in bench-out/embeddings). Then, for each
seed, one random order of the pool gives the labelled sets at every budget, the same for every
candidate (paired), and the product's linear head (``svp.fit_linear_head``, C = 10) is tested.

Reported per candidate and budget: mean test accuracy, the paired difference to ``--reference``
(mean, 95% t-interval, wins out of seeds), and labels saved: the budget the reference needs to
reach the candidate's mean accuracy (interpolated on log budget) minus the candidate's budget;
negative is labels lost. Against that, the embedding cost of a 50,000-image pool with two
one-thread workers: from ``--speed`` (bench/embed_speed.py's JSON, two processes) when given,
else from this run's own embedding rate on one thread, doubled. The last column is labels saved
per extra second of that embedding (``--reference`` costs 0 extra by definition).

    python bench/backbone_choice.py [--configs efficientnet_lite0@128,efficientnet_lite2@260]
        [--speed bench-out/embed_speed.json] [--out bench-out/backbone_choice.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.embed_speed import backbone_at
from bench.svp_common import DEFAULT_DATA, REPO, environment, require_data, table, write_json
from svp import decode_image, fit_linear_head, predict

CONFIGS = (
    "efficientnet_lite0@96,efficientnet_lite0@112,efficientnet_lite0@128,"
    "efficientnet_lite0_int8@128,"
    "efficientnet_lite2@152,efficientnet_lite2@260"
)
EMBED_DIR = REPO / "bench-out" / "embeddings"
POOL_FOR_COST = 50_000


def zip_entries(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Names and class indices of a CIFAR zip's images (class = parent folder), and the classes."""
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
    classes = sorted({n.split("/")[-2] for n in names})
    return names, [classes.index(n.split("/")[-2]) for n in names], classes


def balanced(labels: list[int], n: int, seed: int) -> list[int]:
    """``n`` indices, the same count of each class, a seeded choice within each."""
    g = np.random.default_rng(seed)
    y = np.asarray(labels)
    k = int(y.max()) + 1
    out = [g.permutation(np.flatnonzero(y == c))[: n // k] for c in range(k)]
    return sorted(int(i) for i in np.concatenate(out))


def embedded(
    config: str, zip_path: Path, names: list[str], args: argparse.Namespace
) -> tuple[torch.Tensor, float]:
    """Features of these zip entries at the config's side (cached), and images/s on one thread."""
    name, side = config.split("@")
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    path = EMBED_DIR / f"choice-{name}-{side}-{zip_path.stem}-{len(names)}-{digest}.npy"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return torch.from_numpy(np.load(path)), float(json.loads(meta.read_text())["img_s"])
    backbone = backbone_at(name, int(side), args.runtime, args.cache_dir)
    with zipfile.ZipFile(zip_path) as zf:
        pixels = np.stack([decode_image(zf.read(n), int(side)) for n in names])
    start = time.perf_counter()
    feats = backbone.embed(torch.from_numpy(pixels), num_threads=1)
    rate = len(names) / (time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats.numpy())
    meta.write_text(json.dumps({"img_s": rate, "runtime": args.runtime, "rows": len(names)}))
    print(f"embedded {len(names)} images, {config}: {rate:.1f} images/s", flush=True)
    return feats, rate


def accuracy(
    pool: torch.Tensor, pool_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor, seed: int
) -> float:
    """Test accuracy of the product's linear head fitted on (pool, pool_y)."""
    head = fit_linear_head(pool, pool_y, 10, seed=seed, calibrate=False)
    return float((predict(head.model, test).probs.argmax(1) == test_y).double().mean())


def needed(acc: float, budgets: list[int], curve: list[float]) -> float | None:
    """The budget at which ``curve`` (made monotone) reaches ``acc``, on log budget; None past
    its last budget. Below its first, the first segment is extended."""
    lb = [math.log(b) for b in budgets]
    r = list(np.maximum.accumulate(curve))
    if acc > r[-1]:
        return None
    if acc <= r[0]:
        slope = (r[1] - r[0]) / (lb[1] - lb[0])
        return math.exp(lb[0] - (r[0] - acc) / slope) if slope > 0 else float(budgets[0])
    i = next(i for i, v in enumerate(r) if v >= acc)
    frac = (acc - r[i - 1]) / (r[i] - r[i - 1]) if r[i] > r[i - 1] else 1.0
    return math.exp(lb[i - 1] + frac * (lb[i] - lb[i - 1]))


def paired(diffs: list[float]) -> tuple[float, float, int]:
    """Mean, 95% t half-width and count of positive values."""
    m = statistics.fmean(diffs)
    half = (
        float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
        if len(diffs) > 1
        else 0.0
    )
    return m, half, sum(d > 0 for d in diffs)


def two_worker_rate(config: str, speed: dict[str, Any] | None, one_thread: float) -> float:
    """Images/s of two one-thread workers: measured by embed_speed.py, else twice one thread."""
    name, side = config.split("@")
    for row in (speed or {}).get("embed", []):
        if (row["backbone"], row["image_size"], row["procs"]) == (name, int(side), 2) and row[
            "runtime"
        ] in ("onnx", "onnx-int8"):
            return float(row["best_img_s"])
    return 2 * one_thread


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Embed every candidate, fit every (candidate, seed, budget), compare with the reference."""
    require_data(args.data)
    train_zip, test_zip = args.data / "train.zip", args.data / "test.zip"
    train_names, train_y, _ = zip_entries(train_zip)
    test_names, test_y, _ = zip_entries(test_zip)
    pool_ix = balanced(train_y, args.pool, 0)
    test_ix = balanced(test_y, args.test, 1)
    pool_y = torch.tensor([train_y[i] for i in pool_ix])
    ty = torch.tensor([test_y[i] for i in test_ix])
    speed = json.loads(args.speed.read_text()) if args.speed else None
    configs = args.configs.split(",")
    if args.reference not in configs:
        configs.insert(0, args.reference)
    curves: dict[str, dict[int, list[float]]] = {}
    cost: dict[str, float] = {}
    for config in configs:
        pool, rate = embedded(config, train_zip, [train_names[i] for i in pool_ix], args)
        test, _ = embedded(config, test_zip, [test_names[i] for i in test_ix], args)
        cost[config] = POOL_FOR_COST / two_worker_rate(config, speed, rate)
        curves[config] = {b: [] for b in args.budgets}
        for seed in range(args.seeds):
            order = torch.randperm(len(pool_ix), generator=torch.Generator().manual_seed(seed))
            for b in args.budgets:
                chosen = order[:b]
                curves[config][b].append(accuracy(pool[chosen], pool_y[chosen], test, ty, seed))
        means = [statistics.fmean(curves[config][b]) for b in args.budgets]
        pairs = zip(args.budgets, means, strict=True)
        print(f"{config}: " + " ".join(f"{b}:{m:.3f}" for b, m in pairs))
    return {"curves": curves, "cost_s": cost, "configs": configs}


def report(args: argparse.Namespace, res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the comparison with the reference at each of ``--compare`` budgets."""
    ref = args.reference
    ref_curve = [statistics.fmean(res["curves"][ref][b]) for b in args.budgets]
    rows = []
    for config in res["configs"]:
        for b in args.compare:
            accs = res["curves"][config][b]
            diffs = [a - r for a, r in zip(accs, res["curves"][ref][b], strict=True)]
            mean_diff, half, wins = paired(diffs)
            need = needed(statistics.fmean(accs), args.budgets, ref_curve)
            saved = None if need is None else need - b
            extra = res["cost_s"][config] - res["cost_s"][ref]
            per_s = saved / extra if saved is not None and abs(extra) > 1e-9 else None
            rows.append(
                {
                    "config": config,
                    "budget": b,
                    "accuracy": statistics.fmean(accs),
                    "diff": mean_diff,
                    "diff_95": half,
                    "wins": wins,
                    "seeds": len(accs),
                    "labels_saved": saved,
                    "embed_50k_s": res["cost_s"][config],
                    "extra_s": extra,
                    "saved_per_extra_s": per_s,
                }
            )
    return rows


def main() -> None:
    """Measure, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CIFAR-10 zips")
    p.add_argument("--configs", default=CONFIGS, help="name@side,... candidates")
    p.add_argument("--reference", default="efficientnet_lite0@128")
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=9, help="paired random label orders")
    p.add_argument("--budgets", default="100,200,500,1000,2000")
    p.add_argument("--compare", default="200,1000", help="budgets the table compares at")
    p.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    p.add_argument("--cache-dir", type=Path, default=REPO / "bench-out" / "onnx")
    p.add_argument("--speed", type=Path, default=None, help="embed_speed.py's JSON")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.compare = [int(b) for b in args.compare.split(",")]
    if not set(args.compare) <= set(args.budgets) or args.budgets[-1] > args.pool:
        p.error("--compare budgets must be among --budgets, which must fit in the pool")
    torch.set_num_threads(1)
    env = environment()
    res = run(args)
    rows = report(args, res)
    print(
        f"\nLinear probe on CIFAR-10 (pool {args.pool}, test {args.test}, {args.seeds} paired "
        f"label orders); reference {args.reference}; embedding cost of {POOL_FOR_COST:,} images "
        f"with two one-thread workers ({'embed_speed' if args.speed else 'this run, x2'})\n"
    )
    print(
        table(
            ["config", "labels", "acc", "diff", "±95%", "wins", "saved", "50k s", "saved/extra s"],
            [
                [
                    r["config"],
                    r["budget"],
                    r["accuracy"],
                    r["diff"],
                    r["diff_95"],
                    f"{r['wins']}/{r['seeds']}",
                    "past curve" if r["labels_saved"] is None else f"{r['labels_saved']:.0f}",
                    r["embed_50k_s"],
                    "-" if r["saved_per_extra_s"] is None else f"{r['saved_per_extra_s']:.2f}",
                ]
                for r in rows
            ],
        )
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out, {"environment": env, "args": settings, **res, "rows": rows})


if __name__ == "__main__":
    main()
