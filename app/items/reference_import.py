"""Import by reference (DESIGN 4d): objects in a bucket become items; their bytes stay there.

The job is an ``import`` job like an upload's, run in a worker from its params: ``source``
(``s3://bucket/prefix``) or ``manifest`` (``s3://bucket/key`` of a CSV/JSONL list), ``split`` and
``labels_from_folders``. The server only checked that the source can be read (one listing page,
or a HEAD of the manifest); it never reads an object.

1. **Plan.** The job lists the prefix page by page (or reads the manifest) and writes the objects
   as chunks (``app.items.chunks``), a few at a time. A re-run resumes the listing after the last
   key planned (the manifest after the last row), so nothing is planned twice.
2. **Fan out.** As chunks appear it sends help requests (``svp.import_help``), one per chunk
   beyond the first, up to ``SVP_IMPORT_FANOUT``; helpers claim chunks until none is left and
   the listing is done. The job works through chunks too, so it finishes with no helper free.
3. **Register.** A chunk's objects are read by threads (a read waits on the network), hashed and
   checked (an image decoded whole within ``SVP_MAX_IMAGE_PIXELS``, in the formats an upload
   takes; a text project's object read as records as an uploaded file is), and the accepted
   ones inserted with their ``source``, in one transaction with the chunk's ``done`` and counts:
   a crash never leaves half a chunk, a re-run never counts one twice.
4. **Finish.** The job waits for chunks held by others (taking over claims gone stale), fails
   with the store's reason when a chunk could not be read (a retry queues it again), and sums
   the chunks into the same result an upload's import has.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import unit_of_work, utcnow
from app.embeddings.service import embed_new_images
from app.items import chunks, manifest
from app.items.archive import ZIP_MAGIC, Stream
from app.items.chunks import ChunkCounts, Claimed, JobTally
from app.items.entries import Rejected, clean_name, name_problem
from app.items.import_job import MAX_REJECTED_LISTED, refresh_statistics
from app.items.importer import Accepted, examine_image, insert_items, limit_pixels
from app.items.text_import import AcceptedText, content_hash, insert_texts
from app.items.text_reader import TextReader, TextRecord
from app.jobs.broker import IMPORT_HELP_TASK_NAME, send_task
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind
from app.jobs.runtime import JobContext
from app.projects.models import Project, ProjectKind
from app.settings import get_settings
from app.storage import (
    ObjectMissing,
    ObjectTooLarge,
    S3Store,
    StoreUnavailable,
    image_key,
    object_cache,
    parse_s3_url,
    source_store,
)

log = logging.getLogger(__name__)

# How often the job looks at chunks held by others, and a helper at a listing still going on.
WAIT_SECONDS = 0.25
# Objects read at once per worker: each read is a round trip to the store.
READ_THREADS = 16
# Chunks written per transaction while listing (a listing page is 1,000 keys).
PLAN_BATCH_CHUNKS = 8
# A chunk closes early past this many listed bytes, bounding what one chunk reads.
MAX_CHUNK_BYTES = 64 << 20
# PostgreSQL's SQLSTATE for a deadlock: two chunks holding the same new content, inserted in
# opposite orders, can wait on each other; the one PostgreSQL aborts is simply run again.
_PG_DEADLOCK = "40P01"
_DEADLOCK_RETRIES = 3


class ClaimLost(Exception):
    """The chunk's claim passed to another worker while this one read it: its work is dropped."""


@dataclass(frozen=True)
class Source:
    """Where the job's objects are: a prefix to list, or a manifest's key, in one bucket."""

    bucket: str
    prefix: str
    manifest: str | None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Source:
        """The source a job's params name."""
        if params.get("manifest"):
            bucket, key = parse_s3_url(str(params["manifest"]))
            return cls(bucket, "", key)
        bucket, prefix = parse_s3_url(str(params["source"]))
        return cls(bucket, prefix, None)

    @property
    def url(self) -> str:
        """The source or manifest as the user gave it."""
        return f"s3://{self.bucket}/{self.manifest or self.prefix}"

    def object_url(self, key: str) -> str:
        """The ``source`` an item read from ``key`` keeps."""
        return f"s3://{self.bucket}/{key}"

    def name_of(self, key: str) -> str:
        """An object's item name: its key below the prefix; the key's last part when the source
        names that one object. A prefix that ends inside a name (``s3://b/train`` lists
        ``train_v2/1.png`` too, as S3 does) names from its folder, never cutting a name."""
        rest = key[len(self.prefix) :]
        if not rest:
            return PurePosixPath(key).name
        if self.prefix and not self.prefix.endswith("/") and not rest.startswith("/"):
            folder = self.prefix.rpartition("/")[0]
            return key[len(folder) + 1 :] if folder else key
        return rest.lstrip("/")


def is_reference(params: dict[str, Any]) -> bool:
    """Whether an import job's params are an import by reference (not an upload)."""
    return bool(params.get("source") or params.get("manifest"))


@dataclass(frozen=True)
class Target:
    """The project the items go to, and how: what each chunk's reader needs."""

    project_id: int
    kind: str
    classes: frozenset[str]
    uploader: int | None
    split: str
    from_folders: bool

    @classmethod
    def of_job(cls, job_id: int) -> Target:
        """The target of a job, read from its row and its project's."""
        with unit_of_work(write=False) as db:
            job = db.get(Job, job_id)
            project = db.get(Project, job.project_id) if job and job.project_id else None
            if job is None or project is None:
                raise LookupError(f"job {job_id} or its project is gone")
            return cls(
                project_id=project.id,
                kind=project.kind,
                classes=frozenset(project.classes),
                uploader=job.created_by,
                split=str(job.params.get("split", "pool")),
                from_folders=bool(job.params.get("labels_from_folders", False)),
            )


def store_down(source: Source, exc: BaseException) -> StoreUnavailable:
    """The error a job fails with when the store stopped answering: it names the store."""
    return StoreUnavailable(
        f"the object store stopped answering while importing from {source.url}: {exc}. "
        "Nothing of the chunk in hand was registered; retry the job once the store answers "
        "(it resumes where it stopped)."
    )


# ---- reading and registering one chunk ----------------------------------------------------


@dataclass
class Outcome:
    """What a chunk's objects came to before they are inserted."""

    images: list[Accepted] = field(default_factory=list)
    texts: list[AcceptedText] = field(default_factory=list)
    counts: ChunkCounts = field(default_factory=ChunkCounts)
    seen: set[str] = field(default_factory=set)

    def accept(self, digest: str) -> bool:
        """Whether this content is new in the chunk (a second copy counts as a duplicate)."""
        if digest in self.seen:
            self.counts.duplicates += 1
            return False
        self.seen.add(digest)
        return True


# What reading one object came to: an accepted image, a text object's records, or the reason
# the object is refused.
Read = Accepted | list[TextRecord] | str


class ChunkReader:
    """Reads, checks and registers chunks of one job, with a pool of reader threads."""

    def __init__(self, source: Source, target: Target, pool: ThreadPoolExecutor) -> None:
        settings = get_settings()
        self.source = source
        self.target = target
        self.pool = pool
        self.store: S3Store = source_store(source.bucket)
        self.classes = set(target.classes)
        self.max_pixels = settings.max_image_pixels
        self.text = target.kind == ProjectKind.text
        # No image within the pixel limit needs more than 8 bytes a pixel, plus headers; a
        # text object is bounded like an uploaded file.
        self.max_bytes = settings.max_upload_bytes if self.text else self.max_pixels * 8 + (1 << 20)
        # Texts read as an upload's files are; a manifest's label comes before a folder's.
        self.texts, self.labelled_texts = (
            TextReader(
                classes=self.classes, max_chars=settings.max_text_chars, from_folders=folders
            )
            for folders in (target.from_folders, False)
        )
        limit_pixels(self.max_pixels)

    def register(self, claimed: Claimed) -> ChunkCounts:
        """Read the chunk's objects and register them with the chunk's ``done``.

        Raises StoreUnavailable (the chunk marked failed, the reason naming the store) when the
        store does not answer, and ClaimLost (nothing registered) when another worker took the
        chunk over meanwhile.
        """
        try:
            read = list(self.pool.map(self._read, claimed.entries))
        except StoreUnavailable as exc:
            down = store_down(self.source, exc)
            with unit_of_work() as db:
                chunks.fail(db, claimed=claimed, error=str(down))
            raise down from exc
        outcome = Outcome()
        for entry, result in zip(claimed.entries, read, strict=True):
            self._gather(outcome, clean_name(str(entry[1])), result)
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                with unit_of_work() as db:
                    counts = self._insert(db, outcome)
                    if not chunks.finish(db, claimed=claimed, counts=counts):
                        raise ClaimLost(f"chunk {claimed.chunk_id} was taken over")
                return counts
            except DBAPIError as exc:
                if (
                    getattr(exc.orig, "sqlstate", None) != _PG_DEADLOCK
                    or attempt == _DEADLOCK_RETRIES
                ):
                    raise
                log.info("chunk=%s event=deadlock attempt=%s", claimed.chunk_id, attempt)
        raise AssertionError("unreachable")

    def _read(self, entry: list[Any]) -> Read:
        """One object: accepted (an image) or read as records (a text object), or the reason
        it is refused. StoreUnavailable goes up: the chunk cannot be decided."""
        key, name, label, problem = entry
        problem = problem or name_problem(name)
        name = clean_name(name)
        if problem is None and label is not None and label not in self.classes:
            problem = f"label {label!r} is not a class of the project"
        if problem is not None:
            return str(problem)
        try:
            data = self.store.get(key, max_bytes=self.max_bytes)
        except ObjectMissing:
            return f"no object at {self.source.object_url(key)} (deleted since it was listed?)"
        except ObjectTooLarge as exc:
            return f"too large: {exc}"
        except ValueError as exc:  # a key the store refuses to address ("a/../b")
            return str(exc)
        if data[:4] == ZIP_MAGIC or name.lower().endswith(".zip"):
            return (
                "a zip archive: an import by reference reads objects one by one (unpack it into "
                "the bucket, or upload the zip)"
            )
        if self.text:
            return self._records(name, label, data)
        try:
            accepted = examine_image(
                name,
                data,
                # A manifest's label comes first; the folder gives one only where there is none.
                from_folders=self.target.from_folders and label is None,
                classes=self.classes,
                max_pixels=self.max_pixels,
            )
        except Rejected as exc:
            return str(exc)
        if label is not None:
            accepted.label = label
        accepted.source = self.source.object_url(key)
        # The worker that embeds next reads it from its disk, not again from the bucket.
        object_cache().put(image_key(accepted.content_hash), data)
        return accepted

    def _records(self, name: str, label: str | None, data: bytes) -> list[TextRecord] | str:
        """A text object's records; a manifest's label is for an object that is one text."""
        single = name.lower().endswith(".txt")
        if label is not None and not single:
            return (
                "a manifest's label is for an image or a .txt object; the rows of a .csv or "
                ".jsonl object carry their own"
            )
        stream = Stream(name=name, open=lambda: io.BytesIO(data))
        reader = self.texts if label is None else self.labelled_texts
        records = reader.whole_records(stream)
        if label is not None:
            for record in records:
                if record.problem is None:
                    record.label = label
        return records

    def _gather(self, outcome: Outcome, name: str, result: Read) -> None:
        if isinstance(result, str):
            outcome.counts.reject(name, result)
        elif isinstance(result, Accepted):
            if outcome.accept(result.content_hash):
                outcome.images.append(result)
        else:
            for record in result:
                if record.problem is not None:
                    outcome.counts.reject(record.name, record.problem)
                    continue
                digest = content_hash(record.text)
                if outcome.accept(digest):
                    outcome.texts.append(
                        AcceptedText(record.name, digest, record.text, record.label)
                    )

    def _insert(self, db: Session, outcome: Outcome) -> ChunkCounts:
        """Insert the chunk's accepted items; its counts (run again after a deadlock, so the
        outcome itself is left as it is)."""
        target = self.target
        common: dict[str, Any] = {
            "project_id": target.project_id,
            "split": target.split,
            "uploader": target.uploader,
        }
        if self.text:
            added, labeled = insert_texts(db, outcome.texts, **common)
            accepted = len(outcome.texts)
        else:
            added, labeled = insert_items(db, outcome.images, **common)
            accepted = len(outcome.images)
        # Content already in the project (an earlier import, or another chunk of this one)
        # counts as a duplicate, as a second copy within the chunk does.
        return replace(
            outcome.counts,
            added=added,
            labeled=labeled,
            duplicates=outcome.counts.duplicates + accepted - added,
        )


def work_chunks(
    job_id: int,
    *,
    worker: str,
    on_chunk: Callable[[], None] | None = None,
    wanted: Callable[[], bool] | None = None,
) -> int:
    """Claim and register the job's chunks until none is left to claim (or ``wanted()`` turns
    false); how many. StoreUnavailable goes up once a chunk could not be read."""
    source = Source.from_params(_params(job_id))
    target = Target.of_job(job_id)
    stale = timedelta(seconds=get_settings().worker_dead_after_seconds)
    done = 0
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="svp-import-read") as pool:
        reader = ChunkReader(source, target, pool)
        while wanted is None or wanted():
            with unit_of_work() as db:
                claimed = chunks.claim(
                    db, job_id=job_id, worker=worker, stale_before=utcnow() - stale
                )
            if claimed is None:
                break
            try:
                reader.register(claimed)
            except ClaimLost:
                log.warning("job=%s chunk=%s event=claim-lost", job_id, claimed.chunk_id)
                continue
            done += 1
            if on_chunk is not None:
                on_chunk()
    return done


def _params(job_id: int) -> dict[str, Any]:
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} is gone")
        return dict(job.params)


def _state(job_id: int) -> tuple[bool, bool]:
    """(whether the job still wants its chunks registered, whether its listing is done)."""
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        if job is None:
            return False, True
        wanted = job.status not in FINISHED_JOB_STATUSES and not job.cancel_requested
        return wanted, bool((job.result or {}).get("listed"))


def help_with(job_id: int, *, worker: str) -> int:
    """A help request's work: register chunks of a running import until none is left and its
    listing is done; how many. A store that stops answering ends the help (the job fails)."""
    done = 0
    try:
        while True:
            wanted, listed = _state(job_id)
            if not wanted:
                break
            done += work_chunks(job_id, worker=worker, wanted=lambda: _state(job_id)[0])
            if listed:
                break
            time.sleep(WAIT_SECONDS)
    except StoreUnavailable as exc:
        log.warning("job=%s event=help-stopped worker=%s reason=%s", job_id, worker, exc)
    log.info("job=%s event=helped chunks=%s worker=%s", job_id, done, worker)
    return done


# ---- the job: plan, fan out, wait, sum ------------------------------------------------------


class ReferenceImport:
    """One run of an import by reference, from wherever an earlier run stopped."""

    def __init__(self, ctx: JobContext) -> None:
        settings = get_settings()
        self.ctx = ctx
        self.source = Source.from_params(ctx.params)
        self.chunk_size = settings.import_chunk_size
        # The server's own pool (SVP_INLINE_JOBS) has no workers to ask.
        self.fanout = 0 if settings.inline_jobs else settings.import_fanout
        self.helpers = 0
        self.listed = False
        self.started = time.perf_counter()

    def run(self) -> dict[str, Any]:
        """Plan what is left to plan, register every chunk, and return the result."""
        with unit_of_work() as db:
            job = db.get(Job, self.ctx.job_id)
            previous = dict(job.result or {}) if job is not None else {}
            if previous.get("finished"):
                # A redelivery after the last commit: the chunks are summed and gone.
                return previous
            self.listed = bool(previous.get("listed"))
            chunks.requeue_failed(db, job_id=self.ctx.job_id)
            tally = chunks.tally(db, job_id=self.ctx.job_id)
        self.seq = tally.chunks
        self._ask_for_help(tally.chunks - tally.chunks_done)
        if not self.listed:
            try:
                self._plan()
            except StoreUnavailable as exc:
                raise store_down(self.source, exc) from exc
        self._work()
        return self._finish()

    # -- planning

    def _plan(self) -> None:
        with unit_of_work(write=False) as db:
            state = chunks.plan_state(db, job_id=self.ctx.job_id)
        self.ctx.progress("listing", 0.0)
        pending: list[list[list[Any]]] = []
        current: list[list[Any]] = []
        size = 0
        for entry, nbytes in self._entries(state):
            current.append(entry)
            size += nbytes
            if len(current) >= self.chunk_size or size >= MAX_CHUNK_BYTES:
                pending.append(current)
                current, size = [], 0
                if len(pending) >= PLAN_BATCH_CHUNKS:
                    self._write(pending, listed=False)
                    pending = []
        pending.append(current)
        self._write(pending, listed=True)

    def _entries(self, state: chunks.PlanState) -> Iterator[tuple[list[Any], int]]:
        """Each object still to plan, as a chunk entry with its listed size (0: unknown)."""
        store = source_store(self.source.bucket)
        if self.source.manifest is None:
            for info in store.list(self.source.prefix, start_after=state.last_key):
                yield [info.key, self.source.name_of(info.key), None, None], info.size
            return
        try:
            data = store.get(self.source.manifest, max_bytes=manifest.MAX_MANIFEST_BYTES)
        except ObjectMissing as exc:
            raise manifest.ManifestError(f"the manifest is gone: {exc}") from exc
        except ObjectTooLarge as exc:
            raise manifest.ManifestError(f"the manifest is too large to read: {exc}") from exc
        rows = manifest.rows(data, key=self.source.manifest, bucket=self.source.bucket)
        for position, row in enumerate(rows):
            if position >= state.entries:  # rows before were planned by an earlier run
                yield row.entry(), 0

    def _write(self, planned: list[list[list[Any]]], *, listed: bool) -> None:
        """Write planned chunks (and, with the last, that the listing is done), then report."""
        planned = [c for c in planned if c]
        with unit_of_work() as db:
            chunks.add_chunks(db, job_id=self.ctx.job_id, first_seq=self.seq, chunks=planned)
            self.listed = listed
            tally = self._checkpoint(db)
        self.seq += len(planned)
        self._ask_for_help(tally.chunks - tally.chunks_done)
        self._progress("importing" if listed else "listing", tally)

    def _ask_for_help(self, open_chunks: int) -> None:
        """One help request per chunk beyond the job's own, up to the fan-out."""
        wanted = min(open_chunks - 1, self.fanout)
        while self.helpers < wanted:
            send_task(IMPORT_HELP_TASK_NAME, [self.ctx.job_id], kind=JobKind.import_)
            self.helpers += 1

    # -- working and waiting

    def _work(self) -> None:
        worker = self.ctx.worker or "worker"
        while True:
            work_chunks(self.ctx.job_id, worker=worker, on_chunk=self._on_chunk)
            with unit_of_work(write=False) as db:
                failure = chunks.first_failure(db, job_id=self.ctx.job_id)
            if failure is not None:
                raise StoreUnavailable(failure)
            tally = self._report("importing")
            if tally.chunks_done >= tally.chunks:
                return
            time.sleep(WAIT_SECONDS)

    def _on_chunk(self) -> None:
        self._report("importing")

    def _checkpoint(self, db: Session) -> JobTally:
        """The job's result so far, in its row (clients poll it, a re-run reads ``listed``)."""
        tally = chunks.tally(db, job_id=self.ctx.job_id)
        result = self._result(db, tally)
        db.execute(update(Job).where(Job.id == self.ctx.job_id).values(result=result))
        return tally

    def _report(self, stage: str) -> JobTally:
        with unit_of_work() as db:
            tally = self._checkpoint(db)
        self._progress(stage, tally)
        return tally

    def _progress(self, stage: str, tally: JobTally) -> None:
        fraction = tally.processed / tally.entries if self.listed and tally.entries else 0.0
        # Also where a cancel request stops the job (JobCanceled): helpers stop with it.
        self.ctx.progress(stage, fraction)

    def _result(self, db: Session, tally: JobTally) -> dict[str, Any]:
        """The contract's ``{added, duplicates, rejected}`` and an upload's counts, plus where
        the objects came from and how the chunks were shared."""
        return {
            "added": tally.added,
            "duplicates": tally.duplicates,
            "rejected": chunks.rejected(db, job_id=self.ctx.job_id, limit=MAX_REJECTED_LISTED),
            "rejected_count": tally.rejected_count,
            "labeled": tally.labeled,
            "processed": tally.processed,
            "total": tally.entries,
            "source": self.source.url,
            "listed": self.listed,
            "chunks": tally.chunks,
            "workers": chunks.workers(db, job_id=self.ctx.job_id),
        }

    def _finish(self) -> dict[str, Any]:
        """Sum the chunks into the result and forget them, in one transaction."""
        with unit_of_work() as db:
            tally = chunks.tally(db, job_id=self.ctx.job_id)
            result = self._result(db, tally)
            seconds = time.perf_counter() - self.started
            result.update(
                finished=True,
                seconds=round(seconds, 3),
                objects_per_second=round(tally.entries / seconds, 1) if seconds > 0 else None,
            )
            db.execute(update(Job).where(Job.id == self.ctx.job_id).values(result=result))
            chunks.drop(db, job_id=self.ctx.job_id)
        return result


def run_reference_import(ctx: JobContext) -> dict[str, Any]:
    """The import job for ``source``/``manifest`` params: objects become items by reference."""
    result = ReferenceImport(ctx).run()
    log.info(
        "import job %s from %s: %s added, %s duplicates, %s rejected of %s in %ss",
        ctx.job_id,
        result.get("source"),
        result["added"],
        result["duplicates"],
        result["rejected_count"],
        result["total"],
        result.get("seconds"),
    )
    refresh_statistics(added=result["added"])
    if result["added"] and ctx.project_id is not None:
        with unit_of_work() as db:
            job = db.get(Job, ctx.job_id)
            created_by = job.created_by if job is not None else None
            embed_new_images(db, project_id=ctx.project_id, created_by=created_by)
    return result


__all__ = ["ReferenceImport", "help_with", "is_reference", "run_reference_import", "work_chunks"]
