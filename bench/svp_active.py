"""SVP's active-learning experiment on CIFAR-10: the target, a proxy and random as selectors.

All three start from the same random labelled set and run the same rounds. Per round and selector
it times selection (training the selector on its labels, scoring the unlabelled pool, ranking);
at the end it trains the target on each selector's labels and tests it. It also ranks the pool
with the target and with a proxy trained on the target's own labels, to compare the rankings
(Spearman) and the batches (overlap), as the paper does.

    python bench/svp_active.py [--quick] [--out bench-out/svp_active.json]
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
from svp import (
    Strategy,
    TrainConfig,
    cold_start,
    evaluate,
    load_cifar10,
    overlap,
    predict,
    select,
    spearman,
    train,
)
from svp.strategies import top_k, uncertainty_scores

# Sized on this machine kind (2 CPU cores): on an idle machine preact20 trains at about 800
# images/s and tiny_cnn at about 8,000, so the default takes about 9 minutes and --quick about 1.
# Other processes on the same cores can slow both by 10x or more (measured); CPU seconds
# (process time) are reported next to wall seconds for that reason.
DEFAULTS = {
    "pool": 10000,
    "initial": 1000,
    "batch": 1000,
    "rounds": 3,
    "target": "preact20",
    "target_epochs": 20,
    "proxy": "tiny_cnn",
    "proxy_epochs": 10,
    "test_size": 10000,
}
QUICK = {
    "pool": 4000,
    "initial": 400,
    "batch": 400,
    "rounds": 2,
    "target": "preact20",
    "target_epochs": 10,
    "proxy": "tiny_cnn",
    "proxy_epochs": 6,
    "test_size": 3000,
}


def parse() -> argparse.Namespace:
    """Command-line options; --quick swaps in the small defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--quick", action="store_true", help="a ~3 minute run")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    p.add_argument("--strategy", default="least_confidence", choices=[s.value for s in Strategy])
    p.add_argument("--batch-size", type=int, default=128, help="SGD batch size")
    args = p.parse_args()
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.initial + args.batch * args.rounds > args.pool:
        p.error("initial + batch x rounds must fit in the pool")
    return args


def main() -> None:
    """Run the experiment, print the tables, write the JSON."""
    args = parse()
    torch.set_num_threads(args.threads)
    require_data(args.data)
    strategy = Strategy(args.strategy)
    t0 = time.perf_counter()
    train_set = load_cifar10(args.data, "train", args.cache)
    test_set = load_cifar10(args.data, "test", args.cache)
    load_s = time.perf_counter() - t0
    pool_ix = subset(len(train_set.labels), args.pool, args.seed)
    test_ix = subset(len(test_set.labels), args.test_size, args.seed + 1)
    images, labels = train_set.images[pool_ix], train_set.labels[pool_ix]
    test_images, test_labels = test_set.images[test_ix], test_set.labels[test_ix]
    k = len(train_set.classes)
    target_cfg = TrainConfig.truncated(
        args.target_epochs, batch_size=args.batch_size, seed=args.seed
    )
    proxy_cfg = TrainConfig.truncated(args.proxy_epochs, batch_size=args.batch_size, seed=args.seed)
    arch = {"target": (args.target, target_cfg), "proxy": (args.proxy, proxy_cfg)}

    initial = cold_start(images, args.initial, Strategy.RANDOM, seed=args.seed).indices
    masks = {
        name: torch.zeros(args.pool, dtype=torch.bool) for name in ("target", "proxy", "random")
    }
    for m in masks.values():
        m[initial] = True

    rounds: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        row: dict[str, Any] = {"round": r, "labeled": int(masks["target"].sum())}
        models = {}
        results = {}
        for name in ("target", "proxy"):
            net, cfg = arch[name]
            mask = masks[name]
            start, cpu = time.perf_counter(), time.process_time()
            fit = train(net, images[mask], labels[mask], cfg, num_classes=k)
            res = select(fit.model, images, mask, args.batch, strategy, seed=args.seed + r)
            total = time.perf_counter() - start
            total_cpu = time.process_time() - cpu
            models[name], results[name] = fit.model, res
            row[name] = {
                "train_s": fit.stats.seconds,
                "score_s": res.scoring_seconds,
                "select_s": res.selecting_seconds,
                "selection_s": total,
                "selection_cpu_s": total_cpu,
                "train_acc": fit.stats.final_train_acc,
            }
        start = time.perf_counter()
        rnd = select(None, images, masks["random"], args.batch, Strategy.RANDOM, seed=args.seed + r)
        row["random"] = {"selection_s": time.perf_counter() - start}

        # The paper's comparison: proxy and target ranking the same pool after the same labels.
        # In round 1 both selectors saw the same labels; later, train a proxy on the target's.
        if r == 1:
            shadow = models["proxy"]
        else:
            mask = masks["target"]
            shadow = train(args.proxy, images[mask], labels[mask], proxy_cfg, num_classes=k).model
        tres = results["target"]
        assert tres.candidates is not None
        assert tres.candidate_scores is not None
        probs = predict(shadow, images[tres.candidates]).probs.double()
        proxy_scores = uncertainty_scores(probs, strategy)
        proxy_batch = tres.candidates[top_k(proxy_scores, args.batch)]
        row["spearman"] = spearman(tres.candidate_scores, proxy_scores)
        row["overlap"] = overlap(tres.indices, proxy_batch)

        for name, res in (
            ("target", results["target"]),
            ("proxy", results["proxy"]),
            ("random", rnd),
        ):
            masks[name][res.indices] = True
        rounds.append(row)
        print(
            f"round {r}: target {row['target']['selection_s']:.1f}s, "
            f"proxy {row['proxy']['selection_s']:.1f}s, spearman {row['spearman']:.3f}",
            flush=True,
        )

    final: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        fit = train(args.target, images[mask], labels[mask], target_cfg, num_classes=k)
        final[name] = {
            "labeled": int(mask.sum()),
            "test_acc": evaluate(fit.model, test_images, test_labels),
            "train_s": fit.stats.seconds,
        }
        print(f"final {name}: test accuracy {final[name]['test_acc']:.4f}", flush=True)

    target_s = sum(r["target"]["selection_s"] for r in rounds)
    proxy_s = sum(r["proxy"]["selection_s"] for r in rounds)
    target_cpu = sum(r["target"]["selection_cpu_s"] for r in rounds)
    proxy_cpu = sum(r["proxy"]["selection_cpu_s"] for r in rounds)
    payload = {
        "config": {
            k_: (str(v) if isinstance(v, Path) else v)
            for k_, v in vars(args).items()
            if k_ != "out"
        },
        "environment": environment(),
        "load_s": load_s,
        "rounds": rounds,
        "final": final,
        "target_selection_s": target_s,
        "proxy_selection_s": proxy_s,
        "speedup": target_s / proxy_s,
        "speedup_cpu": target_cpu / proxy_cpu,
        "spearman": sum(r["spearman"] for r in rounds) / len(rounds),
        "overlap": sum(r["overlap"] for r in rounds) / len(rounds),
        "acc_target_selected": final["target"]["test_acc"],
        "acc_proxy_selected": final["proxy"]["test_acc"],
        "acc_random": final["random"]["test_acc"],
        "total_s": time.perf_counter() - t0,
    }

    print()
    print(
        f"SVP active learning on CIFAR-10: pool {args.pool}, {args.initial} random + "
        f"{args.rounds} x {args.batch} by {strategy.value}; target {args.target} "
        f"({args.target_epochs} ep), proxy {args.proxy} ({args.proxy_epochs} ep), "
        f"{args.threads} threads"
    )
    print()
    headers = [
        "round",
        "labeled",
        "target train s",
        "target score s",
        "target sel s",
        "proxy train s",
        "proxy score s",
        "proxy sel s",
        "random sel s",
        "spearman",
        "overlap",
    ]
    body = [
        [
            r["round"],
            r["labeled"],
            r["target"]["train_s"],
            r["target"]["score_s"],
            r["target"]["selection_s"],
            r["proxy"]["train_s"],
            r["proxy"]["score_s"],
            r["proxy"]["selection_s"],
            r["random"]["selection_s"],
            r["spearman"],
            r["overlap"],
        ]
        for r in rounds
    ]
    print(table(headers, body))
    print()
    print(
        table(
            ["selector", "final labels", f"{args.target} test acc", "target train s"],
            [[n, f["labeled"], f["test_acc"], f["train_s"]] for n, f in final.items()],
        )
    )
    print()
    print(
        table(
            [
                "speed-up wall",
                "speed-up cpu",
                "mean spearman",
                "mean overlap",
                "acc proxy - target",
                "acc proxy - random",
                "total s",
            ],
            [
                [
                    payload["speedup"],
                    payload["speedup_cpu"],
                    payload["spearman"],
                    payload["overlap"],
                    payload["acc_proxy_selected"] - payload["acc_target_selected"],
                    payload["acc_proxy_selected"] - payload["acc_random"],
                    payload["total_s"],
                ]
            ],
        )
    )
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
