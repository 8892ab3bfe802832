"""The runner of ``import`` jobs: an upload's files, or objects by reference (DESIGN 4d).

Both are one kind of job with one shape and result, so clients poll them alike; the params say
which: ``upload_dir`` and ``files`` for an upload, ``source`` or ``manifest`` for a bucket.
"""

from __future__ import annotations

from typing import Any

from app.items.importer import run_import
from app.items.reference_import import is_reference, run_reference_import
from app.jobs.runtime import JobContext


def run_import_job(ctx: JobContext) -> dict[str, Any]:
    """Run an import job of either form."""
    if is_reference(ctx.params):
        return run_reference_import(ctx)
    return run_import(ctx)
