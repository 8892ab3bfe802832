"""The shard format: a round trip is exact, and any damage is refused by name, never read."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from svp.shards import MAGIC, ShardCorrupt, ShardUnsupported, decode_shard, encode_shard

NAME = "s3://bucket/svp/embeddings/lite-128/j1-c2-abcd.svpe"
DIM = 8


def shard(rows: int = 5) -> tuple[list[str], np.ndarray, bytes]:
    keys = [f"{i:064x}" for i in range(rows)]
    vectors = np.random.default_rng(rows).standard_normal((rows, DIM)).astype(np.float16)
    return keys, vectors, encode_shard(keys, vectors, backbone="lite", image_size=128)


def decode(data: bytes, **expect: object) -> tuple[list[str], np.ndarray]:
    args: dict[str, object] = {"backbone": "lite", "image_size": 128, "dim": DIM, **expect}
    got = decode_shard(data, name=NAME, **args)  # type: ignore[arg-type]
    return got.keys, got.vectors


def test_a_shard_round_trips_exactly() -> None:
    keys, vectors, data = shard()
    got_keys, got = decode(data)
    assert got_keys == keys
    assert got.dtype == np.float16
    assert np.array_equal(got, vectors)
    # The header is small; the rest is keys and rows, nothing else.
    assert len(data) < 200 + len(keys) * 65 + vectors.nbytes


def test_float32_input_is_stored_as_float16() -> None:
    keys = ["a", "b"]
    vectors = np.array([[1.0] * DIM, [0.1] * DIM], dtype=np.float32)
    _, got = decode(encode_shard(keys, vectors, backbone="lite", image_size=128))
    assert np.array_equal(got, vectors.astype(np.float16))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d + b"\x00", "truncated or damaged"),
        (lambda d: d[:10], "truncated or damaged"),
        (lambda d: d[:-3] + bytes([d[-3] ^ 0x40]) + d[-2:], "checksum"),
        (lambda d: b"", "not a shard"),
        (lambda d: b"PK\x03\x04" + d[4:], "not a shard"),
        (lambda d: d[:12] + b"[" + d[13:], "damaged header"),
        (lambda d: d[:8] + struct.pack("<I", 1 << 30) + d[12:], "truncated or damaged"),
    ],
    ids=["one-byte-short", "half", "one-byte-long", "header-only", "bit-flip", "empty", "zip",
         "bad-json", "huge-header"],
)  # fmt: skip
def test_damage_is_refused_with_the_shards_name(damage: object, reason: str) -> None:
    _, _, data = shard()
    with pytest.raises(ShardCorrupt, match=reason) as caught:
        decode(damage(data))  # type: ignore[operator]
    assert NAME in str(caught.value)


def test_a_key_count_that_disagrees_with_the_rows_is_refused() -> None:
    keys, vectors, data = shard(3)
    header_len = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12 : 12 + header_len])
    # Two keys where the header says three rows: lengths add up, the checksum matches.
    key_bytes = (keys[0] + "\n" + keys[1] + "x" * 65 + "\n").encode()
    rows = vectors.tobytes()
    header.update(keys_bytes=len(key_bytes), crc32=zlib.crc32(rows, zlib.crc32(key_bytes)))
    raw = json.dumps(header).encode()
    forged = MAGIC + struct.pack("<I", len(raw)) + raw + key_bytes + rows
    with pytest.raises(ShardCorrupt, match="2 keys for 3 rows"):
        decode(forged)


def test_another_backbone_size_or_width_is_refused() -> None:
    _, _, data = shard()
    for expect in ({"backbone": "other"}, {"image_size": 224}, {"dim": DIM * 2}):
        with pytest.raises(ShardCorrupt, match="holds 'lite' at 128"):
            decode(data, **expect)


def test_a_later_format_is_unsupported_not_corrupt() -> None:
    _, _, data = shard()
    newer = data[:6] + b"\x00\x02" + data[8:]
    with pytest.raises(ShardUnsupported, match="upgrade the worker"):
        decode(newer)


def test_encoding_needs_one_vector_per_key() -> None:
    with pytest.raises(ValueError, match="one vector per key"):
        encode_shard(["a"], np.zeros((2, DIM)), backbone="lite", image_size=128)
    with pytest.raises(ValueError, match="at least one"):
        encode_shard([], np.zeros((0, DIM)), backbone="lite", image_size=128)
