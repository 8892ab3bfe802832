"""The OpenAPI document as generated clients read it: operation ids and declared bodies.

A client generator (scripts/client runs openapi-python-client) names each method after its
operation's id, so an id is part of the API a client is written against, as its path is.
"""

from __future__ import annotations

import re

import pytest

from app.main import create_app

pytestmark = pytest.mark.database_free

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
METHOD_SUFFIX = r"_(get|post|put|patch|delete)$"
# Every operation of the contract (DESIGN.md) with the id clients know it by. A route may be
# added (with an id of its own); one listed here keeps its id, or every client's method breaks.
STABLE_IDS = {
    ("POST", "/api/auth/login"): "login",
    ("POST", "/api/auth/logout"): "logout",
    ("GET", "/api/health"): "get_health",
    ("GET", "/api/items/{item_id}"): "get_item",
    ("GET", "/api/items/{item_id}/image"): "get_image",
    ("GET", "/api/jobs"): "list_jobs",
    ("GET", "/api/jobs/{job_id}"): "get_job",
    ("POST", "/api/jobs/{job_id}/cancel"): "cancel_job",
    ("POST", "/api/jobs/{job_id}/retry"): "retry_job",
    ("POST", "/api/labels"): "create_label",
    ("DELETE", "/api/labels/{label_id}"): "undo_label",
    ("GET", "/api/me"): "me",
    ("GET", "/api/projects"): "list_projects",
    ("POST", "/api/projects"): "create_project",
    ("GET", "/api/projects/{project_id}"): "get_project",
    ("PATCH", "/api/projects/{project_id}"): "update_project",
    ("GET", "/api/projects/{project_id}/coresets"): "list_coresets",
    ("POST", "/api/projects/{project_id}/coresets"): "start_coreset",
    ("GET", "/api/projects/{project_id}/embeddings"): "list_embeddings",
    ("POST", "/api/projects/{project_id}/embeddings"): "start_embedding",
    ("GET", "/api/projects/{project_id}/evaluations"): "list_evaluations",
    ("POST", "/api/projects/{project_id}/evaluations"): "start_evaluation",
    ("GET", "/api/projects/{project_id}/export"): "export_labels",
    ("GET", "/api/projects/{project_id}/items"): "list_items",
    ("POST", "/api/projects/{project_id}/items"): "upload_items",
    ("POST", "/api/projects/{project_id}/items/import-from"): "import_items_from",
    ("GET", "/api/projects/{project_id}/members"): "list_members",
    ("PUT", "/api/projects/{project_id}/members"): "set_member",
    ("DELETE", "/api/projects/{project_id}/members/{user_id}"): "remove_member",
    ("POST", "/api/projects/{project_id}/queue/next"): "queue_next",
    ("POST", "/api/projects/{project_id}/queue/skip"): "queue_skip",
    ("GET", "/api/projects/{project_id}/rounds"): "list_rounds",
    ("POST", "/api/projects/{project_id}/rounds"): "start_round",
    ("GET", "/api/rounds/{round_id}"): "get_round",
    ("POST", "/api/rounds/{round_id}/cancel"): "cancel_round",
    ("GET", "/api/rounds/{round_id}/events"): "round_events",
    ("GET", "/api/rounds/{round_id}/selection"): "get_selection",
    ("GET", "/api/tokens"): "list_tokens",
    ("POST", "/api/tokens"): "create_token",
    ("DELETE", "/api/tokens/{token_id}"): "revoke_token",
    ("GET", "/api/users"): "list_users",
    ("POST", "/api/users"): "create_user",
    ("PATCH", "/api/users/{user_id}"): "update_user",
}


def operations() -> dict[tuple[str, str], dict]:
    """Each operation of the app's schema by (method, path)."""
    paths = create_app().openapi()["paths"]
    return {(m.upper(), path): op for path, ops in paths.items() for m, op in ops.items()}


def test_operation_ids_are_unique_and_snake_case() -> None:
    ops = operations()
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert [i for i in ids if not SNAKE_CASE.fullmatch(i)] == []
    # Nothing taken from the path or the method, as FastAPI's default ids have.
    assert [i for i in ids if "api" in i.split("_") or re.search(METHOD_SUFFIX, i)] == []


def test_the_contract_operations_keep_their_ids() -> None:
    ids = {key: op["operationId"] for key, op in operations().items()}
    assert {key: ids.get(key) for key in STABLE_IDS} == STABLE_IDS
    # Built twice, the same: nothing in an id depends on the order routers are included.
    assert {key: op["operationId"] for key, op in operations().items()} == ids


def test_the_image_route_declares_its_binary_bodies() -> None:
    ok = operations()[("GET", "/api/items/{item_id}/image")]["responses"]["200"]["content"]
    assert set(ok) == {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"}
    assert all(body["schema"] == {"type": "string", "format": "binary"} for body in ok.values())
