"""The import job: uploaded files and zip archives become items, each checked and stored once.

Runs in a worker (or the server's stopgap pool) from the job's params alone. Each uploaded part is
read as entries (``entries.py``; a zip's files by ``archive.py``), each entry decoded and checked
here. Items are committed in short batches together with a checkpoint in the job's row, so a
re-run after a crash resumes where the last batch ended and counts exactly what a single run
would have counted (``import_job.py``, shared with a text project's import, ``text_import.py``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

from PIL import Image, UnidentifiedImageError
from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import unit_of_work, utcnow
from app.embeddings.service import embed_new_images
from app.items import archive, staging
from app.items.entries import Entry, Rejected, single_file
from app.items.import_job import Batch, ImportBase, Tally, refresh_statistics
from app.items.models import Item
from app.items.storage import discard
from app.items.text_import import TextImportRun
from app.items.text_reader import wrong_kind_reason
from app.jobs.models import Job
from app.jobs.runtime import JobContext
from app.labeling.models import Label, LabelSource
from app.projects.models import Project, ProjectKind
from app.settings import get_settings
from app.storage import is_remote, write_image

log = logging.getLogger(__name__)

# Rows per transaction: short enough that SQLite's write lock is held for milliseconds while
# annotators are submitting labels, long enough that 50,000 items take ~125 commits.
BATCH_SIZE = 400
# A batch closes early past this many image bytes, bounding what waits in memory for the disk.
MAX_BATCH_BYTES = 64 << 20

# Images stored at once into a bucket: each write is a HEAD and a PUT round trip that spends
# most of its time waiting on the store. Into a local S3 server 8 threads doubled the import's
# rate (bench/s3_import.py); 16 did no better than 8 on plain PUTs (bench/s3_clients.py), where
# the server and the client's CPU bound it (docs/storage.md).
REMOTE_WRITE_THREADS = 8

# Formats a browser can show; every other decoder of Pillow stays unreachable from uploads.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}
# Core tables for the bulk inserts (declarative classes always map a Table).
ITEMS = cast(Table, Item.__table__)
LABELS = cast(Table, Label.__table__)


@dataclass
class Accepted:
    """A decoded image waiting for its batch to commit."""

    name: str
    content_hash: str
    media_type: str
    width: int
    height: int
    label: str | None
    data: bytes = b""
    # The s3://bucket/key of an item imported by reference (DESIGN 4d); None: bytes stored.
    source: str | None = None


def run_import(ctx: JobContext) -> dict[str, Any]:
    """Import an upload's files into the job's project; the result counts added, dupes, refusals."""
    settings = get_settings()
    with unit_of_work(write=False) as db:
        job = db.get(Job, ctx.job_id)
        project = db.get(Project, ctx.project_id) if ctx.project_id is not None else None
        if job is None or project is None:
            raise LookupError(f"job {ctx.job_id} or its project is gone")
        # A text project reads text records where an image project decodes image files.
        kind = TextImportRun if project.kind == ProjectKind.text else ImportRun
        run = kind(
            ctx,
            project_id=project.id,
            classes=set(project.classes),
            uploader=job.created_by,
            tally=Tally.from_result(job.result),
        )
        if job.result is None:
            # Files refused when the upload arrived (a NUL in the name), counted once.
            for refused in ctx.params.get("refused", []):
                run.tally.reject(str(refused["name"]), str(refused["reason"]))
    relative = str(ctx.params["upload_dir"])
    staged = bool(ctx.params.get("staged"))
    # Staged in the item store (the server shares no disk with workers): fetched into a folder
    # of this worker's data dir for this run alone; a redelivery fetches them again.
    root = staging.local_root() if staged else settings.uploads_dir
    local = _inside(root, relative)
    files = [(_inside(root, f["path"]), str(f["name"])) for f in ctx.params["files"]]
    if staged:
        ctx.progress("fetching", 0.0)
        upload_dir = staging.fetch(relative, ctx.params["files"])
    else:
        upload_dir = local if local.is_dir() else None
    if upload_dir is None:
        if run.tally.total and run.tally.processed >= run.tally.total:
            # A redelivery after the last commit and the clean-up: the work is done.
            return run.tally.as_result()
        raise FileNotFoundError(f"the uploaded files of job {ctx.job_id} are gone")
    started = time.perf_counter()
    try:
        result = run.run(files)
    finally:
        if staged:
            discard(upload_dir)  # this run's copy; the staged objects stay for a retry
    log.info(
        "import job %s: %s added, %s duplicates, %s rejected of %s in %.1fs",
        ctx.job_id,
        result["added"],
        result["duplicates"],
        result["rejected_count"],
        result["total"],
        time.perf_counter() - started,
    )
    refresh_statistics(added=result["added"])
    # Only now: a crash before this line re-runs from the checkpoint with the files still there.
    if staged:
        staging.unstage(relative)
    else:
        discard(upload_dir)
    if result["added"]:
        with unit_of_work() as db:
            embed_new_images(db, project_id=run.project_id, created_by=run.uploader)
    return result


class ImportRun(ImportBase):
    """One run of an import job over image files, from its checkpoint to the end.

    Two stages overlap: this thread reads and decodes batch N+1 while a writer thread stores the
    files of batch N (file creation is kernel time and frees the GIL); batch N's rows commit once
    its files are on disk, so a visible item always has its file.
    """

    def prepare(self) -> None:
        """The pixel and size limits and the image store."""
        settings = get_settings()
        self.max_pixels = settings.max_image_pixels
        # No image within the pixel limit needs more than 8 bytes a pixel, plus headers.
        self.entry_limit = self.max_pixels * 8 + (1 << 20)
        self.seen: set[str] = set()

    def run(self, files: list[tuple[Path, str]]) -> dict[str, Any]:
        """Import every entry after the checkpoint, committing batch by batch."""
        limit_pixels(self.max_pixels)
        self.tally.total = sum(_count_entries(path, name) for path, name in files)
        resume_after = self.tally.processed
        position = 0
        batch = Batch()
        in_flight: tuple[Batch, Future[None]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="svp-import-io") as io_pool:
            for path, name in files:
                for entry in _entries(path, name, entry_limit=self.entry_limit):
                    position += 1
                    if position <= resume_after:
                        continue  # committed by an earlier run of this job
                    self._examine_into(batch, entry)
                    batch.upto = position
                    if batch.entries >= BATCH_SIZE or batch.bytes >= MAX_BATCH_BYTES:
                        if in_flight is not None:
                            self._commit(*in_flight)
                        in_flight = (batch, io_pool.submit(self._write, batch))
                        batch = Batch()
            if in_flight is not None:
                self._commit(*in_flight)
            batch.upto = max(batch.upto, position)
            self._commit(batch, io_pool.submit(self._write, batch))
        return self.tally.as_result()

    def _examine_into(self, batch: Batch, entry: Entry) -> None:
        batch.entries += 1
        try:
            data = entry.content()
            accepted = examine_image(
                entry.name,
                data,
                from_folders=self.from_folders,
                classes=self.classes,
                max_pixels=self.max_pixels,
            )
        except Rejected as exc:
            batch.rejected.append((entry.name, str(exc)))
            return
        if accepted.content_hash in self.seen:
            batch.duplicates += 1  # twice in this upload: counted, stored once
            return
        self.seen.add(accepted.content_hash)
        accepted.data = data
        batch.accepted.append(accepted)
        batch.bytes += len(data)

    def _write(self, batch: Batch) -> None:
        """Store the batch's images; every one is stored when this returns, or it raises.

        A bucket costs a round trip or two per image (``write_image`` asks before it writes),
        so there the images go from a few threads at once; the folder store writes one after
        another, as file creation is cheap and parallel writes would not make the disk faster.
        """

        def store(accepted: Accepted) -> None:
            write_image(accepted.content_hash, accepted.data)
            accepted.data = b""  # stored; let the bytes go

        if not is_remote() or len(batch.accepted) < 2:
            for accepted in batch.accepted:
                store(accepted)
            return
        pool = ThreadPoolExecutor(
            min(REMOTE_WRITE_THREADS, len(batch.accepted)), thread_name_prefix="svp-import-put"
        )
        try:
            # list(): wait for all and re-raise the first failure; the batch's rows then never
            # commit (``_commit`` waits on this), so no item is visible without its bytes.
            list(pool.map(store, batch.accepted))
        finally:
            # After a failure the images not yet started are dropped: against a store that went
            # away each would spend the client's retries (seconds) only to fail the same way.
            pool.shutdown(wait=True, cancel_futures=True)

    def _insert(self, db: Session, accepted: list[Any]) -> tuple[int, int]:
        return insert_items(
            db, accepted, project_id=self.project_id, split=self.split, uploader=self.uploader
        )


def insert_items(
    db: Session, batch: list[Accepted], *, project_id: int, split: str, uploader: int | None
) -> tuple[int, int]:
    """Insert items skipping content already in the project; returns (items added, labels added)."""
    if not batch:
        return 0, 0
    now = utcnow()
    rows = [
        {
            "project_id": project_id,
            "content_hash": a.content_hash,
            "name": a.name,
            "media_type": a.media_type,
            "width": a.width,
            "height": a.height,
            "split": split,
            "label": a.label,
            "source": a.source,
            "created_at": now,
        }
        for a in batch
    ]
    dialect = db.get_bind().dialect.name
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # ON CONFLICT DO NOTHING: the unique (project, hash) decides duplicates even when two
    # imports of the same project race; RETURNING says which rows are new. Core tables and
    # executemany: compiled once and cached, where a multi-VALUES ORM insert recompiles.
    stmt = (
        upsert(ITEMS)
        .on_conflict_do_nothing(index_elements=["project_id", "content_hash"])
        .returning(ITEMS.c.id, ITEMS.c.content_hash)
    )
    new = {h: iid for iid, h in db.execute(stmt, rows).tuples()}
    labels = [
        {
            "item_id": new[a.content_hash],
            "project_id": project_id,
            "user_id": uploader,
            "label": a.label,
            "source": LabelSource.imported,
            "key": None,
            "created_at": now,
            "undone_at": None,
        }
        for a in batch
        if a.label is not None and a.content_hash in new
    ]
    if labels:
        db.execute(insert(LABELS), labels)
    return len(new), len(labels)


def _inside(root: Path, relative: str) -> Path:
    """A path under ``root``; a job's params naming anything outside it are refused."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"upload path {relative!r} is outside the uploads dir")
    return path


def _count_entries(path: Path, name: str) -> int:
    """How many entries ``_entries`` yields for an uploaded part (positions must agree)."""
    return archive.count_entries(path) if archive.is_zip(path, name) else 1


def _entries(path: Path, name: str, *, entry_limit: int) -> Iterator[Entry]:
    """The entries of one uploaded part: each file of an archive, or the part itself."""
    if archive.is_zip(path, name):
        yield from archive.entries(path, name, entry_limit=entry_limit)
    else:
        yield single_file(path, name, entry_limit=entry_limit)


def limit_pixels(max_pixels: int) -> None:
    """Make Pillow's bomb guard this process's pixel limit: it warns past ``max_pixels`` and
    refuses past twice that, and both count as a bomb (the warning is made an error)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def examine_image(
    name: str, data: bytes, *, from_folders: bool, classes: set[str], max_pixels: int
) -> Accepted:
    """Check one file and describe it; raise Rejected with the reason when it is refused."""
    if not data:
        raise Rejected("empty file")
    if data[:4] == archive.ZIP_MAGIC or name.lower().endswith(".zip"):
        raise Rejected("nested archive (zip inside an upload's zip) is not imported")
    text_file = wrong_kind_reason(name)
    if text_file is not None:
        raise Rejected(text_file)
    label = None
    if from_folders:
        label = PurePosixPath(name).parent.name
        if not label:
            raise Rejected("no folder to take the class from")
        if label not in classes:
            raise Rejected(f"folder {label!r} is not a class of the project")
    width, height, media_type = _decode(data, max_pixels=max_pixels)
    return Accepted(
        name=name,
        content_hash=hashlib.sha256(data).hexdigest(),
        media_type=media_type,
        width=width,
        height=height,
        label=label,
    )


def _decode(data: bytes, *, max_pixels: int) -> tuple[int, int, str]:
    """Fully decode an image; returns (width, height, media type) or raises Rejected."""
    formats = tuple(MEDIA_TYPES)
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        if im.format == "PNG":
            # Only PNG's verify() checks anything (chunk CRCs), and it leaves the image unusable.
            im.verify()
            im = Image.open(io.BytesIO(data), formats=formats)
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise Rejected(
                    f"image bomb: {width}x{height} pixels is more than {max_pixels} allowed"
                )
            # Decoding every pixel is what catches a truncated or corrupt file.
            im.load()
            media_type = MEDIA_TYPES[str(im.format)]
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(f"image bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise Rejected("not an image (accepted: JPEG, PNG, GIF, WebP, BMP)") from exc
    except Exception as exc:  # Pillow raises many types on malformed data; all mean corrupt
        raise Rejected(f"truncated or corrupt image: {exc}") from exc
    if width < 1 or height < 1:
        raise Rejected("image has no pixels")
    return width, height, media_type
