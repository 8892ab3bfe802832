"""An upload's import into a bucket: how long the import job takes when item bytes go to S3.

Starts a local S3 API server (moto in server mode, on ``--s3-port``), then the product's own
server and one worker with ``SVP_STORAGE_URL=s3://<bucket>/data``, uploads a zip of ``--images``
CIFAR-10 training images through the API and times the import job (its own start-to-finish, from
the job's row, and the upload's wall time to the job's end). It then checks that the bucket holds
one object per image and that nothing went to the data dir's ``images/``.

``--tree`` runs the server and worker from another checkout of the product (a ``git worktree``
of an older commit), so one bench measures before and after a change:

    git worktree add --detach /tmp/svp-before <commit>
    flock /tmp/bench.lock python bench/s3_import.py --tree /tmp/svp-before
    flock /tmp/bench.lock python bench/s3_import.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.round_turnaround import (  # noqa: E402
    ADMIN,
    CIFAR,
    CLASSES,
    _ts,
    admin_client,
    import_zip,
)
from tests.procs import stack, wait_for  # noqa: E402
from tests.s3server import s3_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--tree", type=Path, default=ROOT, help="the checkout the server runs from")
    p.add_argument("--s3-port", type=int, default=18602)
    p.add_argument("--port", type=int, default=18603, help="the product server's port")
    args = p.parse_args(argv)
    if not (CIFAR / "train.zip").exists():
        print(f"needs {CIFAR / 'train.zip'}", file=sys.stderr)
        return 2
    tree = args.tree.resolve()
    base = Path(tempfile.mkdtemp(prefix="svp-s3-import-"))
    # `python -m app.cli` imports the package from the working directory first.
    os.chdir(tree)
    with s3_server(base, port=args.s3_port) as s3:
        bucket = s3.bucket("import-bench")
        env = {
            **s3.env(),
            "PYTHONPATH": str(tree),
            "SVP_STORAGE_URL": f"s3://{bucket}/data",
            "SVP_ADMIN_USERNAME": ADMIN["username"],
            "SVP_ADMIN_PASSWORD": ADMIN["password"],
        }
        database_url = f"sqlite:///{base / 'stack' / 'svp.sqlite3'}"
        with stack(base, database_url=database_url, extra_env=env) as s:
            s.port = args.port
            s.serve()
            s.worker("worker", "--concurrency", "1")
            c = admin_client(s)
            # The worker's start-up (seconds) is no part of an import.
            wait_for(lambda: c.get("/api/health").json()["worker_count"] > 0, 120, "no worker")
            r = c.post("/api/projects", json={"name": "s3-import", "classes": CLASSES})
            r.raise_for_status()
            pid = r.json()["id"]
            wall = import_zip(c, pid, args.images)
            job = c.get("/api/jobs", params={"kind": "import", "project_id": pid}).json()[0]
            job_seconds = _ts(job["finished_at"]) - _ts(job["started_at"])
            added = job["result"]["added"]
        objects = sum(
            page.get("KeyCount", 0)
            for page in s3.client()  # type: ignore[attr-defined]
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix="data/images/")
        )
        on_disk = list((base / "stack" / "images").rglob("*"))
    print(f"tree {tree} ({os.cpu_count()} cores), {args.images} CIFAR images into s3://{bucket}")
    print(
        f"import job {job_seconds:.1f} s ({added / job_seconds:.0f} images/s), "
        f"upload to done {wall:.1f} s; {added} added, {objects} objects in the bucket, "
        f"{len(on_disk)} files under the data dir's images/"
    )
    return 0 if objects == added and not on_disk else 1


if __name__ == "__main__":
    sys.exit(main())
