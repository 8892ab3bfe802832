"""What the torch runners read and fit: the pool, a proxy's setting, the engine's inputs, a model.

The three runners (``worker/rounds.py``, ``worker/coresets.py``, ``worker/evaluations.py``) share
one path: read the pool (``read_pool``), turn it into the engine's inputs (``load_inputs``: uint8
pixels for a proxy trained from scratch, a backbone's embeddings for a ``linear`` one or a
clustering strategy), and fit a model on the labelled rows (``fit``).

Text projects (DESIGN 4c) take the same path: a ``linear`` proxy or target reads a text
encoder's embeddings; ``fasttext`` is trained on the labelled texts and its probabilities are
joined to the encoder's embeddings as one input row per item (``ProbColumns``), so every
strategy, the suggestions and the test accuracy work on it as on any model; ``vdcnn`` targets
train on character codes (``svp.vdcnn.encode_texts``). Texts are read from their rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import Tensor, nn

from app.db import unit_of_work
from app.embeddings.schemas import known_backbones
from app.items.availability import ObjectsGone, readable
from app.items.models import Item, Split
from app.items.service import item_texts, sources_by_hash
from app.jobs.runtime import JobContext
from app.projects.models import Project, ProjectKind
from app.rounds import service as rounds
from app.settings import get_settings
from svp.data import ImageStore
from svp.fasttext_proxy import FastTextConfig, fit_fasttext
from svp.heads import fit_linear_head
from svp.vdcnn import PAPER_MAX_LENGTH, encode_texts, fit_text_target, vdcnn_config
from worker import training
from worker.embed import EmbeddingReport, ensure_embeddings

# Images decoded per progress report while the cache fills: a report is one tiny transaction.
LOAD_CHUNK = 2048
# Item ids per query when texts are read by id (SQLite's bound-parameter limit is far above).
TEXT_CHUNK = 500
# The smallest log-probability fastText's rows are given (a class it never saw has 0).
LOG_FLOOR = 1e-12
# Items read per query when a pool is read (keyset pages on the project, split and id index):
# the driver holds a page of result rows at a time, never a million.
POOL_PAGE = 50_000
# Keys decoded at a time when a pool's keys are iterated.
KEY_CHUNK = 65_536
# Embedding rows read from the store at a time: the store hands back float32, so a chunk's
# float32 copy (65,536 x 1280 x 4 bytes = 320 MiB at most) is all that is held beside the pool.
EMBED_READ_CHUNK = 65_536


class PoolRow(NamedTuple):
    """One item as a runner sees it: its id, content hash, and class index (-1: unlabelled)."""

    item_id: int
    key: str
    label: int


class Keys(Sequence[str]):
    """Content keys held as one array of ASCII bytes, decoded as they are read: a million
    64-character keys are 64 MB here and 113 MB as a list of ``str``."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Keys: ...

    def __getitem__(self, i: int | slice) -> str | Keys:
        if isinstance(i, slice):
            return Keys(self.raw[i])
        return bytes(self.raw[i]).decode("ascii")

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), KEY_CHUNK):
            yield from (k.decode("ascii") for k in self.raw[start : start + KEY_CHUNK].tolist())


class PoolRows(Sequence[PoolRow]):
    """One part of a pool (candidates, labelled or test items) in id order, as three arrays:
    item ids, content keys and class indices. Indexing and iterating give ``PoolRow``s; a
    million rows hold ~80 MB where a list of a million ``PoolRow``s holds ~240 MB."""

    def __init__(self, ids: np.ndarray, keys: np.ndarray, labels: np.ndarray) -> None:
        self.ids = ids
        self.key_bytes = keys
        self.labels = labels

    @classmethod
    def of(cls, rows: Iterable[PoolRow]) -> PoolRows:
        """The rows given, in their order."""
        listed = list(rows)
        return cls(
            np.array([r.item_id for r in listed], dtype=np.int64),
            np.array([r.key for r in listed], dtype=np.bytes_),
            np.array([r.label for r in listed], dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @overload
    def __getitem__(self, i: int) -> PoolRow: ...

    @overload
    def __getitem__(self, i: slice) -> PoolRows: ...

    def __getitem__(self, i: int | slice) -> PoolRow | PoolRows:
        if isinstance(i, slice):
            return PoolRows(self.ids[i], self.key_bytes[i], self.labels[i])
        return PoolRow(
            int(self.ids[i]), bytes(self.key_bytes[i]).decode("ascii"), int(self.labels[i])
        )

    def __iter__(self) -> Iterator[PoolRow]:
        keys = Keys(self.key_bytes)
        return map(PoolRow, self.ids.tolist(), keys, self.labels.tolist())

    def keys(self) -> Keys:
        """The rows' content keys, in order."""
        return Keys(self.key_bytes)


def _no_rows() -> PoolRows:
    return PoolRows.of([])


@dataclass
class Pool:
    """What a runner reads from the database."""

    classes: list[str]
    kind: str = ProjectKind.image
    candidates: PoolRows = field(default_factory=_no_rows)  # unlabelled, not in an open batch
    labeled: PoolRows = field(default_factory=_no_rows)
    test: PoolRows = field(default_factory=_no_rows)
    pool_total: int = 0

    def keys(self) -> Keys:
        """Content hashes in input order: candidates, labelled, test."""
        parts = (self.candidates, self.labeled, self.test)
        return Keys(np.concatenate([p.key_bytes for p in parts]))

    def rows(self) -> list[PoolRow]:
        """Every row in input order: candidates, labelled, test."""
        return [*self.candidates, *self.labeled, *self.test]


@dataclass(frozen=True)
class TrainSpec:
    """A resolved proxy (or target) setting, typed: what to fit and on which inputs."""

    arch: str
    image_size: int
    backbone: str | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float | None = None
    # fastText only: word vectors' dimension and the longest word n-gram.
    dim: int | None = None
    word_ngrams: int | None = None

    @classmethod
    def from_proxy(cls, proxy: dict[str, Any]) -> TrainSpec:
        """From a round's stored ``proxy`` (app.rounds.service.resolve_proxy's output)."""
        size = proxy.get("image_size")
        return cls(
            arch=str(proxy["arch"]),
            # 0 is a text encoder's side (it has none), not a missing one.
            image_size=32 if size is None else int(size),
            backbone=proxy.get("backbone"),
            epochs=int(proxy.get("epochs") or 1),
            batch_size=int(proxy.get("batch_size") or 128),
            lr=proxy.get("lr"),
            dim=proxy.get("dim"),
            word_ngrams=proxy.get("word_ngrams"),
        )

    @property
    def linear(self) -> bool:
        """Whether this is a head on a frozen backbone's embeddings."""
        return self.arch == "linear"

    @property
    def fasttext(self) -> bool:
        """Whether this is the fastText text proxy (trained on words, joined to embeddings)."""
        return self.arch == "fasttext"

    @property
    def vdcnn(self) -> bool:
        """Whether this is a character-level text target (``vdcnn``, ``vdcnn17``, ``vdcnn29``)."""
        return self.arch.startswith("vdcnn")

    @property
    def embeds(self) -> bool:
        """Whether its inputs are a backbone's embeddings (so clustering needs no other)."""
        return self.linear or self.fasttext

    def fasttext_config(self, seed: int) -> FastTextConfig:
        """fastText's settings from this proxy's, the engine's defaults for what it leaves out."""
        given: dict[str, Any] = {"epochs": self.epochs, "seed": seed}
        if self.dim is not None:
            given["dim"] = int(self.dim)
        if self.word_ngrams is not None:
            given["word_ngrams"] = int(self.word_ngrams)
        if self.lr is not None:
            given["lr"] = float(self.lr)
        return FastTextConfig(**given)


class ProbColumns(nn.Module):
    """A model over precomputed rows ``[embedding | log-probabilities]``: it returns the log-
    probabilities as logits and the embedding as features, so a proxy that is not a torch
    module over a tensor pool (fastText) goes through ``svp.select``/``evaluate`` unchanged:
    uncertainty reads its probabilities, k-centre and the clustered strategies the embeddings."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        # predict() looks at the first parameter for its memory layout; this one is never used.
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (the stored log-probabilities) and features (the embedding) of the rows."""
        return x[:, self.features :], x[:, : self.features]


def join_probs(embeddings: Tensor, probs: np.ndarray) -> Tensor:
    """Rows ``[embedding | log-probabilities]`` for ``ProbColumns``."""
    logp = torch.from_numpy(np.log(np.clip(probs, LOG_FLOOR, None))).float()
    return torch.cat([embeddings.float(), logp], dim=1)


@dataclass
class Fitted:
    """A model fitted on the labelled rows, with what the round's metrics report of it."""

    model: nn.Module
    forgetting: torch.Tensor | None
    seconds: float
    calibration: dict[str, Any] | None = None
    # What the round's metrics add about the proxy (fastText: the backend that trained).
    details: dict[str, Any] = field(default_factory=dict)


class _PartBuilder:
    """A pool part's rows, gathered a page at a time into arrays (Python lists hold one page)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.keys: list[str] = []
        self.labels: list[int] = []
        self.sealed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, item_id: int, key: str, label: int) -> None:
        """One row of the page being read."""
        self.ids.append(item_id)
        self.keys.append(key)
        self.labels.append(label)

    def seal(self) -> None:
        """The page's rows as arrays; the lists start again empty."""
        if self.ids:
            self.sealed.append(
                (
                    np.array(self.ids, dtype=np.int64),
                    np.array(self.keys, dtype=np.bytes_),
                    np.array(self.labels, dtype=np.int64),
                )
            )
            self.ids, self.keys, self.labels = [], [], []

    def rows(self) -> PoolRows:
        """Every row read, in order."""
        self.seal()
        if not self.sealed:
            return _no_rows()
        ids, keys, labels = zip(*self.sealed, strict=True)
        return PoolRows(np.concatenate(ids), np.concatenate(keys), np.concatenate(labels))


def _item_pages(db: Session, project_id: int, split: str) -> Iterator[list[Any]]:
    """The project's items of one split as ``(id, content hash, label)`` rows, in id order, a
    keyset page at a time."""
    last = 0
    while True:
        page = db.execute(
            select(Item.id, Item.content_hash, Item.label)
            .where(Item.project_id == project_id, Item.split == split, Item.id > last)
            .order_by(Item.id)
            .limit(POOL_PAGE)
        ).all()
        if not page:
            return
        yield list(page)
        last = int(page[-1][0])


def read_pool(project_id: int, *, candidates: bool) -> Pool:
    """The project's labelled pool and test items, and (for a round) the unlabelled candidates.

    Read in one read transaction, a keyset page of items at a time, into arrays: a million
    items never sit in the driver or in Python objects at once.
    """
    with unit_of_work(write=False) as db:
        project = db.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} no longer exists")
        classes = list(project.classes)
        index = {c: i for i, c in enumerate(classes)}
        # An item in a batch still being labelled is someone's work already.
        busy: set[int] = set()
        if candidates:
            busy = set(
                db.scalars(
                    select(Item.id).where(Item.project_id == project_id, rounds.in_open_batch())
                )
            )
        cand, lab, test = _PartBuilder(), _PartBuilder(), _PartBuilder()
        pool_total = 0
        for split in (Split.pool, Split.test):
            labelled = lab if split == Split.pool else test
            for page in _item_pages(db, project_id, split):
                if split == Split.pool:
                    pool_total += len(page)
                for item_id, key, label in page:
                    if label is None:
                        if split == Split.pool and candidates and item_id not in busy:
                            cand.add(item_id, key, -1)
                    elif label in index:
                        labelled.add(item_id, key, index[label])
                for part in (cand, labelled):
                    part.seal()
        kind = project.kind
    return Pool(
        classes=classes,
        kind=kind,
        candidates=cand.rows(),
        labeled=lab.rows(),
        test=test.rows(),
        pool_total=pool_total,
    )


@lru_cache(maxsize=8)
def _store(cache_dir: str, image_size: int) -> ImageStore:
    return ImageStore(cache_dir, image_size)


def _image_store(cache_dir: Path | str, image_size: int) -> ImageStore:
    """The content-keyed image cache of one size, shared by the jobs of this process; started
    afresh at a job's start when it has passed ``SVP_TENSOR_CACHE_MB``, then refilled with what
    the job decodes."""
    store = _store(str(cache_dir), image_size)
    store.restart_if_over(get_settings().tensor_cache_mb << 20)
    # Another worker may have appended rows since this process last looked.
    store.refresh()
    return store


def load_pixels(ctx: JobContext, keys: Sequence[str], image_size: int) -> torch.Tensor:
    """Images by content hash through the engine's memory-mapped cache; decodes only new ones.

    ObjectsGone (after every other image is in) names those imported by reference whose object
    is gone from its bucket: a round leaves them out and loads again."""
    settings = get_settings()
    store = _image_store(settings.cache_dir, image_size)
    missing = [h for h in dict.fromkeys(keys) if h not in store]
    assert ctx.project_id is not None, "a job that loads images belongs to a project"
    gone: dict[str, str] = {}
    for start in range(0, len(missing), LOAD_CHUNK):
        chunk = missing[start : start + LOAD_CHUNK]
        with unit_of_work(write=False) as db:
            sources = sources_by_hash(db, project_id=ctx.project_id, hashes=chunk)
        store.add_many(readable(chunk, sources, gone))
        ctx.progress("loading", (start + len(chunk)) / max(len(missing), 1))
    if gone:
        raise ObjectsGone(gone)
    return (
        store.load(list(keys))
        if keys
        else torch.empty((0, 3, image_size, image_size), dtype=torch.uint8)
    )


def gather_rows(
    read: Callable[[Any], Tensor],
    items: Sequence[Any] | np.ndarray,
    *,
    chunk: int = EMBED_READ_CHUNK,
) -> Tensor:
    """Rows of ``items`` from ``read`` (any float width) into one float16 ``N x D`` tensor.

    The store's vectors are float16 on disk; a round on a million 1280-d rows held as float32
    would be 5 GB where float16 is 2.5 GB, and the engine upcasts per chunk where it computes.
    """
    out: Tensor | None = None
    for start in range(0, len(items), chunk):
        rows = read(items[start : start + chunk])
        if out is None:
            out = torch.empty((len(items), rows.shape[1]), dtype=torch.float16)
        out[start : start + rows.shape[0]] = rows
    return out if out is not None else torch.empty(0, 0, dtype=torch.float16)


def load_embeddings(
    ctx: JobContext, keys: Sequence[str], spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The backbone's embeddings of the keys (float16 rows), embedding what is missing first
    (fanned out)."""
    if spec.backbone is None:
        raise ValueError("this proxy names no backbone to embed with")
    # A from-scratch proxy with a clustering strategy embeds at the backbone's own side (a
    # text encoder's is 0).
    size = spec.image_size if spec.linear else known_backbones()[spec.backbone]
    store = ensure_embeddings(ctx, keys, spec.backbone, size, report=report)
    if not keys:
        return torch.empty(0, 0, dtype=torch.float16)
    # The store hands back float32 rows; a chunk at a time, they become one float16 pool.
    return gather_rows(lambda chunk: store.load(list(chunk)), keys)


def load_texts(rows: Sequence[PoolRow]) -> list[str]:
    """The whole text of each row's item, in order, read from the database by item id."""
    texts: dict[int, str] = {}
    ids = [r.item_id for r in rows]
    for start in range(0, len(ids), TEXT_CHUNK):
        with unit_of_work(write=False) as db:
            texts.update(item_texts(db, item_ids=ids[start : start + TEXT_CHUNK]))
    gone = [i for i in ids if i not in texts]
    if gone:
        raise LookupError(f"{len(gone)} text items are gone (e.g. item {gone[0]})")
    return [texts[i] for i in ids]


def load_codes(ctx: JobContext, rows: Sequence[PoolRow]) -> torch.Tensor:
    """VDCNN's character codes of the rows' texts: uint8, as long as the longest text up to the
    paper's 1,014 characters (short texts need no 1,014 columns of padding)."""
    ctx.progress("loading", 0.0)
    texts = load_texts(rows)
    longest = max((len(t) for t in texts), default=1)
    codes = encode_texts(texts, max_length=min(PAPER_MAX_LENGTH, max(longest, 1)))
    ctx.progress("loading", 1.0)
    return codes


def load_inputs(
    ctx: JobContext, pool: Pool, spec: TrainSpec, report: EmbeddingReport | None = None
) -> torch.Tensor:
    """The engine's input rows for candidates, labelled and test items, in that order (the
    embeddings alone for ``fasttext``: ``fit_pool`` joins its probabilities)."""
    if spec.embeds:
        return load_embeddings(ctx, pool.keys(), spec, report)
    if spec.vdcnn:
        return load_codes(ctx, pool.rows())
    return load_pixels(ctx, pool.keys(), spec.image_size)


def label_tensor(rows: Sequence[PoolRow]) -> torch.Tensor:
    """The rows' class indices as the engine's label tensor."""
    if isinstance(rows, PoolRows):
        return torch.from_numpy(rows.labels.copy())
    return torch.tensor([r.label for r in rows], dtype=torch.int64)


def _epoch_reporter(ctx: JobContext, stage: str, epochs: int) -> Callable[[int], None]:
    def report(epoch: int) -> None:
        # Raises JobCanceled when a cancel was asked: training stops at this epoch's end.
        ctx.progress(stage, epoch / max(epochs, 1))

    return report


def fit(
    ctx: JobContext,
    spec: TrainSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    track_forgetting: bool = False,
) -> Fitted:
    """Fit the proxy (or target) on the labelled rows: a calibrated head, or a net from scratch."""
    started = time.perf_counter()
    ctx.progress("training", 0.0)
    if spec.vdcnn:
        config = vdcnn_config(
            spec.epochs,
            seed=seed,
            batch_size=spec.batch_size,
            device=str(training.device()),
            **({} if spec.lr is None else {"lr": spec.lr}),
        )
        report = _epoch_reporter(ctx, "training", spec.epochs)
        text_fit = fit_text_target(
            spec.arch,
            y,
            num_classes,
            config,
            codes=x,
            progress=lambda epoch, *_: report(epoch),
        )
        return Fitted(text_fit.model, None, time.perf_counter() - started)
    if spec.linear:
        head = fit_linear_head(x, y, num_classes, seed=seed)
        ctx.progress("training", 1.0)
        return Fitted(
            model=head.model,
            forgetting=None,
            seconds=time.perf_counter() - started,
            calibration=head.calibration.as_dict(),
        )
    trained = training.train(
        spec.arch,
        x,
        y,
        num_classes=num_classes,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=seed,
        device=training.device(),
        on_epoch=_epoch_reporter(ctx, "training", spec.epochs),
        track_forgetting=track_forgetting,
    )
    return Fitted(trained.model, trained.forgetting, time.perf_counter() - started)


def fit_fasttext_rows(
    ctx: JobContext, pool: Pool, spec: TrainSpec, embeddings: torch.Tensor, *, seed: int
) -> tuple[torch.Tensor, Fitted]:
    """fastText trained from scratch on the labelled texts, its probabilities for every row
    joined to the rows' embeddings; the joined rows and a ``ProbColumns`` model over them."""
    started = time.perf_counter()
    ctx.progress("training", 0.0)
    texts = load_texts(pool.rows())
    n_cand, n_lab = len(pool.candidates), len(pool.labeled)
    proxy = fit_fasttext(
        texts[n_cand : n_cand + n_lab],
        [r.label for r in pool.labeled],
        len(pool.classes),
        spec.fasttext_config(seed),
    )
    ctx.progress("training", 1.0)
    seconds = time.perf_counter() - started
    ctx.progress("scoring", 0.0)
    rows = join_probs(embeddings, proxy.predict_proba(texts))
    model = ProbColumns(embeddings.shape[1])
    return rows, Fitted(model, None, seconds, details={"proxy_backend": proxy.backend})


def fit_pool(
    ctx: JobContext,
    pool: Pool,
    spec: TrainSpec,
    *,
    seed: int,
    track_forgetting: bool = False,
    report: EmbeddingReport | None = None,
) -> tuple[torch.Tensor, Fitted]:
    """Inputs of every row of a pool (candidates, labelled, test) and a model fitted on the
    labelled ones; a model's rows for a fastText proxy (``fit_fasttext_rows``)."""
    inputs = load_inputs(ctx, pool, spec, report)
    if spec.fasttext:
        return fit_fasttext_rows(ctx, pool, spec, inputs, seed=seed)
    n_cand = len(pool.candidates)
    fitted = fit(
        ctx,
        spec,
        inputs[n_cand : n_cand + len(pool.labeled)],
        label_tensor(pool.labeled),
        num_classes=len(pool.classes),
        seed=seed,
        track_forgetting=track_forgetting,
    )
    return inputs, fitted


def fit_on_labels(
    ctx: JobContext, pool: Pool, spec: TrainSpec, *, seed: int, track_forgetting: bool = False
) -> tuple[torch.Tensor, Fitted]:
    """Inputs of a pool read without candidates (labelled rows, then test) and a model fitted."""
    assert not pool.candidates, "the labelled rows must come first"
    return fit_pool(ctx, pool, spec, seed=seed, track_forgetting=track_forgetting)
