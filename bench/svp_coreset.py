"""SVP core-set selection on CIFAR-10: a cheap proxy picks which labelled half the target trains on.

Trains the proxy on the (sub)training set while counting forgetting events, keeps a fraction by
forgetting events and by least confidence (and at random, the baseline), trains the target on
each kept part and on all of it, and reports test accuracy and the end-to-end time ratio
(proxy training + selection + target on the kept part) / (target on everything).

    python bench/svp_coreset.py [--quick] [--out bench-out/svp_coreset.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import (
    add_common_args,
    environment,
    require_data,
    subset,
    table,
    write_json,
)
from svp import Strategy, TrainConfig, coreset, evaluate, load_cifar10, train

# Sized for 2 CPU cores: about 8 minutes on an idle machine, --quick about 1 (much longer when
# other processes share the cores).
DEFAULTS = {
    "train_size": 10000,
    "fraction": 0.5,
    "target": "preact20",
    "target_epochs": 15,
    "proxy": "tiny_cnn",
    "proxy_epochs": 15,
    "test_size": 10000,
}
QUICK = {
    "train_size": 2000,
    "fraction": 0.5,
    "target": "preact20",
    "target_epochs": 6,
    "proxy": "tiny_cnn",
    "proxy_epochs": 10,
    "test_size": 3000,
}


def parse() -> argparse.Namespace:
    """Command-line options; --quick swaps in the small defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--quick", action="store_true", help="a ~3 minute run")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    p.add_argument("--batch-size", type=int, default=128, help="SGD batch size")
    args = p.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    """Run the experiment, print the table, write the JSON."""
    args = parse()
    torch.set_num_threads(args.threads)
    require_data(args.data)
    t0 = time.perf_counter()
    train_set = load_cifar10(args.data, "train", args.cache)
    test_set = load_cifar10(args.data, "test", args.cache)
    ix = subset(len(train_set.labels), args.train_size, args.seed)
    tix = subset(len(test_set.labels), args.test_size, args.seed + 1)
    x, y = train_set.images[ix], train_set.labels[ix]
    xt, yt = test_set.images[tix], test_set.labels[tix]
    k = len(train_set.classes)
    bs = args.batch_size
    proxy_cfg = TrainConfig.truncated(args.proxy_epochs, batch_size=bs, seed=args.seed)
    target_cfg = TrainConfig.truncated(args.target_epochs, batch_size=bs, seed=args.seed)

    proxy = train(args.proxy, x, y, proxy_cfg, num_classes=k, track_forgetting=True)
    print(f"proxy {args.proxy}: {proxy.stats.seconds:.1f}s", flush=True)
    kept: dict[str, tuple[list[int], float]] = {}
    for name, strategy in (
        ("forgetting", Strategy.FORGETTING),
        ("least_confidence", Strategy.LEAST_CONFIDENCE),
        ("random", Strategy.RANDOM),
    ):
        start = time.perf_counter()
        model = None if strategy == Strategy.RANDOM else proxy.model
        res = coreset(
            model, x, args.fraction, strategy, forgetting=proxy.forgetting, seed=args.seed
        )
        kept[name] = (res.indices, time.perf_counter() - start)

    rows: dict[str, dict[str, Any]] = {}
    full = train(args.target, x, y, target_cfg, num_classes=k)
    rows["all"] = {
        "examples": len(y),
        "test_acc": evaluate(full.model, xt, yt),
        "target_train_s": full.stats.seconds,
        "end_to_end_s": full.stats.seconds,
    }
    print(f"target on all: {rows['all']['test_acc']:.4f}", flush=True)
    for name, (indices, sel_s) in kept.items():
        fit = train(args.target, x[indices], y[indices], target_cfg, num_classes=k)
        # Random needs no proxy: its end-to-end time is the target's training alone.
        proxy_s = 0.0 if name == "random" else proxy.stats.seconds
        rows[name] = {
            "examples": len(indices),
            "test_acc": evaluate(fit.model, xt, yt),
            "target_train_s": fit.stats.seconds,
            "selection_s": sel_s,
            "end_to_end_s": proxy_s + sel_s + fit.stats.seconds,
        }
        print(f"target on {name}: {rows[name]['test_acc']:.4f}", flush=True)
    for r in rows.values():
        r["time_ratio"] = r["end_to_end_s"] / rows["all"]["end_to_end_s"]

    payload = {
        "config": {
            k_: (str(v) if isinstance(v, Path) else v)
            for k_, v in vars(args).items()
            if k_ != "out"
        },
        "environment": environment(),
        "proxy_train_s": proxy.stats.seconds,
        "proxy_train_acc": proxy.stats.final_train_acc,
        "never_learned": int((proxy.forgetting == proxy.forgetting.max()).sum())
        if proxy.forgetting is not None
        else 0,
        "subsets": rows,
        "acc_all": rows["all"]["test_acc"],
        "acc_forgetting": rows["forgetting"]["test_acc"],
        "acc_least_confidence": rows["least_confidence"]["test_acc"],
        "acc_random": rows["random"]["test_acc"],
        "time_ratio_forgetting": rows["forgetting"]["time_ratio"],
        "time_ratio_least_confidence": rows["least_confidence"]["time_ratio"],
        "total_s": time.perf_counter() - t0,
    }
    print()
    print(
        f"SVP core-set on CIFAR-10: {args.train_size} training images, keep {args.fraction:.0%}; "
        f"proxy {args.proxy} ({args.proxy_epochs} ep, {proxy.stats.seconds:.1f}s), "
        f"target {args.target} ({args.target_epochs} ep), test {args.test_size}, "
        f"{args.threads} threads"
    )
    print()
    print(
        table(
            ["kept by", "examples", "test acc", "target train s", "end-to-end s", "time ratio"],
            [
                [
                    n,
                    r["examples"],
                    r["test_acc"],
                    r["target_train_s"],
                    r["end_to_end_s"],
                    r["time_ratio"],
                ]
                for n, r in rows.items()
            ],
        )
    )
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
