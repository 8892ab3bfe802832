"""Shapes of label exports."""

from __future__ import annotations

from enum import StrEnum


class ExportFormat(StrEnum):
    """What an export is written as."""

    csv = "csv"
    jsonl = "jsonl"
    imagefolder = "imagefolder"


# The columns of the CSV export and the keys of each JSONL object, in this order.
EXPORT_FIELDS = ("item_id", "name", "split", "label", "labeled_by", "labeled_at")
# A text project's export adds each item's whole text, last (DESIGN 4c).
TEXT_EXPORT_FIELDS = (*EXPORT_FIELDS, "text")

MEDIA_TYPES = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.jsonl: "application/x-ndjson",
    ExportFormat.imagefolder: "application/zip",
}

EXTENSIONS = {
    ExportFormat.csv: "csv",
    ExportFormat.jsonl: "jsonl",
    ExportFormat.imagefolder: "zip",
}
