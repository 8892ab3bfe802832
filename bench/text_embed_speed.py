"""Embedding throughput of the text backbones on the CPU: texts/s with 1 and 2 worker processes.

Texts are a seeded sample of a data set's test split (../shared/data/text). Each worker is a
spawned process with one torch thread (as a service worker embeds a chunk) that loads the
encoder, warms it up on a few texts, waits at a barrier, then embeds its share; the figure is
all texts over the wall time from the barrier to the last worker's end, so loading is not
counted (it is reported apart). "1 x 2 threads" is one process with two torch threads. Each
figure is the best of ``--repeats`` passes: the machine is shared, and the best pass is the
least disturbed.

    python bench/text_embed_speed.py [--texts 256] [--out bench-out/text_embed_speed.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import REPO, environment, table, write_json
from bench.text_common import DATASETS, TEXT_DATA, read_split
from svp import backbone_names, load_embedder


def _worker(
    name: str,
    texts: list[str],
    threads: int,
    batch_size: int,
    repeats: int,
    barrier: Any,
    out: Any,
) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    encoder = load_embedder(name, device="cpu")
    load_s = time.perf_counter() - start
    encoder.embed(texts[:4], batch_size=batch_size)  # oneDNN picks its kernels on first use
    for _ in range(repeats):
        barrier.wait()
        encoder.embed(texts, batch_size=batch_size)
        barrier.wait()
    out.put(load_s)


def measure(
    name: str, texts: list[str], workers: int, threads: int, batch_size: int, repeats: int
) -> tuple[float, float]:
    """Best texts/s over ``repeats`` passes, and the slowest worker's load seconds."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    shares = [texts[w::workers] for w in range(workers)]
    procs = [
        ctx.Process(target=_worker, args=(name, share, threads, batch_size, repeats, barrier, out))
        for share in shares
    ]
    for p in procs:
        p.start()
    rates = []
    for _ in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        barrier.wait()
        rates.append(len(texts) / (time.perf_counter() - start))
    load_s = max(out.get() for _ in procs)
    for p in procs:
        p.join()
    return max(rates), load_s


def main() -> None:
    """Measure every text backbone on each data set, print a table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--texts", type=int, default=256, help="texts per data set")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--backbones", default=",".join(backbone_names("text")))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data", type=Path, default=TEXT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "text_embed_speed.json")
    args = p.parse_args()
    rows = []
    for dataset in args.datasets.split(","):
        texts = read_split(dataset, "test", args.data).texts
        texts = random.Random(0).sample(texts, min(args.texts, len(texts)))
        chars = sum(map(len, texts)) / len(texts)
        for name in args.backbones.split(","):
            for workers, threads in ((1, 1), (2, 1), (1, 2)):
                rate, load_s = measure(name, texts, workers, threads, args.batch_size, args.repeats)
                rows.append(
                    {
                        "dataset": dataset,
                        "mean_chars": round(chars),
                        "backbone": name,
                        "workers": workers,
                        "threads": threads,
                        "texts_per_s": rate,
                        "load_s": load_s,
                        "loadavg_1m": os.getloadavg()[0],
                    }
                )
                print(rows[-1], flush=True)
    print()
    print(
        table(
            ["dataset", "chars", "backbone", "processes x threads", "texts/s", "load s", "loadavg"],
            [
                [
                    r["dataset"],
                    r["mean_chars"],
                    r["backbone"],
                    f"{r['workers']} x {r['threads']}",
                    f"{r['texts_per_s']:.1f}",
                    f"{r['load_s']:.1f}",
                    f"{r['loadavg_1m']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    write_json(
        args.out,
        {
            "rows": rows,
            "config": vars(args) | {"data": str(args.data), "out": str(args.out)},
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    main()
