"""``GET /api/projects/{pid}/class-counts``: items per current label and split in one answer."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import Factory

_keys = itertools.count()


def _label(c: TestClient, item_id: int, label: str) -> int:
    """Label an item through the API, as the app does (a Label row and the item's label)."""
    r = c.post("/api/labels", json={"item_id": item_id, "label": label, "key": f"k{next(_keys)}"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _counts(c: TestClient, project_id: int) -> dict[str, Any]:
    r = c.get(f"/api/projects/{project_id}/class-counts")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_counts_per_class_and_split_in_the_projects_class_order(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    # Not alphabetical: the answer follows the project's order, not the database's.
    project = factory.project(eng, classes=["zebra", "cat", "ant"], members={ann: "annotator"})
    pool = factory.items(project, 6)
    test = factory.items(project, 3, split="test")
    other = factory.items(factory.project(eng, classes=["zebra", "cat", "ant"]), 2)
    c = factory.client(eng)
    for item, label in [(pool[0], "cat"), (pool[1], "cat"), (pool[2], "zebra"), (test[0], "cat")]:
        _label(c, item.id, label)
    _label(c, test[1].id, "zebra")
    # Labels elsewhere never count here.
    _label(c, other[0].id, "ant")

    assert _counts(factory.client(ann), project.id) == {
        "counts": [
            {"label": "zebra", "pool": 1, "test": 1},
            {"label": "cat", "pool": 2, "test": 1},
            {"label": "ant", "pool": 0, "test": 0},
        ],
        "unlabeled": {"pool": 3, "test": 1},
    }


def test_a_relabel_and_an_undo_move_the_counts(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    (item,) = factory.items(project, 1)
    c = factory.client(eng)
    first = _label(c, item.id, "cat")
    _label(c, item.id, "dog")
    # The item's current label counts, once, not its history.
    assert [n["pool"] for n in _counts(c, project.id)["counts"]] == [0, 1, 0]
    assert c.delete(f"/api/labels/{first}").status_code in (200, 204)
    assert [n["pool"] for n in _counts(c, project.id)["counts"]] == [0, 1, 0]
    newest = c.get(f"/api/items/{item.id}").json()["labels"][0]["id"]
    assert c.delete(f"/api/labels/{newest}").status_code in (200, 204)
    body = _counts(c, project.id)
    assert [n["pool"] for n in body["counts"]] == [0, 0, 0]
    assert body["unlabeled"] == {"pool": 1, "test": 0}


def test_an_empty_project_counts_every_class_as_zero(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng, classes=["a", "b"])
    assert _counts(factory.client(eng), project.id) == {
        "counts": [{"label": "a", "pool": 0, "test": 0}, {"label": "b", "pool": 0, "test": 0}],
        "unlabeled": {"pool": 0, "test": 0},
    }


def test_class_counts_are_for_members_only(factory: Factory) -> None:
    eng, stranger = factory.user("engineer"), factory.user("engineer")
    project = factory.project(eng)
    factory.items(project, 1)
    url = f"/api/projects/{project.id}/class-counts"
    assert factory.anonymous().get(url).status_code == 401
    assert factory.client(stranger).get(url).status_code == 404
    assert factory.client(factory.user("admin")).get(url).status_code == 200
    assert factory.token_client(eng).get(url).status_code == 200
    assert factory.client(eng).get("/api/projects/987654/class-counts").status_code == 404
