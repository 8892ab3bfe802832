"""Helpers shared by the engine's benchmarks: data location, subsets, tables, JSON, memory."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared/data next to the repository, as the data README lays it out.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
DEFAULT_CACHE = REPO / "bench-out" / "cache"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every engine benchmark takes."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CIFAR-10 zips")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="image cache folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


def require_data(path: Path) -> None:
    """Exit with a clear message when the CIFAR-10 zips are not there."""
    missing = [n for n in ("train.zip", "test.zip") if not (path / n).is_file()]
    if missing:
        raise SystemExit(f"CIFAR-10 not found: {', '.join(str(path / n) for n in missing)}")


def subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """A seeded random subset of range(n_total), of size n."""
    if n > n_total:
        raise SystemExit(f"asked for {n} items of {n_total}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
        "loadavg_1m": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write the benchmark's figures, if asked to."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB; 0 where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
