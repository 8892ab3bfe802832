"""Label exports in CSV, JSON lines and class folders, with their refusals."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from app import db as app_db
from app.auth.models import User
from app.db import unit_of_work, utcnow
from app.exports import service as export_service
from app.items.models import Item
from app.labeling.models import Label
from app.projects.models import Project
from tests.factories import Factory, get_watching_slots, png_bytes


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _labelled_project(factory: Factory) -> tuple[Project, User, User, list[Item], datetime]:
    """Three items labelled by import, one relabelled by an annotator, one unlabelled."""
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, classes=["cat", "dog"], members={ann: "annotator"})
    archive = _zip(
        {
            "cat/a,1.png": png_bytes(1),
            "cat/b.png": png_bytes(2),
            "dog/c.png": png_bytes(3),
        }
    )
    c = factory.client(eng)
    r = c.post(
        f"/api/projects/{project.id}/items",
        files=[("file", ("set.zip", archive, "application/zip"))],
        data={"labels_from_folders": "true"},
    )
    assert r.status_code == 202
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    r = c.post(
        f"/api/projects/{project.id}/items",
        files=[("file", ("loose.png", png_bytes(4), "image/png"))],
    )
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    with unit_of_work(write=False) as db:
        items = list(
            db.scalars(select(Item).where(Item.project_id == project.id).order_by(Item.id))
        )
    # The annotator relabels b.png as dog; a later label of theirs was undone and must not count.
    when = utcnow() + timedelta(seconds=5)
    relabel = Label(
        item_id=items[1].id, project_id=project.id, user_id=ann.id, label="dog", created_at=when
    )
    undone = Label(
        item_id=items[1].id,
        project_id=project.id,
        user_id=eng.id,
        label="cat",
        created_at=when + timedelta(seconds=1),
        undone_at=when + timedelta(seconds=2),
    )
    assert factory.label_history(relabel, undone) == "dog"
    return project, eng, ann, items, when


def test_csv_export(factory: Factory) -> None:
    project, eng, ann, items, when = _labelled_project(factory)
    r = factory.client(eng).get(f"/api/projects/{project.id}/export", params={"format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == (
        f'attachment; filename="project-{project.id}-labels.csv"'
    )
    lines = r.text.splitlines()
    assert lines[0] == "item_id,name,split,label,labeled_by,labeled_at"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [
        (int(x["item_id"]), x["name"], x["split"], x["label"], x["labeled_by"]) for x in rows
    ] == [
        (items[0].id, "cat/a,1.png", "pool", "cat", eng.username),
        (items[1].id, "cat/b.png", "pool", "dog", ann.username),
        (items[2].id, "dog/c.png", "pool", "dog", eng.username),
    ]
    assert datetime.fromisoformat(rows[1]["labeled_at"]) == when
    assert all(datetime.fromisoformat(x["labeled_at"]).tzinfo is not None for x in rows)


def test_jsonl_export(factory: Factory) -> None:
    project, eng, ann, items, when = _labelled_project(factory)
    r = factory.client(eng).get(f"/api/projects/{project.id}/export", params={"format": "jsonl"})
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith('-labels.jsonl"')
    objs = [json.loads(line) for line in r.text.splitlines()]
    assert [list(o) for o in objs] == [
        ["item_id", "name", "split", "label", "labeled_by", "labeled_at"]
    ] * 3
    assert [(o["item_id"], o["label"], o["labeled_by"]) for o in objs] == [
        (items[0].id, "cat", eng.username),
        (items[1].id, "dog", ann.username),
        (items[2].id, "dog", eng.username),
    ]
    assert datetime.fromisoformat(objs[1]["labeled_at"]) == when


def test_imagefolder_export(factory: Factory) -> None:
    project, eng, _, items, _ = _labelled_project(factory)
    r = factory.client(eng).get(
        f"/api/projects/{project.id}/export", params={"format": "imagefolder"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"].endswith('-labels.zip"')
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.testzip() is None
        contents = {n: zf.read(n) for n in zf.namelist()}
    assert contents == {
        f"cat/{items[0].id}_a_1.png": png_bytes(1),
        f"dog/{items[1].id}_b.png": png_bytes(2),
        f"dog/{items[2].id}_c.png": png_bytes(3),
    }


def test_archive_names_are_safe() -> None:
    row = export_service.ExportRow(
        item_id=7,
        name="../../etc/pass wd",
        split="pool",
        label="..",
        labeled_by=None,
        labeled_at=None,
        content_hash="0" * 64,
    )
    assert export_service.archive_name(row) == "class/7_pass_wd"


def test_export_streams_in_batches(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    items = factory.items(project, 25)
    with unit_of_work() as db:
        for item in items:
            db.get(Item, item.id).label = "cat"  # type: ignore[union-attr]
    batches = list(export_service.labeled_batches(project_id=project.id, batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    chunks = list(export_service.csv_chunks(project_id=project.id))
    assert len(chunks) == 2  # the header, then one chunk per batch of 1000
    r = factory.client(eng).get(f"/api/projects/{project.id}/export")
    assert len(r.text.splitlines()) == 26
    # Labels without a history row (set directly) export with empty author and time.
    assert r.text.splitlines()[1].endswith(",cat,,")


def test_export_refusals(factory: Factory) -> None:
    eng, ann, stranger = (
        factory.user("engineer"),
        factory.user("annotator"),
        factory.user("engineer"),
    )
    project = factory.project(eng, members={ann: "annotator"})
    url = f"/api/projects/{project.id}/export"
    assert factory.client(eng).get(url, params={"format": "xml"}).status_code == 422
    assert factory.client(ann).get(url).status_code == 403
    assert factory.client(stranger).get(url).status_code == 404
    assert factory.anonymous().get(url).status_code == 401
    r = factory.client(factory.user("admin")).get(url)
    assert r.status_code == 200
    assert r.text == "item_id,name,split,label,labeled_by,labeled_at\n"


def test_csv_export_neutralises_formulas_only_when_asked(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["cat"])
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM.png", "plain.png"]
    with unit_of_work() as db:
        rows = [
            Item(
                project_id=project.id,
                content_hash=f"{i:064x}",
                name=name,
                media_type="image/png",
                width=8,
                height=8,
            )
            for i, name in enumerate(names)
        ]
        db.add_all(rows)
        db.flush()
        ids = [r.id for r in rows]
    c = factory.client(eng)
    for i, iid in enumerate(ids):
        r = c.post("/api/labels", json={"item_id": iid, "label": "cat", "key": f"f{i}"})
        assert r.status_code == 201, r.text

    def exported(**params: str) -> list[str]:
        r = c.get(f"/api/projects/{project.id}/export", params={"format": "csv", **params})
        assert r.status_code == 200
        return [x["name"] for x in csv.DictReader(io.StringIO(r.text))]

    # The default round-trips: every name exactly as stored.
    assert exported() == names
    assert exported(safe="false") == names
    assert exported(safe="true") == [
        "'=HYPERLINK(1).png",
        "'+1.png",
        "'-2.png",
        "'@SUM.png",
        "plain.png",
    ]


def test_export_body_is_sent_without_holding_a_request_slot(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The export streams from a read of its own; the request's slot (its unit of work, done
    # when the route returns) must not stay taken while the body goes out (#9 review).
    project, eng, _, _, _ = _labelled_project(factory)
    authorization = factory.token_client(eng).headers["Authorization"]
    monkeypatch.setattr(app_db, "SQLITE_POOL", (1, app_db.UNSLOTTED_CONNECTIONS))
    monkeypatch.setattr(app_db, "POSTGRES_POOL", (1, app_db.UNSLOTTED_CONNECTIONS))
    seen, body = get_watching_slots(
        factory.app,
        f"/api/projects/{project.id}/export",
        authorization=authorization,
        query=b"format=csv",
    )
    assert body.decode().startswith("item_id,name,split,label,labeled_by,labeled_at")
    assert ("http.response.start", False) in seen, seen
    assert all(not locked for _, locked in seen), seen
