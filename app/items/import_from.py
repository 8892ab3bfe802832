"""Starting an import by reference (DESIGN 4d): the request's checks, then its ``import`` job.

What a request can be told at once it is told with a 422: exactly one of ``source`` and
``manifest``, an ``s3://`` URL of the right form, and a source the service can read: one listing
page of the prefix, or a HEAD of the manifest, says whether the bucket is there, the store
answers and lets us in (a missing bucket, a refusal, an unreachable endpoint: the reason says
which). The server reads no object; the job (``reference_import``) runs in the workers.
"""

from __future__ import annotations

from itertools import islice

from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from app.auth.models import User
from app.errors import Invalid
from app.fields import RequestBody
from app.items.manifest import MAX_MANIFEST_BYTES, manifest_format
from app.items.models import Split
from app.jobs.models import Job, JobKind
from app.jobs.service import create_job
from app.projects.service import Access
from app.storage import ObjectMissing, StoreUnavailable, parse_s3_url, source_store

# An S3 key is at most 1,024 bytes; the bucket and scheme add at most ~70.
MAX_URL = 2048


class ImportFrom(RequestBody):
    """Objects to import by reference: every object under ``source``, or those ``manifest``
    lists; into ``split``, with classes from their folders when ``labels_from_folders``."""

    source: str | None = Field(
        default=None,
        max_length=MAX_URL,
        description="s3://bucket/prefix: every object under the prefix is an item, named by its "
        "key below the prefix",
    )
    manifest: str | None = Field(
        default=None,
        max_length=MAX_URL,
        description="s3://bucket/key of a .csv or .jsonl object listing 'key' (in that bucket), "
        "optionally 'name' and 'label', per row",
    )
    split: Split = Split.pool
    labels_from_folders: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ImportFrom:
        if (self.source is None) == (self.manifest is None):
            raise ValueError(
                "give exactly one of 'source' (s3://bucket/prefix) and 'manifest' "
                "(s3://bucket/key of a .csv or .jsonl object)"
            )
        return self


def _parse(url: str, what: str) -> tuple[str, str]:
    try:
        return parse_s3_url(url)
    except ValueError as exc:
        raise Invalid(f"{what}: {exc}") from None


def check_readable(body: ImportFrom) -> None:
    """422 with the reason unless the source's first page, or the manifest's HEAD, can be read.

    Runs outside any unit of work: a store that does not answer may take seconds to say so.
    """
    if body.source is not None:
        bucket, prefix = _parse(body.source, "source")
        store = source_store(bucket)
        try:
            first = list(islice(store.list(prefix), 1))
        except StoreUnavailable as exc:
            raise Invalid(f"cannot read the source {body.source}: {exc}") from None
        if not first:
            raise Invalid(f"nothing to import: no object under {body.source}")
        return
    assert body.manifest is not None
    bucket, key = _parse(body.manifest, "manifest")
    if not key or manifest_format(key) is None:
        raise Invalid(f"a manifest is a .csv or .jsonl object: s3://bucket/list.csv, not {key!r}")
    store = source_store(bucket)
    try:
        size = store.head(key).size
    except ObjectMissing:
        raise Invalid(f"no manifest at {body.manifest}") from None
    except (StoreUnavailable, ValueError) as exc:
        raise Invalid(f"cannot read the manifest {body.manifest}: {exc}") from None
    if size > MAX_MANIFEST_BYTES:
        raise Invalid(
            f"the manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} a worker reads: "
            "split it, or import the prefix as a source"
        )


def start_import_from(db: Session, *, access: Access, user: User, body: ImportFrom) -> Job:
    """Write the import job (kind ``import``); it is sent once the request commits."""
    params: dict[str, object] = {
        "split": body.split.value,
        "labels_from_folders": body.labels_from_folders,
    }
    if body.source is not None:
        params["source"] = body.source
    else:
        params["manifest"] = body.manifest
    return create_job(
        db, kind=JobKind.import_, project_id=access.project.id, params=params, created_by=user.id
    )
