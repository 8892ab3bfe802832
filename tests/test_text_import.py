"""Imports into text projects (DESIGN 4c): CSV, JSONL, .txt and zips, every refusal, streaming."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from app.auth.models import User
from app.db import unit_of_work
from app.items import import_job, text_import
from app.items.models import TEXT_MEDIA_TYPE, Item
from app.labeling.models import Label
from app.projects.models import Project
from app.settings import Settings, get_settings
from tests.conftest import BACKEND
from tests.factories import Factory, png_bytes
from tests.test_import import upload, zip_bytes


def text_project(factory: Factory, classes: list[str] | None = None) -> tuple[Project, User]:
    """A text project and its engineer."""
    eng = factory.user("engineer")
    return factory.project(eng, classes=classes or ["pos", "neg"], kind="text"), eng


def limited(
    factory: Factory, monkeypatch: pytest.MonkeyPatch, max_chars: int
) -> tuple[Project, TestClient]:
    """A text project under ``SVP_MAX_TEXT_CHARS=max_chars``, and its engineer's client."""
    monkeypatch.setenv("SVP_MAX_TEXT_CHARS", str(max_chars))
    get_settings.cache_clear()
    project, eng = text_project(factory)
    return project, factory.client(eng)


def imported(
    factory: Factory, c: TestClient, project: Project, files: list[tuple[str, bytes]], **fields: str
) -> dict[str, Any]:
    """Upload, wait for the job to succeed, and return its result."""
    status, job = upload(c, project.id, files, **fields)
    assert status == 202, job
    done = factory.wait_job(job["id"], timeout=600)
    assert done.status == "succeeded", done.error
    assert done.result is not None
    return done.result


def text_rows(project_id: int) -> list[tuple[str, str | None, int | None, str | None]]:
    """(name, text, text_chars, label) of the project's items in id order."""
    with unit_of_work(write=False) as db:
        rows = db.execute(
            select(Item.name, Item.text, Item.text_chars, Item.label)
            .where(Item.project_id == project_id)
            .order_by(Item.id)
        )
        return [tuple(r) for r in rows.tuples()]  # type: ignore[misc]  # four columns


def csv_bytes(header: list[str], rows: list[list[str]], bom: bool = False) -> bytes:
    """A CSV file as Python's writer quotes it."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode()


def test_a_csv_imports_texts_names_labels_and_formulas_verbatim(factory: Factory) -> None:
    project, eng = text_project(factory)
    c = factory.client(eng)
    data = csv_bytes(
        ["Text", "name", "label", "extra"],
        [
            ["great phone", "r1", "pos", "ignored"],
            ['line one\nline two, with "quotes"', "", "neg", ""],
            ["=1+1", "", "", ""],
            ["+cmd|' /C calc'!A0", "", " pos ", ""],
            ["-2", "", "", ""],
            ["@SUM(A1)", "", "", ""],
            ["naïve café ☕", "", "", ""],
        ],
        bom=True,
    )
    result = imported(factory, c, project, [("reviews.csv", data)])
    assert (result["added"], result["duplicates"], result["rejected"]) == (7, 0, [])
    assert (result["total"], result["processed"], result["labeled"]) == (7, 7, 3)
    # A row without a name is <file>:<line>, the line its record starts on (line 3 holds two).
    assert text_rows(project.id) == [
        ("r1", "great phone", 11, "pos"),
        ("reviews.csv:3", 'line one\nline two, with "quotes"', 32, "neg"),
        ("reviews.csv:5", "=1+1", 4, None),
        ("reviews.csv:6", "+cmd|' /C calc'!A0", 18, "pos"),
        ("reviews.csv:7", "-2", 2, None),
        ("reviews.csv:8", "@SUM(A1)", 8, None),
        ("reviews.csv:9", "naïve café ☕", 12, None),
    ]
    with unit_of_work(write=False) as db:
        item = db.scalars(select(Item).where(Item.project_id == project.id)).first()
        assert item is not None
        assert (item.media_type, item.width, item.height) == (TEXT_MEDIA_TYPE, None, None)
        sources = set(db.scalars(select(Label.source).where(Label.project_id == project.id)))
        assert sources == {"import"}


def test_every_bad_row_is_refused_alone_with_its_reason(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, c = limited(factory, monkeypatch, 20)
    data = csv_bytes(
        ["text", "label"],
        [["ok one", ""], ["", ""], ["   ", ""], ["a\x00b", ""], ["x" * 21, ""], ["ok", "maybe"]],
    )
    lines = [
        json.dumps({"text": "ok two", "name": "j1", "label": "neg"}),
        "",
        json.dumps({"text": "", "name": "j-empty"}),
        json.dumps({"text": "y" * 21}),
        json.dumps({"text": "nul\u0000"}),
        json.dumps({"text": "fine", "label": "other"}),
        json.dumps({"text": "\ud800 lone"}),
        "{not json",
        "[1, 2]",
        json.dumps({"text": 5}),
        json.dumps({"text": "t", "name": 7}),
        json.dumps({"text": "t", "label": [1]}),
    ]
    jsonl = ("\n".join(lines) + "\n").encode()
    result = imported(factory, c, project, [("a.csv", data), ("b.jsonl", jsonl)])
    assert result["added"] == 2
    too_long = "21 characters is longer than SVP_MAX_TEXT_CHARS allows (20)"
    assert [(r["name"], r["reason"]) for r in result["rejected"]] == [
        ("a.csv:3", "empty text"),
        ("a.csv:4", "empty text"),
        ("a.csv:5", "the text contains a NUL character"),
        ("a.csv:6", too_long),
        ("a.csv:7", "label 'maybe' is not a class of the project"),
        ("j-empty", "empty text"),
        ("b.jsonl:4", too_long),
        ("b.jsonl:5", "the text contains a NUL character"),
        ("b.jsonl:6", "label 'other' is not a class of the project"),
        ("b.jsonl:7", "the text is not valid Unicode (a lone surrogate)"),
        (
            "b.jsonl:8",
            "not a JSON object: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        ("b.jsonl:9", "not a JSON object"),
        ("b.jsonl:10", "no 'text' string in the object"),
        ("b.jsonl:11", "'name' must be a string"),
        ("b.jsonl:12", "'label' must be a string"),
    ]
    assert result["rejected_count"] == 15
    assert [(n, t, lab) for n, t, _, lab in text_rows(project.id)] == [
        ("a.csv:2", "ok one", None),
        ("j1", "ok two", "neg"),
    ]


def test_a_file_that_is_not_utf8_is_refused_whole(factory: Factory) -> None:
    project, eng = text_project(factory)
    c = factory.client(eng)
    # Valid rows first: the bad byte is far into the file, past what one read decodes.
    good_rows = [[f"row {i}"] for i in range(5000)]
    latin1 = csv_bytes(["text"], good_rows) + "café\r\n".encode("latin-1")
    result = imported(
        factory,
        c,
        project,
        [
            ("latin1.csv", latin1),
            ("latin1.txt", "déjà".encode("latin-1")),
            ("bad.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n'),
            ("fine.csv", csv_bytes(["text"], [["kept"]])),
        ],
    )
    reason = "not UTF-8 text (invalid continuation byte); the whole file is refused: "
    assert [(r["name"], r["reason"]) for r in result["rejected"]] == [
        ("latin1.csv", reason + "save it as UTF-8"),
        ("latin1.txt", "not UTF-8 text (invalid continuation byte); save it as UTF-8"),
        (
            "bad.jsonl",
            "not UTF-8 text (invalid start byte); the whole file is refused: save it as UTF-8",
        ),
    ]
    assert [t for _, t, _, _ in text_rows(project.id)] == ["kept"]


def test_a_csv_without_a_text_column_or_empty_is_refused_whole(factory: Factory) -> None:
    project, eng = text_project(factory)
    c = factory.client(eng)
    result = imported(
        factory,
        c,
        project,
        [("no-text.csv", b"body,label\nhello,pos\n"), ("empty.csv", b""), ("ok.txt", b"hi")],
    )
    assert result["added"] == 1
    assert [r["name"] for r in result["rejected"]] == ["no-text.csv", "empty.csv"]
    assert "no 'text' column" in result["rejected"][0]["reason"]
    assert "empty CSV" in result["rejected"][1]["reason"]


def test_duplicates_are_counted_within_a_batch_across_batches_and_uploads(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_import, "TEXT_BATCH_ROWS", 3)
    project, eng = text_project(factory)
    c = factory.client(eng)
    texts = ["a", "b", "a", "c", "d", "b", "a", "e"]  # batches: [a b a] [c d b] [a e]
    result = imported(factory, c, project, [("t.csv", csv_bytes(["text"], [[t] for t in texts]))])
    assert (result["added"], result["duplicates"]) == (5, 3)
    again = imported(factory, c, project, [("u.jsonl", b'{"text": "e"}\n{"text": "f"}\n')])
    assert (again["added"], again["duplicates"]) == (1, 1)
    assert [t for _, t, _, _ in text_rows(project.id)] == ["a", "b", "c", "d", "e", "f"]


def test_txt_files_and_zips_with_folder_labels(factory: Factory) -> None:
    project, eng = text_project(factory)
    c = factory.client(eng)
    archive = zip_bytes(
        {
            "pos/": b"",
            "pos/1.txt": b"loved it\n",
            "neg/2.TXT": b"\xef\xbb\xbfhated it",
            "meh/3.txt": b"unsure",
            "4.txt": b"no folder",
            "more/rows.csv": csv_bytes(["text", "label"], [["from csv", "neg"]]),
            "more/rows.jsonl": b'{"text": "from jsonl"}\n',
            "pos/photo.png": png_bytes(1),
            "pos/notes.md": b"# title",
            "inner.zip": zip_bytes({"x.txt": b"x"}),
        }
    )
    result = imported(factory, c, project, [("texts.zip", archive)], labels_from_folders="true")
    assert [(r["name"], r["reason"]) for r in result["rejected"]] == [
        ("meh/3.txt", "folder 'meh' is not a class of the project"),
        ("4.txt", "no folder to take the class from"),
        (
            "pos/photo.png",
            "an image: this is a text project; send .csv, .jsonl or .txt files, or a .zip of them",
        ),
        (
            "pos/notes.md",
            "not a file a text project imports: send .csv, .jsonl or .txt files, or a .zip of them",
        ),
        ("inner.zip", "nested archive (zip inside an upload's zip) is not imported"),
    ]
    assert [(n, t, lab) for n, t, _, lab in text_rows(project.id)] == [
        ("pos/1.txt", "loved it\n", "pos"),
        ("neg/2.TXT", "hated it", "neg"),
        ("more/rows.csv:2", "from csv", "neg"),
        ("more/rows.jsonl:1", "from jsonl", None),
    ]
    # Without folder labels a .txt upload is one unlabelled item named by its file.
    single = imported(factory, c, project, [("note.txt", b"plain note")])
    assert single["added"] == 1
    assert text_rows(project.id)[-1] == ("note.txt", "plain note", 10, None)


def test_the_wrong_kind_of_file_imports_nothing_and_says_why(factory: Factory) -> None:
    text, eng = text_project(factory)
    image = factory.project(eng)
    c = factory.client(eng)
    status, body = upload(c, text.id, [("a.png", png_bytes(1)), ("b.JPG", png_bytes(2))])
    assert status == 422
    assert body["detail"].startswith("this is a text project and the upload holds images only")
    status, body = upload(c, image.id, [("a.csv", b"text\nx\n"), ("b.txt", b"y")])
    assert status == 422
    assert "texts are imported into a project made with kind 'text'" in body["detail"]
    # Inside a zip, each entry of the other kind is refused in the job, the rest imports.
    result = imported(
        factory,
        c,
        image,
        [("mixed.zip", zip_bytes({"a.csv": b"text\nx\n", "b.png": png_bytes(3)}))],
    )
    assert result["added"] == 1
    assert result["rejected"] == [
        {
            "name": "a.csv",
            "reason": "not an image but a text file: texts go in a project of kind 'text'",
        }
    ]
    assert text_rows(text.id) == []


def test_the_csv_field_size_limit_is_raised_to_the_text_limit_only(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, c = limited(factory, monkeypatch, 200000)
    # Longer than Python's default field limit (131,072), quotes doubled inside the field.
    long_text = ('say "hi" ' * 20_000)[:180_000]
    over = "z" * 200_001
    data = csv_bytes(["text"], [[long_text], [over], ["after"]])
    result = imported(factory, c, project, [("long.csv", data)])
    assert result["added"] == 2
    assert [(r["name"], r["reason"]) for r in result["rejected"]] == [
        ("long.csv:3", "200001 characters is longer than SVP_MAX_TEXT_CHARS allows (200000)")
    ]
    assert [t for _, t, _, _ in text_rows(project.id)] == [long_text, "after"]
    limit = csv.field_size_limit()
    assert 200_000 < limit < 1_000_000 < sys.maxsize


def test_a_line_longer_than_any_text_is_skipped_unread(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, c = limited(factory, monkeypatch, 100)
    huge = "w" * 300_000  # past the line bound (2 x 100 + 64 Ki characters)
    data = f"text\nfirst\n{huge}\nlast\n".encode()
    jsonl = f'{{"text": "{huge}"}}\n{{"text": "j"}}\n'.encode()
    result = imported(factory, c, project, [("big.csv", data), ("big.jsonl", jsonl)])
    assert [t for _, t, _, _ in text_rows(project.id)] == ["first", "last", "j"]
    assert [r["name"] for r in result["rejected"]] == ["big.csv:3", "big.jsonl:1"]
    assert all(r["reason"].startswith("a line longer than 65736") for r in result["rejected"])


def test_a_large_import_refreshes_the_planners_statistics(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if BACKEND != "postgres":
        pytest.skip("statistics for the planner are PostgreSQL's (SQLite's stay as they were)")
    monkeypatch.setattr(import_job, "ANALYZE_AFTER_ROWS", 3)
    project, eng = text_project(factory)
    c = factory.client(eng)

    def planned_rows() -> float:
        with unit_of_work(write=False) as db:
            return float(db.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'items'")))

    imported(factory, c, project, [("two.csv", b"text\na\nb\n")])
    assert planned_rows() <= 0  # below the threshold: never analysed since the truncate
    imported(factory, c, project, [("three.csv", b"text\nc\nd\ne\n")])
    assert planned_rows() == 5


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_a_large_csv_streams_without_the_memory_growing_with_it(
    factory: Factory, settings: Settings, tmp_path: Path
) -> None:
    rows = int(os.environ.get("SVP_TEXT_IMPORT_ROWS", "200000"))
    project, eng = text_project(factory)
    c = factory.client(eng)
    # ~300 characters a row: a 60 MB file at 200,000 rows.
    filler = "lorem ipsum dolor sit amet " * 11
    data = csv_bytes(
        ["text", "label"], [[f"{i} {filler}", "pos" if i % 2 else ""] for i in range(rows)]
    )
    status, job = upload(c, project.id, [("big.csv", data)])
    assert status == 202
    del data
    baseline = _rss_kib()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    done = factory.wait_job(job["id"], timeout=900)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    assert done.status == "succeeded", done.error
    assert done.result is not None
    assert (done.result["added"], done.result["labeled"]) == (rows, rows // 2)
    growth_mib = (peak[0] - baseline) / 1024
    size_mib = rows * 310 / (1 << 20)
    print(
        f"\n{rows} rows ({size_mib:.0f} MiB of CSV) imported in {seconds:.1f}s "
        f"({rows / seconds:.0f} rows/s); RSS {baseline / 1024:.0f} MiB, peak growth "
        f"{growth_mib:.1f} MiB"
    )
    # Bounded by a batch (2,000 rows, 8 M characters) and the database's caches, not the file.
    assert growth_mib < max(48.0, size_mib / 4)
