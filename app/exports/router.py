"""Label exports: CSV, JSON lines, or a zip of class folders, streamed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.exports.schemas import EXTENSIONS, MEDIA_TYPES, ExportFormat
from app.exports.service import export_chunks
from app.projects.deps import EngineerAccess
from app.projects.models import ProjectKind

router = APIRouter(tags=["exports"])


@router.get(
    "/api/projects/{project_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
)
def export_labels(
    access: EngineerAccess,
    fmt: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.csv,
    safe: Annotated[
        bool,
        Query(
            description="CSV for a spreadsheet: a cell starting with = + - @ (or tab, CR) gets "
            "a leading ' so it is not run as a formula; off by default, which round-trips"
        ),
    ] = False,
) -> StreamingResponse:
    """Every labelled item with its label, author and time (engineers of the project); a text
    project's adds each item's text (imagefolder: a zip of ``<class>/<file>.txt``)."""
    filename = f"project-{access.project.id}-labels.{EXTENSIONS[fmt]}"
    return StreamingResponse(
        export_chunks(
            project_id=access.project.id,
            fmt=fmt,
            safe=safe,
            texts=access.project.kind == ProjectKind.text,
        ),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
