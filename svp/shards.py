"""One object of embeddings: the keys and float16 rows of one embedded chunk, checked when read.

A shard is written whole by the worker that embedded its chunk and read whole by every worker
that takes it into its local ``EmbeddingStore``. Its layout, all little-endian:

    8 bytes   magic ``SVPEMB`` + format version (0x00 0x01)
    4 bytes   header length H (uint32)
    H bytes   header, JSON: backbone, image_size, dim, rows, keys_bytes, crc32
    keys      ``rows`` ASCII keys, each followed by a newline (``keys_bytes`` in all)
    vectors   rows x dim float16

``crc32`` covers the keys and the vectors. ``decode_shard`` refuses anything that does not add
up (a wrong magic, a header that is not the one expected, a length that is not exactly the sum
of its parts, a checksum that differs, a key count that is not ``rows``) with ``ShardCorrupt``
naming the shard, so a truncated or damaged object is never read as vectors; a later format
version is ``ShardUnsupported`` (a newer worker's, not damage).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FAMILY = b"SVPEMB"
VERSION = b"\x00\x01"
MAGIC = FAMILY + VERSION
_LENGTH = struct.Struct("<I")
_PREAMBLE = len(MAGIC) + _LENGTH.size
# A header is a few fields: anything longer is not one of ours.
MAX_HEADER = 4096


class ShardCorrupt(ValueError):
    """A shard's bytes are not a whole, intact shard of the expected backbone; the message
    names the shard."""


class ShardUnsupported(ValueError):
    """A shard in a later format than this code reads: a newer worker wrote it. Not damage, so
    never a reason to give the shard up."""


@dataclass(frozen=True)
class Shard:
    """A decoded shard: its keys and their float16 rows (a read-only view of the bytes)."""

    keys: list[str]
    vectors: np.ndarray


def encode_shard(
    keys: Sequence[str], vectors: np.ndarray, *, backbone: str, image_size: int
) -> bytes:
    """The bytes of a shard holding ``vectors`` (N x dim, cast to float16) under ``keys``."""
    half = np.ascontiguousarray(vectors, dtype="<f2")
    if half.ndim != 2 or half.shape[0] != len(keys) or half.shape[0] == 0:
        raise ValueError(f"need one vector per key and at least one: {half.shape}, {len(keys)}")
    key_bytes = "".join(f"{k}\n" for k in keys).encode("ascii")
    rows = half.tobytes()
    header = json.dumps(
        {
            "backbone": backbone,
            "image_size": image_size,
            "dim": int(half.shape[1]),
            "rows": len(keys),
            "keys_bytes": len(key_bytes),
            "crc32": zlib.crc32(rows, zlib.crc32(key_bytes)),
        },
        sort_keys=True,
    ).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, key_bytes, rows))


def _header(data: memoryview, name: str) -> dict[str, object]:
    if bytes(data[: len(FAMILY)]) != FAMILY:
        raise ShardCorrupt(f"embedding shard {name} is not a shard (no header)")
    if len(data) < _PREAMBLE:
        raise ShardCorrupt(f"embedding shard {name} is truncated or damaged (no header length)")
    version = bytes(data[len(FAMILY) : len(MAGIC)])
    if version != VERSION:
        raise ShardUnsupported(
            f"embedding shard {name} is in format {int.from_bytes(version, 'big')}, newer than "
            f"this worker reads ({int.from_bytes(VERSION, 'big')}): upgrade the worker"
        )
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > MAX_HEADER or _PREAMBLE + length > len(data):
        raise ShardCorrupt(f"embedding shard {name} is truncated or damaged (header length)")
    try:
        header = json.loads(bytes(data[_PREAMBLE : _PREAMBLE + length]))
    except ValueError:
        raise ShardCorrupt(f"embedding shard {name} has a damaged header") from None
    if not isinstance(header, dict):
        raise ShardCorrupt(f"embedding shard {name} has a damaged header")
    return header


def _count(header: dict[str, object], field: str, name: str) -> int:
    value = header.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ShardCorrupt(f"embedding shard {name} has a damaged header ({field})")
    return value


def decode_shard(
    data: bytes | memoryview, *, name: str, backbone: str, image_size: int, dim: int
) -> Shard:
    """Check and read a shard of ``backbone`` at ``image_size`` with ``dim``-wide rows; the
    vectors are a view of ``data``. ShardCorrupt (naming ``name``) when anything is off."""
    view = memoryview(data).cast("B")
    header = _header(view, name)
    found = (header.get("backbone"), header.get("image_size"), header.get("dim"))
    if found != (backbone, image_size, dim):
        raise ShardCorrupt(
            f"embedding shard {name} holds {found[0]!r} at {found[1]} ({found[2]}-d), "
            f"not {backbone!r} at {image_size} ({dim}-d)"
        )
    rows = _count(header, "rows", name)
    keys_bytes = _count(header, "keys_bytes", name)
    crc = _count(header, "crc32", name)
    start = _PREAMBLE + _LENGTH.unpack_from(view, len(MAGIC))[0]
    expected = start + keys_bytes + rows * dim * 2
    if len(view) != expected:
        raise ShardCorrupt(
            f"embedding shard {name} is truncated or damaged: {len(view)} bytes, "
            f"its header says {expected}"
        )
    body = view[start:]
    if zlib.crc32(body) != crc:
        raise ShardCorrupt(f"embedding shard {name} is damaged (checksum mismatch)")
    try:
        keys = bytes(body[:keys_bytes]).decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ShardCorrupt(f"embedding shard {name} has damaged keys") from None
    if keys[-1] != "" or len(keys) - 1 != rows or "" in keys[:-1]:
        raise ShardCorrupt(f"embedding shard {name} has {len(keys) - 1} keys for {rows} rows")
    vectors = np.frombuffer(body[keys_bytes:], dtype="<f2").reshape(rows, dim)
    return Shard(keys[:-1], vectors)
