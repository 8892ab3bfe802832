"""Items: upload (an import job), keyset pages, one item, its image bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from app.auth.deps import DB, CurrentUser, current_user
from app.db import request_slot, unit_of_work
from app.errors import Invalid, NotFound, TooLarge, Unavailable
from app.fields import PathId
from app.http import error_responses
from app.items import import_from, service, staging, storage
from app.items.importer import MEDIA_TYPES
from app.items.models import Item, Split
from app.items.schemas import (
    ClassCount,
    ClassCounts,
    ItemDetail,
    ItemLabelRead,
    ItemPage,
    ItemRead,
    SplitCounts,
    image_url,
)
from app.jobs.schemas import JobRead
from app.projects.deps import ProjectAccess
from app.projects.service import get_access
from app.settings import get_settings
from app.storage import (
    FolderStore,
    ObjectMissing,
    StoreUnavailable,
    image_key,
    is_remote,
    item_store,
    read_image,
)

router = APIRouter(tags=["items"])

# Images never change under a content hash (the ETag): browsers may keep them for a year without
# asking. Private: an image is for the members of its project, not for shared caches.
IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "image files or .zip archives; repeat the field",
                        },
                        "split": {"type": "string", "enum": ["pool", "test"], "default": "pool"},
                        "labels_from_folders": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


def _authorize_engineer(request: Request, project_id: int) -> str:
    """The project's kind, once the caller is one of its engineers (who may import into it)."""
    # A read-only unit of work: on SQLite a write transaction would hold the database's write
    # lock for as long as the client takes to send its upload.
    with unit_of_work(write=False) as db:
        user = current_user(request, db)
        return get_access(db, project_id=project_id, user=user, engineer=True).project.kind


def _start_import(
    request: Request, project_id: int, upload: storage.SpooledUpload, staged: bool
) -> JobRead:
    settings = get_settings()
    options = service.import_options(upload.fields)
    with unit_of_work() as db:
        user = current_user(request, db)
        access = get_access(db, project_id=project_id, user=user, engineer=True)
        job = service.start_import(
            db,
            access=access,
            user=user,
            upload=upload,
            options=options,
            uploads_dir=settings.uploads_dir,
            staged=staged,
        )
        read = JobRead.model_validate(job)
    return read


@router.post(
    "/api/projects/{project_id}/items",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_UPLOAD_BODY,
    responses=error_responses(507),
)
async def upload_items(project_id: PathId, request: Request) -> JobRead:
    """Stream images or zips to disk and start their import job (engineers of the project)."""
    settings = get_settings()
    kind = await run_in_threadpool(_authorize_engineer, request, project_id)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Invalid("bad Content-Length")
        if int(declared) > settings.max_upload_bytes:
            # Refused before a byte of the body is read.
            raise TooLarge(
                f"the upload is larger than the server accepts ({settings.max_upload_mb} MiB)"
            )
    upload = await storage.receive_multipart(
        chunks=request.stream(),
        content_type=request.headers.get("content-type", ""),
        uploads_dir=settings.uploads_dir,
        max_bytes=settings.max_upload_bytes,
        form=service.UPLOAD_FORM,
    )
    staged = False
    try:
        # Refused before its files go anywhere: what no import would take.
        service.import_options(upload.fields)
        service.check_upload(kind, upload)
        if is_remote():
            # Into the item store, where a worker on any machine finds it (app.items.staging).
            await anyio.to_thread.run_sync(_stage, upload, settings.uploads_dir)
            staged = True
        return await run_in_threadpool(_start_import, request, project_id, upload, staged)
    except BaseException:
        # No job will ever read these files.
        storage.discard(upload.dir)
        if staged:
            await anyio.to_thread.run_sync(staging.unstage, upload.dir.name)
        raise


def _stage(upload: storage.SpooledUpload, uploads_dir: Path) -> None:
    """Stage an upload in the item store; a store that does not answer is a 503 with its
    reason (nothing of the upload is left in it)."""
    try:
        staging.stage_upload(upload, uploads_dir)
    except StoreUnavailable as exc:
        raise Unavailable(f"the upload could not be stored: {exc}") from None


def _start_import_from(request: Request, project_id: int, body: import_from.ImportFrom) -> JobRead:
    # Who may ask is checked before the store is: a stranger learns nothing about a bucket.
    _authorize_engineer(request, project_id)
    import_from.check_readable(body)
    with unit_of_work() as db:
        user = current_user(request, db)
        access = get_access(db, project_id=project_id, user=user, engineer=True)
        job = import_from.start_import_from(db, access=access, user=user, body=body)
        return JobRead.model_validate(job)


@router.post(
    "/api/projects/{project_id}/items/import-from",
    status_code=status.HTTP_202_ACCEPTED,
)
async def import_items_from(
    project_id: PathId, body: import_from.ImportFrom, request: Request
) -> JobRead:
    """Import objects of an S3-compatible bucket by reference: every object under ``source``,
    or those ``manifest`` lists (engineers of the project). Their bytes stay in the bucket:
    workers read, check and register them; the job's result is an upload's. A source the
    service cannot read is 422 at once, with the reason."""
    return await run_in_threadpool(_start_import_from, request, project_id, body)


@router.get("/api/projects/{project_id}/items")
def list_items(
    access: ProjectAccess,
    db: DB,
    status: Literal["labeled", "unlabeled"] | None = None,
    split: Split | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.DEFAULT_PAGE,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> ItemPage:
    """Keyset pages of the project's items in id order (members)."""
    items, cursor = service.list_items(
        db, project_id=access.project.id, status=status, split=split, limit=limit, after=after
    )
    return ItemPage(items=[_page_item(i) for i in items], next=cursor)


def _page_item(item: Item) -> ItemRead:
    """An item of a page: a text item with the first characters of its text (the query cut)."""
    return ItemRead(**_item_fields(item, text=item.text_preview))


def _item_fields(item: Item, *, text: str | None) -> dict[str, Any]:
    """The fields every item answer has, with the text (or its preview) given."""
    return {
        "id": item.id,
        "name": item.name,
        "split": item.split,
        "width": item.width,
        "height": item.height,
        "label": item.label,
        "text": text,
        "text_chars": item.text_chars,
    }


@router.get("/api/projects/{project_id}/class-counts")
def class_counts(access: ProjectAccess, db: DB) -> ClassCounts:
    """Items per current label and split, in the project's class order (members)."""
    counts, unlabeled = service.class_counts(
        db, project_id=access.project.id, classes=access.project.classes
    )
    return ClassCounts(
        counts=[ClassCount(label=label, **n) for label, n in counts],
        unlabeled=SplitCounts(**unlabeled),
    )


@router.get("/api/items/{item_id}")
def get_item(item_id: PathId, user: CurrentUser, db: DB) -> ItemDetail:
    """One item with its live label history, newest first (members of its project)."""
    item, _ = service.get_item(db, item_id=item_id, user=user)
    labels = [
        ItemLabelRead(
            id=label.id,
            item_id=label.item_id,
            label=label.label,
            user=username,
            source=label.source,
            created_at=label.created_at,
        )
        for label, username in service.item_labels(db, item_id=item.id)
    ]
    return ItemDetail(
        **_item_fields(item, text=item.text if item.is_text else None),
        project_id=item.project_id,
        media_type=item.media_type,
        content_hash=item.content_hash,
        created_at=item.created_at,
        image_url=None if item.is_text else image_url(item.id),
        labels=labels,
    )


@router.get(
    "/api/items/{item_id}/image",
    response_class=Response,
    responses={
        200: {
            "description": "the image's bytes, in the format it was uploaded in",
            # Each format by name, with a binary body: a client generator keeps the route and
            # gives it a bytes result (a wildcard type with no schema made some drop it).
            "content": {
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in MEDIA_TYPES.values()
            },
        },
        304: {"description": "not modified"},
    },
)
async def get_image(item_id: PathId, request: Request) -> Response:
    """The image bytes with a strong ETag (the content hash); 304 when the client has them.

    The access check is a short read with a connection slot of its own, given back before the
    body is sent: a slow client downloading an image never holds a database connection.
    """
    async with request_slot(write=False):
        content_hash, media_type, source = await run_in_threadpool(_image_of, request, item_id)
    etag = f'"{content_hash}"'
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    store = item_store()
    if source is None and isinstance(store, FolderStore):
        path = store.path(image_key(content_hash))
        try:
            # One stat, which FileResponse reuses, tells a missing file apart without a second
            # look.
            stat = await anyio.Path(path).stat()
        except FileNotFoundError:
            raise NotFound("the image file of this item is missing") from None
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)
    try:
        # From the bucket (through this server's cache for the item store's own, content-keyed
        # bytes; a referenced object fresh from its bucket, so one deleted there is gone here).
        data = await run_in_threadpool(read_image, content_hash, source, fresh=True)
    except ObjectMissing as exc:
        raise NotFound(f"the image of item {item_id} is gone: {exc}") from None
    except StoreUnavailable as exc:
        raise Unavailable(f"the image store did not answer: {exc}") from None
    return Response(data, media_type=media_type, headers=headers)


def _image_of(request: Request, item_id: int) -> tuple[str, str, str | None]:
    """The content hash, media type and source (DESIGN 4d) of an item the caller may see (401,
    404 otherwise)."""
    with unit_of_work(write=False) as db:
        user = current_user(request, db)
        item, _ = service.get_item(db, item_id=item_id, user=user)
        if item.is_text:
            raise NotFound(
                f"item {item_id} is a text item: it has no image; its text is at "
                f"GET /api/items/{item_id}"
            )
        return item.content_hash, item.media_type, item.source


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/ prefixes are ignored, * matches anything."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)
