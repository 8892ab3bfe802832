"""SVP's active-learning experiment on text (the paper's third setting): 20 Newsgroups, VDCNN as
the target, selecting with the target itself, with the fastText proxy, (optionally) with the
``linear`` proxy on a text encoder's embeddings, and at random.

All selectors start from the same random labelled set and run the same rounds. Per round and
selector it times selection (training the selector on its labels, scoring the unlabelled pool,
ranking); at the end it trains the target on each selector's labels and tests it. The shape is
bench/svp_active.py's (the image version of the claim).

    python bench/svp_text.py [--quick] [--out bench-out/svp_text.json]

The data is ../shared/data/text/20newsgroups (train.csv, test.csv: name,text,label).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import DEFAULT_DATA, add_common_args, environment, subset, table, write_json
from svp import Strategy, evaluate, fit_linear_head, select
from svp.fasttext_proxy import FastTextConfig, fit_fasttext
from svp.ranking import top_k
from svp.strategies import uncertainty_scores
from svp.vdcnn import TextFit, create_text_target, encode_texts, train_vdcnn, vdcnn_config

TEXT_DATA = DEFAULT_DATA.parent / "text" / "20newsgroups"
# Four groups from four different top-level hierarchies: --quick's task, on which a VDCNN
# trained on a few hundred posts is above chance (on all twenty it is near chance there).
QUICK_CLASSES = "comp.graphics,rec.sport.hockey,sci.space,talk.politics.mideast"

# The full run is the paper's setting scaled to this corpus: all 20 groups, 1014 characters,
# VDCNN-9 at the paper's widths. On 2 CPU cores it takes hours (the target trains at about
# 30 posts/s per core at 1014 characters). --quick: four groups, 256 characters (about 100
# posts/s a core training, 460 scoring); measured at one thread, 2 CPU-minutes of work, which
# took 10.6 minutes of wall time with the machine's load average at 15.
DEFAULTS: dict[str, Any] = {
    "classes": "",
    "pool": 6000,
    "test_size": 3000,
    "initial": 500,
    "batch": 500,
    "rounds": 3,
    "max_length": 1014,
    "target": "vdcnn",
    "target_epochs": 15,
    "width": 64,
    "hidden": 2048,
    "ft_epochs": 50,
}
QUICK: dict[str, Any] = {
    "classes": QUICK_CLASSES,
    "pool": 1600,
    "test_size": 800,
    "initial": 120,
    "batch": 120,
    "rounds": 2,
    "max_length": 256,
    "target": "vdcnn",
    "target_epochs": 8,
    "width": 64,
    "hidden": 2048,
    "ft_epochs": 50,
}


def parse() -> argparse.Namespace:
    """Command-line options; --quick swaps in the small defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.set_defaults(data=TEXT_DATA)
    p.add_argument("--quick", action="store_true", help="a run of a few minutes")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    p.add_argument("--strategy", default="least_confidence", choices=["least_confidence"])
    p.add_argument("--batch-size", type=int, default=64, help="SGD batch size of the target")
    p.add_argument("--lr", type=float, default=0.01, help="the target's SGD learning rate")
    p.add_argument(
        "--linear-encoder",
        default="auto",
        help="also select with the linear proxy on this text encoder (minilm_l6, glove_6b_50d;"
        " auto: glove_6b_50d with --quick, minilm_l6 without; none: skip); needs"
        " svp.text_encoders",
    )
    args = p.parse_args()
    if args.linear_encoder == "auto":
        # GloVe means cost next to nothing; MiniLM is the product's default encoder.
        args.linear_encoder = "glove_6b_50d" if args.quick else "minilm_l6"
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.initial + args.batch * args.rounds > args.pool:
        p.error("initial + batch x rounds must fit in the pool")
    return args


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    """Texts and label names of one split."""
    if not path.is_file():
        raise SystemExit(f"20 Newsgroups not found: {path}")
    # Posts run past the csv module's default field limit of 128 KiB.
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def pick(
    texts: list[str], labels: list[str], classes: list[str], n: int, seed: int
) -> tuple[list[str], torch.Tensor]:
    """A seeded subset of n rows among the given classes, labels as class indices."""
    keep = [i for i, lab in enumerate(labels) if lab in classes]
    chosen = [keep[int(j)] for j in subset(len(keep), n, seed)]
    y = torch.tensor([classes.index(labels[i]) for i in chosen], dtype=torch.int64)
    return [texts[i] for i in chosen], y


def load_encoder(name: str) -> Any:
    """The named text encoder, or None (with the reason printed) where it is not here."""
    if name in ("", "none"):
        return None
    from svp import backbone_names, load_embedder

    if name not in backbone_names("text"):
        print(f"linear proxy skipped: {name!r} is not a text backbone here")
        return None
    return load_embedder(name)


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


class Experiment:
    """The pool, its encodings and the selectors' settings; one method per thing a round does."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.strategy = Strategy(args.strategy)
        train_texts, train_labels = read_csv(args.data / "train.csv")
        test_texts, test_labels = read_csv(args.data / "test.csv")
        self.classes = args.classes.split(",") if args.classes else sorted(set(train_labels))
        missing = set(self.classes) - set(train_labels)
        if missing:
            raise SystemExit(f"unknown classes: {sorted(missing)}")
        self.k = len(self.classes)
        self.texts, self.labels = pick(
            train_texts, train_labels, self.classes, args.pool, args.seed
        )
        tests, self.test_labels = pick(test_texts, test_labels, self.classes, args.test_size, 1)
        self.codes = encode_texts(self.texts, args.max_length)
        self.test_codes = encode_texts(tests, args.max_length)
        self.target_cfg = vdcnn_config(
            args.target_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            num_threads=args.threads,
        )
        self.ft_cfg = FastTextConfig(epochs=args.ft_epochs, seed=args.seed, num_threads=1)
        self.backend = ""
        self.embed_s = 0.0
        self.features: torch.Tensor | None = None
        encoder = load_encoder(args.linear_encoder)
        if encoder is not None:
            with Timer() as t:
                self.features = encoder.embed(self.texts, num_threads=args.threads)
            self.embed_s = t.wall

    def target_fit(self, mask: torch.Tensor) -> TextFit:
        """The target trained from scratch on the masked pool items."""
        a = self.args
        net = create_text_target(a.target, self.k, width=a.width, hidden=a.hidden)
        return train_vdcnn(net, self.codes[mask], self.labels[mask], self.target_cfg)

    def choose(self, name: str, mask: torch.Tensor, r: int) -> tuple[list[int], dict[str, float]]:
        """One selector's batch for round r and what its parts took."""
        batch, strategy = self.args.batch, self.strategy
        if name == "target":
            fit = self.target_fit(mask)
            res = select(fit.model, self.codes, mask, batch, strategy, seed=r)
            return res.indices, {"train_s": fit.stats.seconds, "score_s": res.scoring_seconds}
        if name == "fasttext":
            where = mask.nonzero().squeeze(1).tolist()
            proxy = fit_fasttext(
                [self.texts[i] for i in where], self.labels[mask].numpy(), self.k, self.ft_cfg
            )
            self.backend = proxy.backend
            # Scored on the unlabelled texts only, ranked as select ranks model scores.
            cand = (~mask).nonzero().squeeze(1)
            probs = torch.from_numpy(proxy.predict_proba([self.texts[i] for i in cand]))
            pos = top_k(uncertainty_scores(probs, strategy), batch)
            return cand[pos].tolist(), {"train_s": proxy.seconds}
        if name == "linear":
            assert self.features is not None
            head = fit_linear_head(self.features[mask], self.labels[mask], self.k, seed=r)
            res = select(head.model, self.features, mask, batch, strategy, seed=r)
            return res.indices, {"train_s": head.seconds, "score_s": res.scoring_seconds}
        res = select(None, self.codes, mask, batch, Strategy.RANDOM, seed=r)
        return res.indices, {}


def report(
    args: argparse.Namespace, ex: Experiment, payload: dict[str, Any], selectors: list[str]
) -> None:
    """Print the per-round and final tables and the claim's figures."""
    rounds, final = payload["rounds"], payload["final"]

    def total(name: str) -> float:
        return float(sum(r[name]["selection_s"] for r in rounds))

    print()
    print(
        f"SVP active learning on 20 Newsgroups ({ex.k} classes): pool {args.pool}, {args.initial} "
        f"random + {args.rounds} x {args.batch} by {args.strategy}; target {args.target} "
        f"(width {args.width}, {args.max_length} chars, {args.target_epochs} ep), proxy fastText "
        f"({ex.backend}, {args.ft_epochs} ep), {args.threads} threads, test {args.test_size}"
    )
    print()
    headers = ["round", "labeled"] + [f"{n} sel s" for n in selectors]
    body = [[r["round"], r["labeled"], *(r[n]["selection_s"] for n in selectors)] for r in rounds]
    print(table(headers, body))
    print()
    print(
        table(
            ["selector", "selection s", "final labels", f"{args.target} test acc"],
            [[n, total(n), f["labeled"], f["test_acc"]] for n, f in final.items() if n != "random"]
            + [
                ["random", total("random"), final["random"]["labeled"], final["random"]["test_acc"]]
            ],
        )
    )
    print()
    print(
        table(
            [
                "speed-up wall",
                "speed-up cpu",
                "acc proxy - target",
                "acc proxy - random",
                "total s",
            ],
            [
                [
                    payload["speedup"],
                    payload["speedup_cpu"],
                    payload["acc_proxy_selected"] - payload["acc_target_selected"],
                    payload["acc_proxy_selected"] - payload["acc_random"],
                    payload["total_s"],
                ]
            ],
        )
    )
    print(
        "\n"
        + " ".join(
            f"{key}={payload[key]:.4f}"
            for key in ("speedup", "acc_proxy_selected", "acc_target_selected", "acc_random")
        )
    )


def main() -> None:
    """Run the experiment, print the tables, write the JSON."""
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ex = Experiment(args)
    load_s = time.perf_counter() - t0
    selectors = ["target", "fasttext", *(["linear"] if ex.features is not None else []), "random"]
    initial = subset(args.pool, args.initial, args.seed)
    masks = {name: torch.zeros(args.pool, dtype=torch.bool) for name in selectors}
    for m in masks.values():
        m[initial] = True

    rounds: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        row: dict[str, Any] = {"round": r, "labeled": int(masks["target"].sum())}
        chosen: dict[str, list[int]] = {}
        for name in selectors:
            with Timer() as t:
                chosen[name], detail = ex.choose(name, masks[name], args.seed + r)
            row[name] = {"selection_s": t.wall, "selection_cpu_s": t.cpu, **detail}
        for name, idx in chosen.items():
            masks[name][idx] = True
        rounds.append(row)
        print(
            f"round {r}: "
            + ", ".join(f"{n} {row[n]['selection_s']:.1f}s" for n in selectors)
            + f", overlap target/fasttext "
            f"{len(set(chosen['target']) & set(chosen['fasttext'])) / args.batch:.2f}",
            flush=True,
        )

    final: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        fit = ex.target_fit(mask)
        final[name] = {
            "labeled": int(mask.sum()),
            "test_acc": evaluate(fit.model, ex.test_codes, ex.test_labels),
            "train_s": fit.stats.seconds,
            "train_acc": fit.stats.final_train_acc,
        }
        print(f"final {name}: test accuracy {final[name]['test_acc']:.4f}", flush=True)

    def total(name: str, key: str = "selection_s") -> float:
        return float(sum(r[name][key] for r in rounds))

    payload: dict[str, Any] = {
        "config": {
            k_: (str(v) if isinstance(v, Path) else v)
            for k_, v in vars(args).items()
            if k_ != "out"
        },
        "environment": environment(),
        "classes": ex.classes,
        "fasttext_backend": ex.backend,
        "load_s": load_s,
        "embed_s": ex.embed_s,
        "rounds": rounds,
        "final": final,
        "target_selection_s": total("target"),
        "proxy_selection_s": total("fasttext"),
        "speedup": total("target") / total("fasttext"),
        "speedup_cpu": total("target", "selection_cpu_s") / total("fasttext", "selection_cpu_s"),
        "acc_target_selected": final["target"]["test_acc"],
        "acc_proxy_selected": final["fasttext"]["test_acc"],
        "acc_random": final["random"]["test_acc"],
    }
    if "linear" in final:
        payload["speedup_linear"] = total("target") / total("linear")
        payload["acc_linear_selected"] = final["linear"]["test_acc"]
    payload["total_s"] = time.perf_counter() - t0

    report(args, ex, payload, selectors)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
