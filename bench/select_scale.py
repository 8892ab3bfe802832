"""Selection on pools of a million: seconds per stage and peak memory of one round's selection.

Synthetic clustered embeddings (a Gaussian mixture: ``--classes`` classes of a few modes each,
separated by a few noise standard deviations, so a linear probe has something to learn but is
not perfect) are written once as float16 rows under ``--data-dir``. Each case (strategy, labels,
batch) then runs in its own fresh subprocess, so the peak RSS (``ru_maxrss``) is that case's
alone, the way the round runner does it:

1. load: the rows in the runner's input order (candidates, then the labelled ones) as the
   engine's float16 pool, read from the file with plain reads (``--memmap``: gathered from a
   memory map by ``worker.inputs.gather_rows``, the runner's chunked reader, as the store's
   memory-mapped ``load`` does; the mapped pages then count in the RSS too);
2. fit: the ``linear`` proxy on the labelled rows (``svp.fit_linear_head``, calibrated);
3. predict: the proxy's probabilities for the pool (``SelectionResult.scoring_seconds``);
4. select: the strategy's choice (``selecting_seconds``); 0 labels is a cold start
   (``svp.cold_start``; margin_clusters needs a model, so it is skipped there).

    flock /tmp/bench.lock python bench/select_scale.py --n 1000000 --dim 384
    flock /tmp/bench.lock python bench/select_scale.py --n 10000 --batch 100 1000

``--store`` loads the pool the way a round does: from an ``EmbeddingStore`` (built once from the
same rows under content-hash-like keys) through ``worker.inputs.gather_rows`` and ``store.load``,
so the store's key index and its reads count in the figures.

``--torch-float32`` hands the engine float32 rows instead (what the store's ``load`` returns),
to compare. Figures are printed as a table and, with ``--out``, written as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = ("auto", "typiclust", "margin_clusters", "kcenter")
# Rows generated at a time: 50,000 x 1280 float32 draws are 256 MB.
GEN_CHUNK = 50_000
# Modes per class: k-means has structure finer than the classes to find.
MODES = 5


def data_paths(data_dir: Path, n: int, dim: int, classes: int, seed: int) -> tuple[Path, Path]:
    """Where the synthetic pool of this shape lives: its rows and its classes."""
    stem = data_dir / f"pool-{n}x{dim}-c{classes}-s{seed}"
    return stem.with_suffix(".f16.npy"), stem.with_suffix(".classes.npy")


def generate(data_dir: Path, n: int, dim: int, classes: int, seed: int) -> tuple[Path, Path]:
    """Write the Gaussian mixture once (float16 rows, int16 classes); reuse it after."""
    rows_path, classes_path = data_paths(data_dir, n, dim, classes, seed)
    if rows_path.exists() and classes_path.exists():
        return rows_path, classes_path
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Class means 4.5 noise sd apart along their difference, modes 1.5 sd around them: a linear
    # probe learns most of it from a few hundred labels, not all.
    scale = 1.0 / np.sqrt(2.0 * dim)
    means = (4.5 * scale * rng.standard_normal((classes, dim))).astype(np.float32)
    modes = (1.5 * scale * rng.standard_normal((classes, MODES, dim))).astype(np.float32)
    # Class sizes uneven (1 : 3 from the smallest to the largest), as real pools are.
    weights = np.linspace(1.0, 3.0, classes)
    cls = rng.choice(classes, size=n, p=weights / weights.sum()).astype(np.int16)
    mode = rng.integers(0, MODES, size=n)
    tmp = rows_path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, GEN_CHUNK):
        e = min(n, s + GEN_CHUNK)
        x = rng.standard_normal((e - s, dim), dtype=np.float32)
        x += means[cls[s:e]] + modes[cls[s:e], mode[s:e]]
        out[s:e] = x
    out.flush()
    del out
    np.save(classes_path, cls)
    tmp.replace(rows_path)
    return rows_path, classes_path


def read_rows(path: Path, order: np.ndarray) -> Any:
    """Rows of the ``.npy`` file in ``order`` as one float16 tensor, read sequentially with
    plain reads a chunk at a time and put in place: a memory map would count the file's pages
    it touched in this process's RSS beside the pool (``--memmap`` does that, as the store's
    ``load`` does today)."""
    import torch

    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        out = torch.empty(shape, dtype=torch.float16)
        for s in range(0, shape[0], GEN_CHUNK):
            rows = min(GEN_CHUNK, shape[0] - s)
            chunk = np.fromfile(fh, dtype=dtype, count=rows * shape[1]).reshape(rows, shape[1])
            out[torch.from_numpy(where[s : s + rows])] = torch.from_numpy(chunk)
    return out


def store_key(i: int) -> str:
    """A key shaped like an item's content hash (64 hex digits), the store's real key."""
    return f"{i:064x}"


def build_store(args: argparse.Namespace, rows_path: Path) -> Path:
    """The rows as an ``EmbeddingStore`` under ``--data-dir`` (made once; reused after)."""
    from svp.embeddings import EmbeddingStore

    folder = args.data_dir / f"store-{rows_path.stem}"
    stored = np.load(rows_path, mmap_mode="r")
    store = EmbeddingStore(folder, "synthetic", 0, args.dim)
    if len(store) < stored.shape[0]:
        for s in range(len(store), stored.shape[0], GEN_CHUNK):
            e = min(stored.shape[0], s + GEN_CHUNK)
            store.add([store_key(i) for i in range(s, e)], np.asarray(stored[s:e]))
    return folder


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """One case, in this (fresh) process: load, fit, predict and select, timed by stage."""
    import torch

    import svp
    from worker.inputs import gather_rows

    rows_path, classes_path = data_paths(args.data_dir, args.n, args.dim, args.classes, args.seed)
    truth = np.load(classes_path)
    n = truth.shape[0]
    rng = np.random.default_rng(args.seed + 1)
    labelled = np.sort(rng.choice(n, args.labels, replace=False))
    is_labelled = np.zeros(n, dtype=bool)
    is_labelled[labelled] = True
    order = np.concatenate([np.flatnonzero(~is_labelled), labelled])
    n_cand = n - args.labels
    base_rss = peak_rss_mib()

    start = time.perf_counter()
    if args.store:
        from svp.embeddings import EmbeddingStore

        store = EmbeddingStore(args.data_dir / f"store-{rows_path.stem}", "synthetic", 0, args.dim)
        keys = [store_key(int(i)) for i in order]
        pool = gather_rows(lambda chunk: store.load(list(chunk)), keys)
        del keys
    elif args.memmap:
        stored = np.load(rows_path, mmap_mode="r")
        pool = gather_rows(lambda idx: torch.from_numpy(stored[idx]), order)
    else:
        pool = read_rows(rows_path, order)
    if args.torch_float32:
        pool = pool.float()
    load_s = time.perf_counter() - start

    fit_s, model, calibration = 0.0, None, None
    if args.labels:
        start = time.perf_counter()
        y = torch.from_numpy(truth[labelled].astype(np.int64))
        proxy = svp.fit_linear_head(pool[n_cand:], y, args.classes, seed=args.seed)
        fit_s = time.perf_counter() - start
        model, calibration = proxy.model, proxy.calibration.temperature

    start = time.perf_counter()
    if model is None:
        res = svp.cold_start(pool[:n_cand], args.batch, args.strategy, seed=args.seed)
    else:
        res = svp.select(
            model,
            pool,
            torch.arange(n_cand, n),
            args.batch,
            args.strategy,
            seed=args.seed,
            device="cpu",
        )
    select_wall = time.perf_counter() - start
    chosen = order[np.asarray(res.indices)]
    assert not is_labelled[chosen].any()
    assert len(set(chosen.tolist())) == args.batch
    probe = None
    if model is not None:
        sample = np.sort(rng.choice(n, min(n, 20_000), replace=False))
        with torch.inference_mode():
            logits, _ = model(pool[torch.from_numpy(sample)])
        probe = float((logits.argmax(1).numpy() == truth[order[sample]]).mean())
    return {
        "strategy": args.strategy,
        "chose": res.details.get("auto_choice", args.strategy),
        "n": n,
        "dim": args.dim,
        "labels": args.labels,
        "batch": args.batch,
        "load_s": round(load_s, 2),
        "fit_s": round(fit_s, 2),
        "predict_s": round(res.scoring_seconds, 2),
        "select_s": round(res.selecting_seconds, 2),
        "total_s": round(load_s + fit_s + select_wall, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_before_load_mib": round(base_rss),
        "classes_in_batch": int(np.unique(truth[chosen]).size),
        "probe_accuracy": None if probe is None else round(probe, 3),
        "temperature": calibration,
        "details": res.details,
        "pool_dtype": str(pool.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }


HEADER = (
    f"{'strategy':<16}{'chose':<16}{'N':>9}{'D':>6}{'labels':>7}{'batch':>6}"
    f"{'load':>7}{'fit':>6}{'pred':>6}{'select':>7}{'total s':>8}{'peak MiB':>9}"
    f"{'classes':>8}{'probe':>7}"
)


def row(r: dict[str, Any]) -> str:
    """One case as a table line."""
    probe = "-" if r["probe_accuracy"] is None else f"{r['probe_accuracy']:.2f}"
    return (
        f"{r['strategy']:<16}{r['chose']:<16}{r['n']:>9}{r['dim']:>6}{r['labels']:>7}"
        f"{r['batch']:>6}{r['load_s']:>7.1f}{r['fit_s']:>6.1f}{r['predict_s']:>6.1f}"
        f"{r['select_s']:>7.1f}{r['total_s']:>8.1f}{r['peak_rss_mib']:>9}"
        f"{r['classes_in_batch']:>8}{probe:>7}"
    )


def child_command(args: argparse.Namespace, strategy: str, labels: int, batch: int) -> list[str]:
    """The command line of one case's subprocess."""
    cmd = [
        sys.executable,
        __file__,
        "--case",
        "--n",
        str(args.n),
        "--dim",
        str(args.dim),
        "--classes",
        str(args.classes),
        "--seed",
        str(args.seed),
        "--data-dir",
        str(args.data_dir),
        "--strategy",
        strategy,
        "--labels",
        str(labels),
        "--batch",
        str(batch),
    ]
    flags = [
        f
        for f, on in (
            ("--torch-float32", args.torch_float32),
            ("--memmap", args.memmap),
            ("--store", args.store),
        )
        if on
    ]
    return cmd + flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pool size")
    parser.add_argument("--dim", type=int, default=384, help="embedding width")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--labels", type=int, nargs="+", default=[0, 200, 2000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1000])
    parser.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench-out" / "select_scale")
    parser.add_argument("--torch-float32", action="store_true", help="hand over float32 rows")
    parser.add_argument(
        "--memmap", action="store_true", help="load through a memory map, as the store does"
    )
    parser.add_argument(
        "--store", action="store_true", help="load through an EmbeddingStore, as a round does"
    )
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        args.labels, args.batch, args.strategy = args.labels[0], args.batch[0], args.strategy[0]
        print(json.dumps(run_case(args)))
        return
    start = time.perf_counter()
    rows_path, _ = generate(args.data_dir, args.n, args.dim, args.classes, args.seed)
    if args.store:
        build_store(args, rows_path)
    print(f"# pool {args.n} x {args.dim} ready in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"# {os.cpu_count()} CPUs; each case a fresh process; seconds and peak RSS (MiB)")
    print(HEADER, flush=True)
    for labels in args.labels:
        for batch in args.batch:
            for strategy in args.strategy:
                if labels == 0 and strategy == "margin_clusters":
                    continue  # needs a model: there is none before the first label
                done = subprocess.run(
                    child_command(args, strategy, labels, batch),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    print(f"{strategy} labels={labels} batch={batch} failed:\n{done.stderr}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(row(result), flush=True)
                if args.out is not None:
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
