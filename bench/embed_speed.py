"""Embedding throughput per backbone, input side and runtime, in one and in two processes.

Images/s of ``Backbone.embed`` on generated uint8 images already at the input side (no resize),
each process on one thread, as a worker with ``SVP_TORCH_THREADS=1`` runs: torch (channels_last,
batch norm folded, as ``load_backbone`` gives it) and ONNX Runtime (``svp.onnx_runtime``, the
export cached in ``--cache-dir``). With two processes both embed at once, started together at a
barrier: the figure is their images over the slower one's time, which is what two workers on two
cores give. Each figure is the best of ``--repeats`` timed passes (the machine is shared; the
best pass is the least disturbed), the median next to it.

    python bench/embed_speed.py [--configs efficientnet_lite0@128,efficientnet_lite2@260]
        [--runtimes torch onnx] [--procs 1 2] [--batch 16] [--out bench-out/embed_speed.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import REPO, environment, table, write_json
from svp import Backbone, load_backbone
from svp.onnx_runtime import to_onnx
from svp.quantized import Int8Backbone, to_int8

DEFAULT_CONFIGS = (
    "efficientnet_lite0@128,efficientnet_lite0_int8@128,efficientnet_lite0@112,"
    "efficientnet_lite2@260"
)


def backbone_at(name: str, side: int, runtime: str, cache_dir: Path) -> Backbone:
    """The registered backbone run at ``side`` px by ``runtime`` (a side other than the
    registered one gets its own spec, and its own ONNX file). An int8 backbone is always its
    int8 model, whatever ``runtime`` says."""
    shipped = load_backbone(name, device="cpu", cache_dir=cache_dir)
    spec = dataclasses.replace(shipped.spec, image_size=side)
    torch_backbone = Backbone(spec, shipped.module, torch.device("cpu"), channels_last=True)
    if isinstance(shipped, Int8Backbone):
        return to_int8(torch_backbone, cache_dir)
    return to_onnx(torch_backbone, cache_dir) if runtime == "onnx" else torch_backbone


def images_for(side: int, n: int) -> torch.Tensor:
    """``n`` generated uint8 images at ``side`` px."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def one_process(job: dict[str, Any], barrier: Any, results: Any) -> None:
    """A process's passes: load, warm up, then one timed pass per barrier."""
    torch.set_num_threads(1)
    backbone = backbone_at(job["name"], job["side"], job["runtime"], Path(job["cache_dir"]))
    images = images_for(job["side"], job["images"])
    backbone.embed(images[: job["batch"]], batch_size=job["batch"], num_threads=1)  # warm-up
    times = []
    for _ in range(job["repeats"]):
        barrier.wait()
        start = time.perf_counter()
        backbone.embed(images, batch_size=job["batch"], num_threads=1)
        times.append(time.perf_counter() - start)
    results.put(times)


def measure_one(job: dict[str, Any], procs: int) -> dict[str, Any]:
    """Images/s of ``procs`` processes embedding ``job["images"]`` each, at once."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=one_process, args=(job, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    per_proc = [results.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a bench process exited {w.exitcode}")
    # Pass i of every process ran together: their images over the slowest one's time.
    rates = [procs * job["images"] / max(t[i] for t in per_proc) for i in range(job["repeats"])]
    return {
        "backbone": job["name"],
        "image_size": job["side"],
        "runtime": job["runtime"],
        "procs": procs,
        "batch": job["batch"],
        "best_img_s": max(rates),
        "median_img_s": statistics.median(rates),
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (backbone, side, runtime, processes)."""
    rows = []
    for config in args.configs.split(","):
        name, side = config.split("@")
        # An int8 backbone has one runtime, whatever is asked.
        runtimes = ["onnx-int8"] if name.endswith("_int8") else args.runtimes
        for runtime in runtimes:
            job = {
                "name": name,
                "side": int(side),
                "runtime": runtime,
                "images": args.images,
                "repeats": args.repeats,
                "batch": args.batch,
                "cache_dir": str(args.cache_dir),
            }
            for procs in args.procs:
                row = measure_one(job, procs)
                rows.append(row)
                print(
                    f"{name} {side}px {runtime} {procs} proc: {row['best_img_s']:.1f} img/s",
                    flush=True,
                )
    return rows


def main() -> None:
    """Measure, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="name@side,... to measure")
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="processes at once")
    p.add_argument("--images", type=int, default=256, help="images per process per timed pass")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    p.add_argument("--cache-dir", type=Path, default=REPO / "bench-out" / "onnx")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    env = environment()
    rows = measure(args)
    print()
    print(
        f"Backbone.embed, 1 thread a process, batch {args.batch}, best (median) of "
        f"{args.repeats} passes of {args.images} images a process; load average at start "
        f"{env['loadavg_1m']:.2f}"
    )
    print()
    print(
        table(
            ["backbone", "px", "runtime", "procs", "img/s best", "img/s median"],
            [
                [
                    r["backbone"],
                    r["image_size"],
                    r["runtime"],
                    r["procs"],
                    r["best_img_s"],
                    r["median_img_s"],
                ]
                for r in rows
            ],
        )
    )
    write_json(args.out, {"environment": env, "embed": rows})


if __name__ == "__main__":
    main()
