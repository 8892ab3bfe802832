"""Projects, counts, membership and settings, with every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from app.embeddings.schemas import DEFAULT_BACKBONE
from tests.factories import Factory


def test_engineer_creates_project_and_becomes_its_engineer(factory: Factory) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    r = c.post("/api/projects", json={"name": "birds", "classes": ["robin", "wren"]})
    assert r.status_code == 201
    body = r.json()
    assert body["classes"] == ["robin", "wren"]
    assert body["role"] == "engineer"
    assert body["counts"] == {"items": 0, "labeled": 0, "unlabeled": 0, "rounds": 0}
    assert body["settings"]["auto_next_round"] is False
    members = c.get(f"/api/projects/{body['id']}/members").json()
    assert members == [{"user_id": eng.id, "username": eng.username, "role": "engineer"}]


def test_bad_projects_get_422_or_409(factory: Factory) -> None:
    c = factory.client(factory.user("engineer"))
    assert c.post("/api/projects", json={"name": "a", "classes": []}).status_code == 422
    assert c.post("/api/projects", json={"name": "a", "classes": ["x", "x"]}).status_code == 422
    assert c.post("/api/projects", json={"name": "a", "classes": ["../etc"]}).status_code == 422
    assert c.post("/api/projects", json={"name": "a", "classes": [".."]}).status_code == 422
    assert c.post("/api/projects", json={"name": "a", "classes": ["."]}).status_code == 422
    assert (
        c.post(
            "/api/projects", json={"name": "a", "classes": ["x"], "settings": {"nope": 1}}
        ).status_code
        == 422
    )
    r = c.post("/api/projects", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert c.post("/api/projects", json={"name": "a", "classes": ["x"]}).status_code == 201
    assert c.post("/api/projects", json={"name": "a", "classes": ["y"]}).status_code == 409


def test_annotator_cannot_create_projects(factory: Factory) -> None:
    c = factory.client(factory.user("annotator"))
    assert c.post("/api/projects", json={"name": "a", "classes": ["x"]}).status_code == 403


def test_counts_and_visibility(factory: Factory) -> None:
    eng, ann, stranger = (
        factory.user("engineer"),
        factory.user("annotator"),
        factory.user("engineer"),
    )
    project = factory.project(eng, members={ann: "annotator"})
    items = factory.items(project, 5)
    from app.db import unit_of_work
    from app.items.models import Item

    with unit_of_work() as db:
        db.get(Item, items[0].id).label = "cat"  # type: ignore[union-attr]

    r = factory.client(ann).get("/api/projects")
    assert [p["id"] for p in r.json()] == [project.id]
    assert r.json()[0]["counts"] == {"items": 5, "labeled": 1, "unlabeled": 4, "rounds": 0}
    assert r.json()[0]["role"] == "annotator"

    other = factory.client(stranger)
    assert other.get("/api/projects").json() == []
    assert other.get(f"/api/projects/{project.id}").status_code == 404
    assert other.get("/api/projects/424242").status_code == 404
    admin = factory.client(factory.user("admin"))
    assert admin.get(f"/api/projects/{project.id}").json()["role"] == "admin"


def test_membership_is_managed_by_engineers_of_the_project(factory: Factory) -> None:
    eng, ann = factory.user("engineer"), factory.user("annotator")
    project = factory.project(eng, members={ann: "annotator"})
    newcomer = factory.user("annotator")
    c = factory.client(eng)
    r = c.put(
        f"/api/projects/{project.id}/members",
        json={"username": newcomer.username, "role": "annotator"},
    )
    assert r.status_code == 200
    assert r.json()["role"] == "annotator"
    r = c.put(
        f"/api/projects/{project.id}/members",
        json={"username": newcomer.username, "role": "engineer"},
    )
    assert r.json()["role"] == "engineer"
    assert len(c.get(f"/api/projects/{project.id}/members").json()) == 3
    assert (
        c.put(
            f"/api/projects/{project.id}/members", json={"username": "ghost", "role": "annotator"}
        ).status_code
        == 422
    )
    assert (
        c.put(
            f"/api/projects/{project.id}/members", json={"username": ann.username, "role": "owner"}
        ).status_code
        == 422
    )

    a = factory.client(ann)
    assert a.get(f"/api/projects/{project.id}/members").status_code == 403
    assert (
        a.put(
            f"/api/projects/{project.id}/members",
            json={"username": ann.username, "role": "engineer"},
        ).status_code
        == 403
    )
    assert a.patch(f"/api/projects/{project.id}", json={"description": "x"}).status_code == 403
    assert c.delete(f"/api/projects/{project.id}/members/{ann.id}").status_code == 204
    assert a.get(f"/api/projects/{project.id}").status_code == 404


def test_engineer_updates_settings(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    r = c.patch(
        f"/api/projects/{project.id}",
        json={"settings": {"lease_seconds": 60, "auto_next_round": True}},
    )
    assert r.status_code == 200
    assert r.json()["settings"]["lease_seconds"] == 60
    assert r.json()["settings"]["auto_next_round"] is True
    assert (
        c.patch(f"/api/projects/{project.id}", json={"settings": {"lease_seconds": 1}}).status_code
        == 422
    )


def test_a_name_conflict_reveals_no_project_the_caller_cannot_see(factory: Factory) -> None:
    owner, other = factory.user("engineer"), factory.user("engineer")
    factory.client(owner).post("/api/projects", json={"name": "hidden", "classes": ["a"]})
    # The owner (a member) and an admin see it: 409 naming it.
    r = factory.client(owner).post("/api/projects", json={"name": "hidden", "classes": ["a"]})
    assert r.status_code == 409
    admin = factory.client(factory.user("admin"))
    assert admin.post("/api/projects", json={"name": "hidden", "classes": ["a"]}).status_code == 409
    # Someone else learns only that the name is not available.
    r = factory.client(other).post("/api/projects", json={"name": "hidden", "classes": ["a"]})
    assert r.status_code == 422
    assert "exists" not in r.text
    assert "project named" not in r.text


def test_new_projects_default_to_the_linear_proxy_and_auto(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    settings = factory.client(eng).get(f"/api/projects/{project.id}").json()["settings"]
    assert (settings["default_proxy"], settings["strategy"]) == ("linear", "auto")
    assert (settings["backbone"], settings["cold_start"]) == (DEFAULT_BACKBONE, "auto")


@pytest.mark.parametrize(
    "given",
    [
        {"default_proxy": "resnet", "auto_next_round": True},
        {"strategy": "most_confusing"},
        {"backbone": "vit_giant"},
        {"cold_start": "kmeans"},
        {"default_target": "linear"},
    ],
)
def test_unknown_names_in_settings_are_refused_when_written(
    factory: Factory, given: dict[str, Any]
) -> None:
    eng = factory.user("engineer")
    c = factory.client(eng)
    r = c.post("/api/projects", json={"name": "typo", "classes": ["a", "b"], "settings": given})
    assert r.status_code == 422, r.text
    assert c.get("/api/projects").json() == []


def test_a_settings_patch_changes_only_the_keys_it_names(factory: Factory) -> None:
    """Issue 17 #4: PATCH of one setting reset every other one to its default."""
    eng = factory.user("engineer")
    project = factory.project(
        eng, lease_seconds=120, annotators_label_any_pool_item=True, default_proxy="preact8"
    )
    c = factory.client(eng)
    r = c.patch(f"/api/projects/{project.id}", json={"settings": {"auto_next_round": True}})
    assert r.status_code == 200, r.text
    settings = r.json()["settings"]
    assert settings["auto_next_round"] is True
    assert settings["lease_seconds"] == 120
    assert settings["annotators_label_any_pool_item"] is True
    assert settings["default_proxy"] == "preact8"
    # A value that does not validate changes nothing, the keys beside it included.
    r = c.patch(
        f"/api/projects/{project.id}", json={"settings": {"batch_size": 5, "lease_seconds": 1}}
    )
    assert r.status_code == 422
    assert c.get(f"/api/projects/{project.id}").json()["settings"] == settings
