"""Text benchmarks' shared parts: the data sets of ../shared/data/text and cached embeddings.

Embeddings are kept in an ``EmbeddingStore`` (the product's own content-keyed float16 store)
under ``bench-out/embeddings/text``, keyed by the sha256 of each text's UTF-8 bytes, so a rerun,
a larger pool or an interrupted run embeds only what is missing. Missing texts are embedded by
``workers`` processes (one torch thread each) appending to the same store, the way the
service's embed jobs fan out.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from svp import EmbeddingStore, get_spec, load_embedder

REPO = Path(__file__).resolve().parents[1]
TEXT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
TEXT_EMBED_DIR = REPO / "bench-out" / "embeddings" / "text"
DATASETS = ("20newsgroups", "reuters-r8")
# Texts a worker embeds before it appends them to the store: progress survives an interrupt.
CHUNK = 128


@dataclass
class TextSet:
    """One split of a text data set: texts, integer labels, and the class names."""

    texts: list[str]
    labels: torch.Tensor
    classes: list[str]


def read_split(dataset: str, split: str, data: Path = TEXT_DATA) -> TextSet:
    """``data/<dataset>/<split>.csv`` (name,text,label); classes sorted by name from train."""
    path = data / dataset / f"{split}.csv"
    if not path.is_file():
        raise SystemExit(f"text data not found: {path} (see ../shared/data/README.md)")
    csv.field_size_limit(1 << 30)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with (data / dataset / "train.csv").open(newline="", encoding="utf-8") as f:
        classes = sorted({r["label"] for r in csv.DictReader(f)})
    index = {c: i for i, c in enumerate(classes)}
    return TextSet(
        [r["text"] for r in rows], torch.tensor([index[r["label"]] for r in rows]), classes
    )


def pick_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n sorted indices: every class alike where each has n / classes, else in proportion.

    0 or n >= len(labels) is everything. 20 Newsgroups is near balanced (377-600 a class) and
    gets equal counts; Reuters R8 (41-2,840 a class) keeps its imbalance, as users' data would.
    """
    total = len(labels)
    if n <= 0 or n >= total:
        return torch.arange(total)
    classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=classes)
    g = torch.Generator().manual_seed(seed)
    if int(counts.min()) >= n // classes:
        per = [n // classes] * classes
    else:
        per = [max(1, round(n * int(c) / total)) for c in counts]
    out = []
    for c in range(classes):
        members = (labels == c).nonzero().squeeze(1)
        out.append(members[torch.randperm(len(members), generator=g)[: per[c]]])
    return torch.cat(out).sort().values


def text_key(text: str) -> str:
    """A text's content key: the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _store(name: str) -> EmbeddingStore:
    # Text has no input side: 1 stands in for it in the store's folder name.
    return EmbeddingStore(TEXT_EMBED_DIR, name, 1, get_spec(name).dim)


def _embed_chunks(name: str, chunks: list[list[str]], threads: int) -> int:
    torch.set_num_threads(threads)
    encoder = load_embedder(name, device="cpu")
    store = _store(name)
    done = 0
    for texts in chunks:
        keys = [text_key(t) for t in texts]
        done += store.add(keys, encoder.embed(texts, num_threads=threads))
    return done


def embed_cached(
    name: str, texts: list[str], *, workers: int = 2, threads: int = 1
) -> tuple[torch.Tensor, float, int]:
    """Embeddings of ``texts`` (float32 N x dim), the seconds spent embedding, texts embedded."""
    store = _store(name)
    keys = [text_key(t) for t in texts]
    todo_keys = set(store.missing(keys))
    todo = list({text_key(t): t for t in texts if text_key(t) in todo_keys}.values())
    # Similar lengths in a chunk: the encoder pads a batch to its longest text.
    todo.sort(key=len)
    seconds = 0.0
    if todo:
        start = time.perf_counter()
        chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
        if workers <= 1:
            _embed_chunks(name, chunks, threads)
        else:
            # Spawned, not forked: a forked child would inherit torch's thread pools.
            with mp.get_context("spawn").Pool(workers) as pool:
                pool.starmap(
                    _embed_chunks, [(name, chunks[w::workers], threads) for w in range(workers)]
                )
        seconds = time.perf_counter() - start
        print(
            f"embedded {len(todo)} texts with {name} in {seconds:.0f} s"
            f" ({len(todo) / seconds:.1f} texts/s, {workers} workers)",
            file=sys.stderr,
            flush=True,
        )
    store.refresh()
    return store.load(keys), seconds, len(todo)
