"""Engine kernels: scoring throughput of each model, greedy k-centres at scale, cache loading.

Scoring: images/s of each registered model in eval mode under inference_mode on the CPU, batched,
in both memory layouts. k-centres: 100,000 x 64 random features, 1,000 centres: seconds and peak
memory. Peak memory is the kernel's peak resident set (VmHWM in /proc/self/status) after
resetting it through /proc/self/clear_refs, minus the resident set before the call: it sees
torch's CPU allocations, which tracemalloc does not. Cache: opening an ImageStore of 100,000
32x32 images and loading all of them.

    python bench/svp_kernels.py [--out bench-out/svp_kernels.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.svp_common import (
    add_common_args,
    environment,
    proc_status_kib,
    reset_peak_rss,
    table,
    write_json,
)
from svp import ImageStore, create_model, kcenter_greedy, model_names, predict

# Deep models score slowly on a CPU: fewer images keep the run to a couple of minutes.
IMAGES = {"preact56": 256, "preact110": 256, "preact164": 256}


def scoring(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Images/s of each model, contiguous and channels_last."""
    out = []
    for name in model_names():
        n = IMAGES.get(name, 1024) if not args.quick else 128
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        row: dict[str, Any] = {"model": name, "images": n}
        for layout, fmt in (
            ("nchw", torch.contiguous_format),
            ("channels_last", torch.channels_last),
        ):
            model = create_model(name).to(memory_format=fmt).eval()
            predict(model, images[:64], batch_size=64)  # warm-up: oneDNN picks its kernels
            preds = predict(model, images, batch_size=args.batch)
            row[f"{layout}_img_s"] = n / preds.seconds
        row["params_m"] = sum(p.numel() for p in create_model(name).parameters()) / 1e6
        out.append(row)
        print(f"{name}: {row['channels_last_img_s']:.0f} img/s", flush=True)
    return out


def kcenter(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy k-centres on random features: seconds and peak memory above the features."""
    n, d, k = (20_000, 64, 200) if args.quick else (100_000, 64, 1_000)
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    results: dict[str, Any] = {"points": n, "dims": d, "centres": k}
    for labelled in (0, 1_000):
        rss = proc_status_kib("VmRSS")
        can_reset = reset_peak_rss()
        start = time.perf_counter()
        chosen, _ = kcenter_greedy(
            feats, torch.arange(labelled), k, generator=torch.Generator().manual_seed(1)
        )
        seconds = time.perf_counter() - start
        peak = proc_status_kib("VmHWM")
        assert len(set(chosen.tolist())) == k
        results[f"labelled_{labelled}"] = {
            "seconds": seconds,
            "peak_rss_delta_mib": (peak - rss) / 1024 if can_reset else None,
        }
    results["features_mib"] = feats.numel() * 4 / 2**20
    # What the reference implementation's |selected| x |pool| float32 matrix would take.
    results["dense_matrix_mib"] = k * n * 4 / 2**20
    results["memory_method"] = "VmHWM after writing 5 to /proc/self/clear_refs, minus VmRSS before"
    return results


def cache(args: argparse.Namespace) -> dict[str, Any]:
    """Open a 100k-image store and load every image, as a worker does after the first decode."""
    n = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(
        dir=args.cache.parent if args.cache.parent.exists() else None
    ) as tmp:
        store = ImageStore(tmp, size=32)
        rng = np.random.default_rng(0)
        keys = [f"{i:064x}" for i in range(n)]
        # Filled through the append path directly: decoding 100k JPEGs is not what is measured.
        for s in range(0, n, 10_000):
            rows = rng.integers(0, 256, (min(10_000, n - s), 3, 32, 32), dtype=np.uint8)
            store._append(list(zip(keys[s : s + len(rows)], rows, strict=True)))
        start = time.perf_counter()
        fresh = ImageStore(tmp, size=32)
        opened = time.perf_counter() - start
        images = fresh.load(keys)
        total = time.perf_counter() - start
        shuffled = [keys[i] for i in rng.permutation(n)]
        start = time.perf_counter()
        fresh.load(shuffled)
        gather = time.perf_counter() - start
        assert images.shape == (n, 3, 32, 32)
        assert fresh.decoded == 0
    return {"images": n, "open_s": opened, "open_and_load_s": total, "load_shuffled_s": gather}


def main() -> None:
    """Measure, print the tables, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=256, help="scoring batch size")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = scoring(args)
    kc = kcenter(args)
    ch = cache(args)
    print()
    print(
        f"Scoring throughput, eval mode, inference_mode, batch {args.batch}, {args.threads} threads"
    )
    print()
    print(
        table(
            ["model", "params (M)", "images", "NCHW img/s", "channels_last img/s"],
            [
                [r["model"], r["params_m"], r["images"], r["nchw_img_s"], r["channels_last_img_s"]]
                for r in rows
            ],
        )
    )
    print()
    print(f"Greedy k-centres, {kc['points']} x {kc['dims']} features, {kc['centres']} centres")
    print(f"(peak memory: {kc['memory_method']})")
    print()
    print(
        table(
            [
                "labelled first",
                "seconds",
                "peak RSS delta MiB",
                "features MiB",
                "dense |sel|x|pool| MiB",
            ],
            [
                [
                    lab,
                    kc[f"labelled_{lab}"]["seconds"],
                    kc[f"labelled_{lab}"]["peak_rss_delta_mib"],
                    kc["features_mib"],
                    kc["dense_matrix_mib"],
                ]
                for lab in (0, 1000)
            ],
        )
    )
    print()
    print(f"Image cache: {ch['images']} images of 3x32x32")
    print()
    print(
        table(
            ["open s", "open + load all s", "load shuffled keys s"],
            [[ch["open_s"], ch["open_and_load_s"], ch["load_shuffled_s"]]],
        )
    )
    write_json(
        args.out,
        {"environment": environment(), "scoring": rows, "kcenter": kc, "cache": ch},
    )


if __name__ == "__main__":
    main()
