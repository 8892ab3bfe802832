"""Which S3 client for the product: boto3 (what ``app.storage`` uses) against obstore.

The product's access pattern, against a local S3 API server (moto in server mode, started here on
``--port``): many small objects (images of 2-30 KB, like CIFAR or JPEG photos) written and read
one call per object from a small thread pool (an import's writer, a worker's embedding reads),
a HEAD per object (``write_image`` asks before it writes), a LIST of 10,000 keys (an import by
reference lists its prefix), and one large object read whole (an embedding shard).

For each client and thread count it prints objects/s, MB/s and the bench process's own CPU
seconds per 1,000 objects (``getrusage``: the client's cost, which on a 2-core machine competes
with decoding and embedding), and the S3 server's CPU per 1,000 objects (read from /proc: moto is
the same slow server for both clients, so it bounds the rates; the client's CPU is what differs).

    flock /tmp/bench.lock python bench/s3_clients.py
    flock /tmp/bench.lock python bench/s3_clients.py --objects 500 --threads 1 8 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3server import CREDENTIALS, S3Server, s3_server  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One timed operation: what, with which client and threads, and what it cost."""

    client: str
    op: str
    threads: int
    objects: int
    megabytes: float
    seconds: float
    client_cpu_s: float
    server_cpu_s: float

    def line(self) -> str:
        """A fixed-width line for the report."""
        per_k = 1000 / self.objects
        per_gb = f"{self.client_cpu_s * 1000 / self.megabytes:6.2f} s/GB" if self.megabytes else ""
        return (
            f"{self.client:8s} {self.op:10s} T={self.threads:<3d} n={self.objects:<6d} "
            f"{self.objects / self.seconds:9.1f} obj/s {self.megabytes / self.seconds:8.2f} MB/s "
            f"client CPU {self.client_cpu_s * per_k:6.3f} s/1k {per_gb:>10s}  "
            f"server CPU {self.server_cpu_s * per_k:6.3f} s/1k  ({self.seconds:.2f} s)"
        )


def own_cpu() -> float:
    """CPU seconds (user + system) of this process, every thread of it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Boto3Client:
    """The product's own S3 store (``app.storage.objects.S3Store``: one shared boto3 client)."""

    name = "boto3"

    def __init__(self, endpoint: str, bucket: str) -> None:
        from app.storage.objects import S3Store

        self.store = S3Store(bucket, "", endpoint_url=endpoint)

    def put(self, key: str, data: bytes) -> None:
        self.store.put(key, data)

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def head(self, key: str) -> int:
        return self.store.head(key).size

    def list(self, prefix: str) -> int:
        return sum(1 for _ in self.store.list(prefix))


class ObstoreClient:
    """obstore (Rust's object_store behind Python): one store per bucket, calls from threads."""

    name = "obstore"

    def __init__(self, endpoint: str, bucket: str) -> None:
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        self.store = S3Store(
            bucket,
            endpoint=endpoint,
            region=CREDENTIALS["AWS_DEFAULT_REGION"],
            access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "timeout": "30s", "connect_timeout": "5s"},
        )

    def put(self, key: str, data: bytes) -> None:
        self.obstore.put(self.store, key, data)

    def get(self, key: str) -> bytes:
        return bytes(self.obstore.get(self.store, key).bytes())

    def head(self, key: str) -> int:
        return int(self.obstore.head(self.store, key)["size"])

    def list(self, prefix: str) -> int:
        return sum(len(chunk) for chunk in self.obstore.list(self.store, prefix=prefix))


CLIENTS: dict[str, Callable[[str, str], Any]] = {"boto3": Boto3Client, "obstore": ObstoreClient}


def payloads(n: int, *, low: int, high: int, seed: int) -> list[bytes]:
    """``n`` incompressible payloads of ``low``-``high`` bytes (sizes drawn with ``seed``)."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(n)]


def timed(
    server: S3Server,
    *,
    client: str,
    op: str,
    threads: int,
    objects: int,
    nbytes: int,
    work: Callable[[], None],
) -> Figure:
    """Run ``work`` once and measure its wall time, this process's CPU and the server's CPU."""
    cpu0, srv0, t0 = own_cpu(), proc_cpu(server.popen.pid), time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    return Figure(
        client=client,
        op=op,
        threads=threads,
        objects=objects,
        megabytes=nbytes / 1e6,
        seconds=seconds,
        client_cpu_s=own_cpu() - cpu0,
        server_cpu_s=proc_cpu(server.popen.pid) - srv0,
    )


def in_pool(threads: int, fn: Callable[[Any], Any], args: Iterable[Any]) -> None:
    """Call ``fn`` on every argument from ``threads`` threads; re-raise the first failure."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(fn, args):
            pass


def warm_up(c: Any) -> None:
    """One round trip of each kind, untimed: connections, credentials, botocore's models."""
    c.put("warm-up", b"x")
    c.head("warm-up")
    c.get("warm-up")
    c.list("warm-up")


def put_pair(c: Any, pair: tuple[str, bytes]) -> None:
    """PUT one (key, bytes) pair."""
    c.put(*pair)


def small_objects(
    server: S3Server, bucket: str, blobs: list[bytes], threads: list[int], names: list[str]
) -> list[Figure]:
    """PUT, HEAD and GET ``blobs`` one call each, per client and thread count."""
    total = sum(len(b) for b in blobs)
    figures: list[Figure] = []
    for round_no, t in enumerate(threads):
        # Each client goes first in turn: the server slows a little as it fills.
        for name in names[round_no % 2 :] + names[: round_no % 2]:
            c = CLIENTS[name](server.endpoint, bucket)
            warm_up(c)
            keys = [f"small/{name}/t{t}/images/{i:02x}/{i:064x}" for i in range(len(blobs))]
            pairs = list(zip(keys, blobs, strict=True))
            runs: list[tuple[str, int, Callable[[Any], Any], list[Any]]] = [
                ("PUT", total, partial(put_pair, c), pairs),
                ("HEAD", 0, c.head, keys),
                ("GET", total, c.get, keys),
            ]
            for op, nbytes, fn, args in runs:
                fig = timed(
                    server,
                    client=name,
                    op=op,
                    threads=t,
                    objects=len(keys),
                    nbytes=nbytes,
                    work=partial(in_pool, t, fn, args),
                )
                print(fig.line(), flush=True)
                figures.append(fig)
            assert c.get(keys[-1]) == blobs[-1], "read back other bytes than were written"
    return figures


def listing(server: S3Server, bucket: str, n: int, repeats: int, names: list[str]) -> list[Figure]:
    """LIST ``n`` keys under one prefix (written beforehand, not timed), per client."""
    writer = CLIENTS["boto3"](server.endpoint, bucket)
    in_pool(16, lambda i: writer.put(f"listed/{i:02x}/{i:064x}", b"x"), range(n))
    figures: list[Figure] = []
    for _ in range(repeats):
        for name in names:
            c = CLIENTS[name](server.endpoint, bucket)
            warm_up(c)
            seen: list[int] = []
            fig = timed(
                server,
                client=name,
                op="LIST",
                threads=1,
                objects=n,
                nbytes=0,
                work=partial(lambda c, seen: seen.append(c.list("listed/")), c, seen),
            )
            assert seen == [n], f"{name} listed {seen} keys, not {n}"
            print(fig.line(), flush=True)
            figures.append(fig)
    return figures


def large_object(
    server: S3Server, bucket: str, megabytes: int, repeats: int, names: list[str]
) -> list[Figure]:
    """GET one ``megabytes`` object whole (an embedding shard), per client."""
    data = random.Random(7).randbytes(megabytes << 20)
    CLIENTS["boto3"](server.endpoint, bucket).put("shards/large.bin", data)
    figures: list[Figure] = []
    for _ in range(repeats):
        for name in names:
            c = CLIENTS[name](server.endpoint, bucket)
            warm_up(c)
            got: list[bytes] = []
            fig = timed(
                server,
                client=name,
                op="GET large",
                threads=1,
                objects=1,
                nbytes=len(data),
                work=partial(lambda c, got: got.append(c.get("shards/large.bin")), c, got),
            )
            assert got[0] == data, f"{name} read other bytes"
            print(fig.line(), flush=True)
            figures.append(fig)
    return figures


def cell(f: Figure) -> str:
    """A client's figure in the summary: objects/s, or MB/s for one large object."""
    if f.objects == 1:
        per_gb = f.client_cpu_s * 1000 / f.megabytes
        return f"{f.megabytes / f.seconds:7.1f} MB/s cpu {per_gb:6.2f} s/GB"
    per_k = f.client_cpu_s * 1000 / f.objects
    return f"{f.objects / f.seconds:7.1f} obj/s cpu {per_k:6.3f} s/1k"


def summary(figures: list[Figure]) -> None:
    """The median figure per (op, threads) of each client, side by side, and their ratios."""
    print("\nsummary (median of repeats; ratio = obstore / boto3)")
    groups: dict[tuple[str, int], dict[str, list[Figure]]] = {}
    for f in figures:
        groups.setdefault((f.op, f.threads), {}).setdefault(f.client, []).append(f)
    for (op, t), by_client in groups.items():
        if set(by_client) != {"boto3", "obstore"}:
            continue
        med = {k: sorted(v, key=lambda f: f.seconds)[len(v) // 2] for k, v in by_client.items()}
        b, o = med["boto3"], med["obstore"]
        rate = (o.objects / o.seconds) / (b.objects / b.seconds)
        cpu = o.client_cpu_s / max(b.client_cpu_s, 1e-9)
        print(
            f"{op:10s} T={t:<3d} boto3 {cell(b)} | obstore {cell(o)} | "
            f"rate x{rate:4.2f}, client CPU x{cpu:4.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000, help="small objects per run")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--list-keys", type=int, default=10_000)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="of the LIST and large GET")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    parser.add_argument("--port", type=int, default=18600, help="the moto server's port")
    parser.add_argument("--quick", action="store_true", help="fewer keys and a smaller object")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if args.quick:
        args.list_keys, args.large_mb, args.repeats = 2000, 10, 1
    os.environ.update(CREDENTIALS)
    blobs = payloads(args.objects, low=2 << 10, high=30 << 10, seed=1)
    print(
        f"{args.objects} objects of 2-30 KB ({sum(map(len, blobs)) / 1e6:.1f} MB), "
        f"threads {args.threads}, clients {args.clients}, {os.cpu_count()} cores"
    )
    import boto3
    import obstore

    print(f"boto3 {boto3.__version__}, obstore {obstore.__version__}")
    figures: list[Figure] = []
    with s3_server(Path(os.environ.get("TMPDIR", "/tmp")), port=args.port) as server:
        bucket = server.bucket("bench")
        figures += small_objects(server, bucket, blobs, args.threads, args.clients)
        figures += listing(server, bucket, args.list_keys, args.repeats, args.clients)
        figures += large_object(server, bucket, args.large_mb, args.repeats, args.clients)
    summary(figures)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(f) for f in figures], indent=1))


if __name__ == "__main__":
    main()
