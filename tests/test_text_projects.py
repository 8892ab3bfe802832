"""Text projects (DESIGN 4c): the kind, what fits it, and the shapes of text items everywhere."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.embeddings.schemas import BUILTIN_BACKBONES, backbone_modality
from app.items.models import Item
from app.items.service import item_texts, texts_by_hash
from app.jobs import dispatch
from app.jobs.models import Job
from app.labeling.models import Label
from app.projects.models import Project
from tests.factories import Factory, png_bytes
from tests.test_import import upload

LONG = "The battery lasts two days. " * 20  # 560 characters


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Jobs that would reach a worker; nothing runs."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: calls.append((job_id, kind)))
    return calls


def _label(items: list[Item], labels: list[str]) -> None:
    """Current labels written directly, as the labelling flow leaves them."""
    with unit_of_work() as db:
        for item, label in zip(items, labels, strict=True):
            db.get(Item, item.id).label = label  # type: ignore[union-attr]  # the item exists
            db.add(Label(item_id=item.id, project_id=item.project_id, label=label, source="import"))


def test_kind_is_given_at_creation_listed_and_fixed(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    r = c.post("/api/projects", json={"name": "reviews", "classes": ["pos", "neg"], "kind": "text"})
    assert r.status_code == 201, r.text
    text = r.json()
    assert text["kind"] == "text"
    # A text project's defaults: the linear proxy on minilm_l6, VDCNN as the target.
    assert (text["settings"]["default_proxy"], text["settings"]["backbone"]) == (
        "linear",
        "minilm_l6",
    )
    assert text["settings"]["default_target"] == "vdcnn"
    image = factory.project(eng)
    assert c.get(f"/api/projects/{image.id}").json()["kind"] == "image"
    audio = {"name": "x", "classes": ["a"], "kind": "audio"}
    assert c.post("/api/projects", json=audio).status_code == 422
    r = c.patch(f"/api/projects/{text['id']}", json={"kind": "image"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "a project's kind is fixed when it is made: this is a text project, so it cannot "
        "become image; make a new image project instead"
    )
    assert c.patch(f"/api/projects/{image.id}", json={"kind": "text"}).status_code == 422
    # Sending back the kind it has is no change; new settings keep the text defaults.
    r = c.patch(
        f"/api/projects/{text['id']}", json={"kind": "text", "settings": {"lease_seconds": 60}}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["kind"], r.json()["settings"]["backbone"]) == ("text", "minilm_l6")
    assert r.json()["settings"]["lease_seconds"] == 60
    with unit_of_work(write=False) as db:
        assert db.scalar(select(Project.kind).where(Project.id == text["id"])) == "text"
    schema = factory.anonymous().get("/openapi.json").json()["components"]["schemas"]
    assert set(schema["ProjectKind"]["enum"]) == {"image", "text"}
    assert "kind" in schema["ProjectCreate"]["properties"]
    assert "kind" in schema["ProjectRead"]["required"]


def test_backbones_know_their_modality() -> None:
    assert {n: b.modality for n, b in BUILTIN_BACKBONES.items() if b.modality == "text"} == {
        "minilm_l6": "text",
        "glove_6b_50d": "text",
    }
    assert (BUILTIN_BACKBONES["minilm_l6"].dim, BUILTIN_BACKBONES["glove_6b_50d"].dim) == (384, 50)
    assert backbone_modality("efficientnet_lite0") == "image"


def test_names_of_the_other_kind_are_422_with_the_reason(
    factory: Factory, sent: list[tuple[int, str]]
) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    text = factory.project(eng, kind="text", classes=["pos", "neg"])
    image = factory.project(eng)
    factory.text_items(text, ["a", "b", "c", "d"])
    factory.items(image, 4)

    def round_on(project: Project, proxy: dict[str, Any]) -> Any:
        body = {"strategy": "random", "batch_size": 2, "proxy": proxy}
        return c.post(f"/api/projects/{project.id}/rounds", json=body)

    r = round_on(text, {"arch": "linear", "backbone": "efficientnet_lite0"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "backbone 'efficientnet_lite0' embeds images; this is a text project "
        "(its default backbone is 'minilm_l6')"
    )
    r = round_on(image, {"arch": "linear", "backbone": "glove_6b_50d"})
    assert r.status_code == 422
    assert "backbone 'glove_6b_50d' embeds texts; this is an image project" in r.json()["detail"]
    r = round_on(text, {"arch": "tiny_cnn"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "proxy 'tiny_cnn' does not train on texts; a text project's proxies are fasttext, linear"
    )
    r = round_on(image, {"arch": "fasttext"})
    assert r.status_code == 422
    assert "proxy 'fasttext' does not train on images" in r.json()["detail"]
    r = round_on(text, {"arch": "linear", "backbone": "glove_6b_50d", "dim": 50})
    assert r.status_code == 422
    assert r.json()["detail"] == "dim and word_ngrams are settings of the fasttext proxy only"
    # Settings are checked against the kind when written too.
    r = c.patch(f"/api/projects/{text.id}", json={"settings": {"default_proxy": "preact20"}})
    assert r.status_code == 422
    r = c.patch(f"/api/projects/{image.id}", json={"settings": {"default_target": "vdcnn"}})
    assert r.status_code == 422
    r = c.post(
        "/api/projects",
        json={
            "name": "t2",
            "classes": ["a"],
            "kind": "text",
            "settings": {"backbone": "efficientnet_lite0"},
        },
    )
    assert r.status_code == 422
    assert sent == []
    # What fits: fastText with its settings, and a linear head on a text backbone.
    r = round_on(text, {"arch": "fasttext", "dim": 64, "word_ngrams": 3, "lr": 0.5})
    assert r.status_code == 202, r.text
    assert r.json()["proxy"] == {
        "arch": "fasttext",
        "dim": 64,
        "epochs": 50,
        "lr": 0.5,
        "word_ngrams": 3,
        "backbone": "minilm_l6",
    }
    c.post(f"/api/rounds/{r.json()['id']}/cancel")
    r = round_on(text, {"arch": "linear", "backbone": "glove_6b_50d"})
    assert r.status_code == 202, r.text
    assert r.json()["proxy"]["backbone"] == "glove_6b_50d"


def test_evaluation_targets_fit_the_kind(factory: Factory, sent: list[tuple[int, str]]) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    text = factory.project(eng, kind="text", classes=["pos", "neg"])
    pool = factory.text_items(text, ["good", "bad"])
    test = factory.text_items(text, ["fine", "awful"], split="test")
    _label(pool + test, ["pos", "neg", "pos", "neg"])
    url = f"/api/projects/{text.id}/evaluations"
    r = c.post(url, json={"target": "preact20"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "target 'preact20' does not train on texts; a text project's targets are linear, "
        "vdcnn, vdcnn17, vdcnn29"
    )
    for target in ("vdcnn", "vdcnn29"):
        r = c.post(url, json={"target": target})
        assert r.status_code == 202, r.text
    r = c.post(url, json={})  # the project's default target
    assert r.status_code == 202, r.text
    with unit_of_work(write=False) as db:
        targets = [j.params["target"]["arch"] for j in db.scalars(select(Job).order_by(Job.id))]
    assert targets == ["vdcnn", "vdcnn29", "vdcnn"]
    image = factory.project(eng, classes=["pos", "neg"])
    _label(factory.items(image, 1) + factory.items(image, 1, split="test"), ["pos", "neg"])
    for target in ("vdcnn", "linear"):
        r = c.post(f"/api/projects/{image.id}/evaluations", json={"target": target})
        assert r.status_code == 422
        assert r.json()["detail"].startswith(f"target '{target}' does not train on images")


def test_text_items_in_pages_alone_in_selections_and_in_the_queue(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    project = factory.project(eng, kind="text", classes=["pos", "neg"])
    short, long_item = factory.text_items(project, ["short one", LONG])
    page = c.get(f"/api/projects/{project.id}/items").json()
    assert page["items"] == [
        {
            "id": short.id,
            "name": "t0",
            "split": "pool",
            "width": None,
            "height": None,
            "label": None,
            "text": "short one",
            "text_chars": 9,
        },
        {
            "id": long_item.id,
            "name": "t1",
            "split": "pool",
            "width": None,
            "height": None,
            "label": None,
            "text": LONG[:280],
            "text_chars": 560,
        },
    ]
    one = c.get(f"/api/items/{long_item.id}").json()
    assert (one["text"], one["text_chars"], one["image_url"]) == (LONG, 560, None)
    assert (one["width"], one["height"], one["media_type"]) == (
        None,
        None,
        "text/plain; charset=utf-8",
    )
    r = c.get(f"/api/items/{long_item.id}/image")
    assert r.status_code == 404
    assert r.json()["detail"] == (
        f"item {long_item.id} is a text item: it has no image; its text is at "
        f"GET /api/items/{long_item.id}"
    )
    rnd = factory.round_with_selection(project, [long_item, short])
    selection = c.get(f"/api/rounds/{rnd.id}/selection").json()
    assert [(e["item_id"], e["text"], e["text_chars"], e["image_url"]) for e in selection] == [
        (long_item.id, LONG[:280], 560, None),
        (short.id, "short one", 9, None),
    ]
    queue = c.post(f"/api/projects/{project.id}/queue/next", params={"n": 5}).json()
    assert [(e["item_id"], e["text"], e["text_chars"], e["image_url"]) for e in queue] == [
        (long_item.id, LONG, 560, None),
        (short.id, "short one", 9, None),
    ]


def test_a_worker_reads_texts_by_id_or_by_content_hash(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, kind="text", classes=["pos", "neg"])
    items = factory.text_items(project, ["first", LONG])
    (image,) = factory.items(factory.project(eng), 1)
    with unit_of_work(write=False) as db:
        by_id = item_texts(db, item_ids=[items[1].id, items[0].id, image.id, 10**6])
        assert by_id == {items[0].id: "first", items[1].id: LONG}
        hashes = [items[1].content_hash, image.content_hash]
        assert texts_by_hash(db, project_id=project.id, hashes=hashes) == {
            items[1].content_hash: LONG
        }


def test_image_items_keep_their_shape(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    project = factory.project(eng)
    (item,) = factory.items(project, 1)
    assert set(c.get(f"/api/projects/{project.id}/items").json()["items"][0]) == {
        "id",
        "name",
        "split",
        "width",
        "height",
        "label",
    }
    rnd = factory.round_with_selection(project, [item])
    (entry,) = c.get(f"/api/rounds/{rnd.id}/selection").json()
    assert "text" not in entry
    assert entry["image_url"] == f"/api/items/{item.id}/image"
    (leased,) = c.post(f"/api/projects/{project.id}/queue/next").json()
    assert "text" not in leased
    assert leased["image_url"] == f"/api/items/{item.id}/image"


def test_exports_of_a_text_project_carry_the_text_and_round_trip(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    project = factory.project(eng, kind="text", classes=["pos", "neg"])
    texts = ['=HYPERLINK("x")', "plain, with comma\nand a line", "@SUM(A1)", "unlabelled"]
    items = factory.text_items(project, texts)
    _label(items[:3], ["pos", "neg", "pos"])
    url = f"/api/projects/{project.id}/export"
    rows = list(csv.DictReader(io.StringIO(c.get(url, params={"format": "csv"}).text)))
    assert list(rows[0]) == [
        "item_id",
        "name",
        "split",
        "label",
        "labeled_by",
        "labeled_at",
        "text",
    ]
    assert [(r["label"], r["text"]) for r in rows] == [
        ("pos", texts[0]),
        ("neg", texts[1]),
        ("pos", texts[2]),
    ]
    # For a spreadsheet, formula-looking texts are neutralised as names are.
    safe = list(
        csv.DictReader(io.StringIO(c.get(url, params={"format": "csv", "safe": "true"}).text))
    )
    assert [r["text"] for r in safe] == ["'" + texts[0], texts[1], "'" + texts[2]]
    objs = [json.loads(x) for x in c.get(url, params={"format": "jsonl"}).text.splitlines()]
    assert [(o["item_id"], o["text"]) for o in objs] == [
        (i.id, t) for i, t in zip(items[:3], texts, strict=False)
    ]
    r = c.get(url, params={"format": "imagefolder"})
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        contents = {n: zf.read(n).decode() for n in zf.namelist()}
    assert contents == {
        f"pos/{items[0].id}_t0.txt": texts[0],
        f"neg/{items[1].id}_t1.txt": texts[1],
        f"pos/{items[2].id}_t2.txt": texts[2],
    }
    # That zip imports into another text project with the same labels.
    other = factory.project(eng, kind="text", classes=["pos", "neg"])
    status, job = upload(c, other.id, [("export.zip", r.content)], labels_from_folders="true")
    assert status == 202
    done = factory.wait_job(job["id"])
    assert done.result is not None
    assert done.result["added"] == 3
    with unit_of_work(write=False) as db:
        again = db.execute(
            select(Item.text, Item.label).where(Item.project_id == other.id).order_by(Item.id)
        ).tuples()
        assert list(again) == [(texts[0], "pos"), (texts[1], "neg"), (texts[2], "pos")]


def test_image_project_export_has_no_text(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    project = factory.project(eng)
    status, job = upload(c, project.id, [("cat/a.png", png_bytes(1))], labels_from_folders="true")
    assert status == 202
    assert factory.wait_job(job["id"]).status == "succeeded"
    header = c.get(f"/api/projects/{project.id}/export").text.splitlines()[0]
    assert header == "item_id,name,split,label,labeled_by,labeled_at"
