"""Item pages, one item with its label history, and the image bytes with caching headers."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import db as app_db
from app.db import unit_of_work, utcnow
from app.items.models import Item
from app.labeling.models import Label
from app.projects.models import Project
from tests.factories import Factory, get_watching_slots, png_bytes


def _label(item_ids: list[int], label: str = "cat") -> None:
    with unit_of_work() as db:
        for iid in item_ids:
            item = db.get(Item, iid)
            assert item is not None
            item.label = label


def _all_pages(c: TestClient, project: Project, **params: object) -> tuple[list[int], int]:
    """Walk every page; returns the ids in order and how many pages it took."""
    ids: list[int] = []
    pages = 0
    after = None
    while True:
        query: dict[str, object] = dict(params)
        if after is not None:
            query["after"] = after
        r = c.get(f"/api/projects/{project.id}/items", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        ids += [i["id"] for i in body["items"]]
        after = body["next"]
        if after is None:
            return ids, pages
        assert pages < 100


def test_keyset_pages_with_filters(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    pool = factory.items(project, 7)
    test = factory.items(project, 3, split="test")
    other = factory.items(factory.project(eng), 4)
    _label([pool[1].id, pool[4].id, test[0].id])
    c = factory.client(ann)

    r = c.get(f"/api/projects/{project.id}/items", params={"limit": 4})
    body = r.json()
    assert [i["id"] for i in body["items"]] == [i.id for i in pool[:4]]
    assert body["items"][1] == {
        "id": pool[1].id,
        "name": pool[1].name,
        "split": "pool",
        "width": 16,
        "height": 16,
        "label": "cat",
    }
    assert isinstance(body["next"], str)

    all_ids, pages = _all_pages(c, project, limit=4)
    assert all_ids == [i.id for i in pool + test]
    assert pages == 3
    assert not set(all_ids) & {i.id for i in other}
    # Exactly a page's worth: the last full page already says there is no next.
    assert _all_pages(c, project, limit=10) == ([i.id for i in pool + test], 1)

    assert _all_pages(c, project, split="test", limit=2)[0] == [i.id for i in test]
    assert _all_pages(c, project, status="labeled", limit=2)[0] == [
        pool[1].id,
        pool[4].id,
        test[0].id,
    ]
    unlabeled, pages = _all_pages(c, project, status="unlabeled", split="pool", limit=2)
    assert unlabeled == [i.id for i in pool if i.id not in (pool[1].id, pool[4].id)]
    assert pages == 3


def test_page_limits_and_bad_cursors(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 2)
    c = factory.client(eng)
    url = f"/api/projects/{project.id}/items"
    assert len(c.get(url).json()["items"]) == 2
    assert c.get(url, params={"limit": 500}).status_code == 200
    assert c.get(url, params={"limit": 501}).status_code == 422
    assert c.get(url, params={"limit": 0}).status_code == 422
    assert c.get(url, params={"status": "done"}).status_code == 422
    assert c.get(url, params={"split": "train"}).status_code == 422
    for bad in ("not a cursor!", "%%%", base64.urlsafe_b64encode(b"abc").decode(), "A" * 65):
        assert c.get(url, params={"after": bad}).status_code == 422, bad
    assert c.get(url, params={"after": ""}).status_code == 422


def test_item_pages_need_membership(factory: Factory) -> None:
    eng, stranger = factory.user("engineer"), factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 1)
    url = f"/api/projects/{project.id}/items"
    assert factory.anonymous().get(url).status_code == 401
    assert factory.client(stranger).get(url).status_code == 404
    assert factory.client(factory.user("admin")).get(url).status_code == 200
    assert factory.token_client(eng).get(url).status_code == 200


def test_item_with_its_label_history(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    (item,) = factory.items(project, 1)
    now = utcnow()
    first = Label(item_id=item.id, project_id=project.id, user_id=ann.id, label="cat")
    undone = Label(
        item_id=item.id, project_id=project.id, user_id=ann.id, label="bird", undone_at=now
    )
    second = Label(
        item_id=item.id,
        project_id=project.id,
        user_id=eng.id,
        label="dog",
        created_at=now + timedelta(seconds=1),
    )
    assert factory.label_history(first, undone, second) == "dog"
    ids = (first.id, second.id)
    r = factory.client(ann).get(f"/api/items/{item.id}")
    assert r.status_code == 200
    body = r.json()
    assert body["label"] == "dog"
    assert body["name"] == item.name
    assert body["image_url"] == f"/api/items/{item.id}/image"
    assert [(lb["id"], lb["label"], lb["user"], lb["item_id"]) for lb in body["labels"]] == [
        (ids[1], "dog", eng.username, item.id),
        (ids[0], "cat", ann.username, item.id),
    ]


def test_items_of_other_projects_are_not_found(factory: Factory) -> None:
    eng, stranger = factory.user("engineer"), factory.user("engineer")
    project = factory.project(eng)
    (item,) = factory.items(project, 1)
    mine = factory.project(stranger)
    c = factory.client(stranger)
    assert c.get(f"/api/items/{item.id}").status_code == 404
    assert c.get(f"/api/items/{item.id}/image").status_code == 404
    assert c.get("/api/items/987654").status_code == 404
    assert factory.anonymous().get(f"/api/items/{item.id}").status_code == 401
    # Being a member elsewhere does not help.
    assert c.get(f"/api/projects/{mine.id}/items").json()["items"] == []


def test_image_bytes_etag_and_304(factory: Factory) -> None:
    eng, ann, stranger = (
        factory.user("engineer"),
        factory.user("annotator"),
        factory.user("engineer"),
    )
    project = factory.project(eng, members={ann: "annotator"})
    data = png_bytes(7, size=(20, 10))
    r = factory.client(eng).post(
        f"/api/projects/{project.id}/items", files=[("file", ("seven.png", data, "image/png"))]
    )
    assert r.status_code == 202
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    with unit_of_work(write=False) as db:
        item = db.scalars(select(Item).where(Item.project_id == project.id)).one()
    c = factory.client(ann)
    r = c.get(f"/api/items/{item.id}/image")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-type"] == "image/png"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    assert r.headers["etag"] == etag
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert (item.width, item.height) == (20, 10)

    r = c.get(f"/api/items/{item.id}/image", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    assert (
        c.get(f"/api/items/{item.id}/image", headers={"If-None-Match": f"W/{etag}"}).status_code
        == 304
    )
    assert (
        c.get(
            f"/api/items/{item.id}/image", headers={"If-None-Match": '"other", ' + etag}
        ).status_code
        == 304
    )
    assert (
        c.get(f"/api/items/{item.id}/image", headers={"If-None-Match": '"other"'}).status_code
        == 200
    )
    assert factory.client(stranger).get(f"/api/items/{item.id}/image").status_code == 404
    assert factory.anonymous().get(f"/api/items/{item.id}/image").status_code == 401


def test_image_body_is_sent_without_holding_a_database_slot(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    data = png_bytes(3, size=(16, 16))
    r = factory.client(eng).post(
        f"/api/projects/{project.id}/items", files=[("file", ("three.png", data, "image/png"))]
    )
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    with unit_of_work(write=False) as db:
        item_id = db.scalars(select(Item.id).where(Item.project_id == project.id)).one()
    authorization = factory.token_client(eng).headers["Authorization"]
    # One request slot in all: while the body goes out, a slot still held would be locked.
    monkeypatch.setattr(app_db, "SQLITE_POOL", (1, app_db.UNSLOTTED_CONNECTIONS))
    monkeypatch.setattr(app_db, "POSTGRES_POOL", (1, app_db.UNSLOTTED_CONNECTIONS))
    seen, body = get_watching_slots(
        factory.app, f"/api/items/{item_id}/image", authorization=authorization
    )
    assert body == data
    assert ("http.response.start", False) in seen
    assert all(not locked for _, locked in seen), seen
