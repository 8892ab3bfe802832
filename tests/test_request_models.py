"""Every request model refuses what it does not know, and no refusal echoes its input (issue 17)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.factories import Factory, png_bytes

UNKNOWN = "zz_not_a_field"


def _refs(schema: Any) -> set[str]:
    """The component names a JSON schema refers to, anywhere inside it."""
    found: set[str] = set()
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for value in schema.values():
            found |= _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= _refs(value)
    return found


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def test_every_request_body_model_refuses_unknown_fields_in_its_schema(factory: Factory) -> None:
    """The schema walk: each object a JSON body can hold, nested ones too, is closed."""
    spec = factory.anonymous().get("/openapi.json").json()
    components = spec["components"]["schemas"]
    seen: set[str] = set()
    todo = [
        name
        for _, _, op in _operations(spec)
        for name in _refs(op.get("requestBody", {}).get("content", {}).get("application/json"))
    ]
    assert len(set(todo)) >= 10, todo
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        schema = components[name]
        if schema.get("type") == "object":
            assert schema.get("additionalProperties") is False, f"{name} accepts unknown fields"
        todo.extend(_refs(schema) - seen)


def _path_values(factory: Factory, admin_client: TestClient) -> dict[str, int]:
    admin = factory.user("admin")
    project = factory.project(admin)
    items = factory.items(project, 2)
    rnd = factory.round_with_selection(project, items)
    job = factory.job(project)
    return {
        "project_id": project.id,
        "user_id": admin.id,
        "item_id": items[0].id,
        "round_id": rnd.id,
        "job_id": job.id,
        "label_id": 1,
        "token_id": 1,
    }


def test_every_json_body_refuses_an_unknown_field_by_name(factory: Factory) -> None:
    """The live walk: each operation with a JSON body answers 422 naming the unknown field."""
    admin = factory.user("admin")
    c = factory.client(admin)
    values = _path_values(factory, c)
    spec = c.get("/openapi.json").json()
    checked = 0
    for method, path, op in _operations(spec):
        if "application/json" not in op.get("requestBody", {}).get("content", {}):
            continue
        r = c.request(method, path.format(**values), json={UNKNOWN: 1})
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        locs = [e["loc"] for e in r.json()["detail"]]
        assert ["body", UNKNOWN] in locs, (method, path, locs)
        checked += 1
    assert checked >= 12


def test_the_typos_of_the_report_are_refused(factory: Factory) -> None:
    """The three typos issue 17 #5 saw accepted: create, PATCH and a user's ``activ``."""
    admin = factory.user("admin")
    victim = factory.user("annotator")
    c = factory.client(admin)
    r = c.post("/api/projects", json={"name": "typo", "classes": ["a"], "setting": {}})
    assert r.status_code == 422
    assert ["body", "setting"] in [e["loc"] for e in r.json()["detail"]]
    project = factory.project(admin)
    r = c.patch(f"/api/projects/{project.id}", json={"bogus": 1})
    assert r.status_code == 422
    assert ["body", "bogus"] in [e["loc"] for e in r.json()["detail"]]
    r = c.patch(f"/api/users/{victim.id}", json={"activ": False})
    assert r.status_code == 422
    assert ["body", "activ"] in [e["loc"] for e in r.json()["detail"]]
    # The user whose disabling was misspelt can still sign in: nothing was half-applied.
    assert factory.client(victim).get("/api/me").status_code == 200


def test_every_operation_refuses_an_unknown_query_parameter(factory: Factory) -> None:
    """``GET /api/jobs?statu=failed`` listed every job; now each route names what it ignores."""
    admin = factory.user("admin")
    c = factory.client(admin)
    values = _path_values(factory, c)
    spec = c.get("/openapi.json").json()
    for method, path, _ in _operations(spec):
        r = c.request(method, path.format(**values), params={UNKNOWN: "1"})
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        assert ["query", UNKNOWN] in [e["loc"] for e in r.json()["detail"]], (method, path)
    # The parameters a route does take still work.
    assert c.get("/api/jobs", params={"status": "failed", "limit": 5}).status_code == 200


def test_a_422_lists_a_bounded_number_of_reasons(factory: Factory) -> None:
    """Thousands of bad fields answer a short list, never one reason per field."""
    c = factory.client(factory.user("admin"))
    body = {f"field_{i:05d}_{'x' * 200}": i for i in range(3000)}
    r = c.post("/api/users", json=body)
    assert r.status_code == 422
    assert len(r.content) < 10_000, len(r.content)
    detail = r.json()["detail"]
    assert detail[-1]["type"] == "too_many_errors"
    assert "x" * 100 not in r.text
    r = c.get("/api/jobs", params={f"q{i}": "1" for i in range(3000)})
    assert r.status_code == 422
    assert len(r.content) < 10_000, len(r.content)


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "svpboundary"
    out = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def test_an_upload_with_thousands_of_unknown_fields_is_refused_short(factory: Factory) -> None:
    """3,000 unknown multipart fields made a 6 MB 422 echoing each; now one short refusal."""
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    url = f"/api/projects/{project.id}/items"
    parts: list[tuple[str, str | None, bytes]] = [("file", "a.png", png_bytes(1))]
    parts += [(f"unknown_{i}_{'y' * 2000}", None, b"v") for i in range(3000)]
    body, content_type = _multipart(parts)
    r = c.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text
    assert len(r.content) < 1000, len(r.content)
    assert "y" * 100 not in r.text
    # Files under another field name, a part with huge headers: refused just as short.
    body, content_type = _multipart([(f"pics{'z' * 5000}", "a.png", png_bytes(1))])
    r = c.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 422
    assert len(r.content) < 1000
    assert "z" * 100 not in r.text
    body, content_type = _multipart([("file", "a" * 20_000 + ".png", png_bytes(1))])
    r = c.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 422
    assert len(r.content) < 1000, r.text
    # Too many repeats of a known field.
    body, content_type = _multipart([("split", None, b"pool")] * 100)
    r = c.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 422
    assert "plain form fields" in r.text
    # A good upload still goes through.
    body, content_type = _multipart([("split", None, b"pool"), ("file", "a.png", png_bytes(2))])
    r = c.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 202, r.text
    assert factory.wait_job(r.json()["id"]).status == "succeeded"
    # No spooled upload is left behind by the refusals.
    uploads = get_settings().uploads_dir
    assert not uploads.exists() or not any(uploads.iterdir())
