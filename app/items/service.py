"""Items: starting imports, keyset pages, one item with its history, its image file."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, with_expression

from app.auth.models import User
from app.errors import Invalid, NotFound
from app.fields import MAX_ID
from app.items import staging
from app.items.models import TEXT_PREVIEW_CHARS, Item, Split
from app.items.storage import FormFields, SpooledUpload, discard, received_at
from app.items.text_reader import kind_mismatch
from app.jobs.models import Job, JobKind, JobStatus
from app.jobs.service import create_job
from app.labeling.models import Label
from app.projects.models import ALL_ITEMS
from app.projects.service import Access, get_access, item_counts
from app.storage import ObjectStore

DEFAULT_PAGE = 100
MAX_PAGE = 500
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ImportOptions:
    """The form fields of an upload besides its files."""

    split: Split
    labels_from_folders: bool


# The upload's form: files, and two options (the multipart parser refuses any other part).
UPLOAD_FORM = FormFields(file="file", plain=frozenset({"split", "labels_from_folders"}))


def import_options(fields: dict[str, str]) -> ImportOptions:
    """Read ``split`` and ``labels_from_folders`` from an upload's fields; 422 when they are bad."""
    raw_split = fields.get("split", Split.pool).strip().lower() or Split.pool
    if raw_split not in Split.__members__:
        raise Invalid("split must be 'pool' or 'test'")
    flag = fields.get("labels_from_folders", "false").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise Invalid("labels_from_folders must be true or false")
    return ImportOptions(split=Split(raw_split), labels_from_folders=flag in _TRUE)


NUL_NAME_REASON = "file name contains a NUL byte"


def visible_name(name: str) -> str:
    """A file name fit to store and show: NUL characters become U+FFFD."""
    return name.replace("\x00", "\ufffd")


def check_upload(kind: str, upload: SpooledUpload) -> None:
    """Refuse (422) an upload no import would take, before its files go anywhere."""
    if not upload.files:
        raise Invalid("the upload has no file: send images or a .zip in the 'file' field")
    # Files that all belong to the other kind of project (by their names) import nothing: said
    # at once, not by a job that rejects each. A zip is judged by its entries, in the job.
    mismatch = kind_mismatch(kind, [f.name for f in upload.files])
    if mismatch is not None:
        raise Invalid(mismatch)


def start_import(
    db: Session,
    *,
    access: Access,
    user: User,
    upload: SpooledUpload,
    options: ImportOptions,
    uploads_dir: Path,
    staged: bool = False,
) -> Job:
    """Write the import job for a spooled upload; it runs once the request commits.

    ``staged``: the files were copied into the item store (``app.items.staging``), where any
    worker finds them; otherwise they are on this machine's disk.
    """
    check_upload(access.project.kind, upload)
    # A NUL in a file's name can be stored nowhere (PostgreSQL text and JSONB refuse it): that
    # file is refused alone, under a visible form of its name, and the rest import.
    named = [f for f in upload.files if "\x00" not in f.name]
    refused = [
        {"name": visible_name(f.name), "reason": NUL_NAME_REASON}
        for f in upload.files
        if "\x00" in f.name
    ]
    return create_job(
        db,
        kind=JobKind.import_,
        project_id=access.project.id,
        params={
            # Relative to the uploads dir, so a worker with the data dir elsewhere finds them.
            "upload_dir": str(upload.dir.relative_to(uploads_dir)),
            "files": [{"path": f.path, "name": f.name, "size": f.size} for f in named],
            "refused": refused,
            "split": options.split.value,
            "labels_from_folders": options.labels_from_folders,
            "staged": staged,
        },
        created_by=user.id,
    )


def count_labeled(db: Session, *, project_id: int, split: str = Split.pool) -> int:
    """Items of a split that have a label (from the project's counts, never a COUNT)."""
    counts = item_counts(db, project_id=project_id)
    return sum(n for (s, label), n in counts.items() if s == split and label != ALL_ITEMS)


def encode_cursor(item_id: int) -> str:
    """An opaque cursor for the page after this item."""
    return base64.urlsafe_b64encode(str(item_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The item id behind a cursor; 422 for anything this server did not hand out."""
    if not _CURSOR.fullmatch(cursor):
        raise Invalid("after is not a cursor from a previous page")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("after is not a cursor from a previous page") from exc
    # Bounded by the id column's range (PostgreSQL integer): a well-formed cursor past it was a 500.
    if not text.isdigit() or len(text) > 10 or int(text) > MAX_ID:
        raise Invalid("after is not a cursor from a previous page")
    return int(text)


def list_items(
    db: Session,
    *,
    project_id: int,
    status: str | None = None,
    split: str | None = None,
    limit: int = DEFAULT_PAGE,
    after: str | None = None,
) -> tuple[list[Item], str | None]:
    """One keyset page of a project's items in id order, and the cursor of the next (no COUNT)."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    # A text item's preview is cut in the query: a page never reads a long text whole.
    preview = func.substr(Item.text, 1, TEXT_PREVIEW_CHARS)
    query = (
        select(Item)
        .options(with_expression(Item.text_preview, preview))
        .where(Item.project_id == project_id)
    )
    if split is not None:
        query = query.where(Item.split == split)
    if status == "labeled":
        query = query.where(Item.label.is_not(None))
    elif status == "unlabeled":
        query = query.where(Item.label.is_(None))
    elif status is not None:
        raise Invalid("status must be 'labeled' or 'unlabeled'")
    if after is not None:
        query = query.where(Item.id > decode_cursor(after))
    # One row more than asked says whether a next page exists without counting.
    rows = list(db.scalars(query.order_by(Item.id).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].id)
    return rows, None


def class_counts(
    db: Session, *, project_id: int, classes: list[str]
) -> tuple[list[tuple[str, dict[str, int]]], dict[str, int]]:
    """Items per current label and split: each class in the order given (zero where none),
    then any other label by name, and the unlabelled items per split. Read from the project's
    counts (``app.projects.models.ItemCount``), a few rows whatever the pool's size."""

    def zero() -> dict[str, int]:
        return {split.value: 0 for split in Split}

    per_label: dict[str, dict[str, int]] = {name: zero() for name in classes}
    every = zero()
    others: dict[str, dict[str, int]] = {}
    for (split, label), n in item_counts(db, project_id=project_id).items():
        if label == ALL_ITEMS:
            every[split] = n
        else:
            (per_label if label in per_label else others).setdefault(label, zero())[split] = n
    per_label.update(sorted(others.items()))
    unlabeled = {
        split: n - sum(counts[split] for counts in per_label.values()) for split, n in every.items()
    }
    return list(per_label.items()), unlabeled


def get_item(db: Session, *, item_id: int, user: User) -> tuple[Item, Access]:
    """An item the caller may see; 404 when it is missing or in a project they cannot see."""
    item = db.get(Item, item_id)
    if item is None:
        raise NotFound("no such item")
    try:
        access = get_access(db, project_id=item.project_id, user=user)
    except NotFound:
        raise NotFound("no such item") from None
    return item, access


def item_texts(db: Session, *, item_ids: list[int]) -> dict[int, str]:
    """The whole text of each text item among these ids (image items have none): what a worker
    embeds or trains on. Ids not found, or of images, are left out."""
    if not item_ids:
        return {}
    rows = db.execute(
        select(Item.id, Item.text).where(Item.id.in_(item_ids), Item.text.is_not(None))
    )
    return {item_id: text for item_id, text in rows.tuples() if text is not None}


def sources_by_hash(db: Session, *, project_id: int, hashes: list[str]) -> dict[str, str]:
    """The object each content hash of a project was imported from by reference (DESIGN 4d);
    hashes of uploaded bytes (in the item store) are left out."""
    found: dict[str, str] = {}
    for start in range(0, len(hashes), 5000):
        rows = db.execute(
            select(Item.content_hash, Item.source).where(
                Item.project_id == project_id,
                Item.content_hash.in_(hashes[start : start + 5000]),
                Item.source.is_not(None),
            )
        )
        for content_hash, source in rows.tuples():
            if source is not None:
                found[content_hash] = source
    return found


def texts_by_hash(db: Session, *, project_id: int, hashes: list[str]) -> dict[str, str]:
    """The whole text behind each content hash of a project's text items: what an embedding
    job, whose chunks carry content hashes, embeds. Hashes not found are left out."""
    if not hashes:
        return {}
    rows = db.execute(
        select(Item.content_hash, Item.text).where(
            Item.project_id == project_id, Item.content_hash.in_(hashes), Item.text.is_not(None)
        )
    )
    return {digest: text for digest, text in rows.tuples() if text is not None}


def item_labels(db: Session, *, item_id: int) -> list[tuple[Label, str | None]]:
    """An item's live labels, newest first, with their authors' usernames."""
    rows = db.execute(
        select(Label, User.username)
        .outerjoin(User, User.id == Label.user_id)
        .where(Label.item_id == item_id, Label.undone_at.is_(None))
        .order_by(Label.id.desc())
    )
    return [(label, username) for label, username in rows.tuples()]


# An upload folder no job names is a request still streaming, or one that died mid-way: it is
# deleted only once nothing was written to it for this long.
ORPHAN_UPLOAD_GRACE = timedelta(hours=1)


def _last_write(folder: Path) -> datetime:
    """When anything in an upload folder was last written (a streaming file updates its own)."""
    stamps = [folder.stat().st_mtime]
    stamps.extend(p.stat().st_mtime for p in folder.iterdir() if p.is_file())
    return datetime.fromtimestamp(max(stamps), tz=UTC)


def _sweepable(
    db: Session,
    name: str,
    *,
    now: datetime,
    retention: timedelta,
    written: datetime | None,
) -> bool:
    """Whether no import will read the upload of that folder name again (``sweep_uploads``).

    ``written``: when anything of it was last written (None: unknown, deleted as an orphan).
    """
    job = db.execute(
        select(Job.status, Job.finished_at)
        .where(Job.kind == JobKind.import_, Job.params["upload_dir"].as_string() == name)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    if job is None:
        return written is None or now - written > ORPHAN_UPLOAD_GRACE
    if job.status == JobStatus.succeeded:
        return True
    if job.status in (JobStatus.failed, JobStatus.canceled):
        return job.finished_at is None or now - job.finished_at > retention
    return False


def sweep_uploads(
    db: Session, *, uploads_dir: Path, now: datetime, retention: timedelta
) -> list[str]:
    """Delete upload folders no import will read again; the names of those deleted.

    - its import succeeded (the importer deletes them itself, unless it died just after);
    - its import failed or was canceled more than ``retention`` ago (kept till then: a retry
      resumes from the files);
    - no job names it and nothing was written to it for ``ORPHAN_UPLOAD_GRACE`` (a request that
      died while streaming, or whose job was never written).
    A queued or running import's folder is never touched.
    """
    if not uploads_dir.is_dir():
        return []
    deleted = []
    for folder in sorted(p for p in uploads_dir.iterdir() if p.is_dir()):
        try:
            written = _last_write(folder)
        except FileNotFoundError:
            continue  # deleted meanwhile
        if _sweepable(db, folder.name, now=now, retention=retention, written=written):
            discard(folder)
            deleted.append(folder.name)
    return deleted


def sweep_staged(
    db: Session, *, store: ObjectStore, now: datetime, retention: timedelta
) -> list[str]:
    """Delete uploads staged in the item store (``app.items.staging``) that no import will read
    again, by the rules of ``sweep_uploads``; the names of those deleted. An object carries no
    time the sweep reads: an upload's age is the time in its folder's name."""
    folders: dict[str, list[str]] = {}
    for info in store.list(staging.STAGED_PREFIX):
        name = info.key[len(staging.STAGED_PREFIX) :].partition("/")[0]
        folders.setdefault(name, []).append(info.key)
    deleted = []
    for name, keys in sorted(folders.items()):
        written = received_at(name)
        if _sweepable(db, name, now=now, retention=retention, written=written):
            staging.delete_keys(keys)
            deleted.append(name)
    return deleted
