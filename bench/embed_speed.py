"""Embedding throughput of each available backbone on the CPU, per thread count and layout.

Images/s of ``Backbone.embed`` on random uint8 images at the backbone's spec size (no resize),
batch 64, with 1 and 2 threads, in the layout ``load_backbone`` uses on a CPU (channels_last,
batch norm folded) and in the default NCHW layout for comparison. Each figure is the best of
``--repeats`` timed passes: the machine is shared, and the best pass is the one least disturbed.

    python bench/embed_speed.py [--out bench-out/embed_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import environment, table, write_json
from svp import Backbone, backbone_names, load_backbone


def timed(backbone: Backbone, images: torch.Tensor, threads: int, repeats: int) -> list[float]:
    """Images/s of each of ``repeats`` passes, after a warm-up batch."""
    backbone.embed(images[:8], num_threads=threads)  # oneDNN picks its kernels on first use
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        backbone.embed(images, batch_size=64, num_threads=threads)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (backbone, threads, layout)."""
    rows = []
    for name in backbone_names():
        shipped = load_backbone(name, device="cpu")
        spec = shipped.spec
        nchw_module = copy.deepcopy(shipped.module).to(memory_format=torch.contiguous_format)
        layouts = {
            "channels_last": shipped,
            "nchw": Backbone(spec, nchw_module, shipped.device, channels_last=False),
        }
        g = torch.Generator().manual_seed(0)
        side = spec.image_size
        images = torch.randint(0, 256, (args.images, 3, side, side), generator=g, dtype=torch.uint8)
        for threads in args.threads:
            for layout, backbone in layouts.items():
                rates = timed(backbone, images, threads, args.repeats)
                rows.append(
                    {
                        "backbone": name,
                        "image_size": side,
                        "dim": spec.dim,
                        "threads": threads,
                        "layout": layout,
                        "best_img_s": max(rates),
                        "median_img_s": statistics.median(rates),
                    }
                )
                print(f"{name} {side}px {threads}t {layout}: {max(rates):.1f} img/s", flush=True)
    return rows


def main() -> None:
    """Measure, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads")
    p.add_argument("--images", type=int, default=192, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    env = environment()
    rows = measure(args)
    print()
    print(f"Backbone.embed on the CPU, batch 64, best (median) of {args.repeats} passes")
    print(f"of {args.images} images; load average at start {env['loadavg_1m']:.2f}")
    print()
    print(
        table(
            ["backbone", "px", "threads", "layout", "img/s best", "img/s median"],
            [
                [
                    r["backbone"],
                    r["image_size"],
                    r["threads"],
                    r["layout"],
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
