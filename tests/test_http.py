"""Guards every route shares (DESIGN 5, issue 9): body size, errors that echo nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.http import MAX_BODY_BYTES, ErrorBody
from app.items.service import encode_cursor
from tests.factories import Factory, png_bytes


def _login_body(size: int) -> bytes:
    """A well-formed login body of about ``size`` bytes."""
    # Padded with whitespace, not an extra field: request bodies refuse unknown fields.
    body = json.dumps({"username": "u", "password": "p"})
    return (body[:-1] + " " * max(0, size - len(body)) + "}").encode()


def test_a_json_body_over_1_mib_is_413_whether_declared_or_streamed(factory: Factory) -> None:
    anon = factory.anonymous()
    big = _login_body(MAX_BODY_BYTES + 10)
    r = anon.post("/api/auth/login", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "detail" in r.json()

    def chunks() -> Iterator[bytes]:
        # No Content-Length: counted as it streams.
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    r = anon.post("/api/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    # A signed-in writer gets the same, on any route.
    eng = factory.client(factory.user("engineer"))
    body = {"name": "p", "classes": ["a"], "description": "d" * (MAX_BODY_BYTES + 1)}
    assert eng.post("/api/projects", json=body).status_code == 413
    # Under the limit the body is read and judged as usual.
    r = anon.post(
        "/api/auth/login",
        content=_login_body(MAX_BODY_BYTES - 100),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 401, r.text


def test_uploads_keep_their_own_limit(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    blob = b"\0not an image" * (2 * MAX_BODY_BYTES // 13)
    r = c.post(
        f"/api/projects/{project.id}/items",
        files={"file": ("big.png", blob, "image/png")},
        data={"split": "pool"},
    )
    assert r.status_code == 202, r.text
    job = factory.wait_job(r.json()["id"])
    assert job.result is not None
    assert [x["name"] for x in job.result["rejected"]] == ["big.png"]


def test_422_never_echoes_the_input(factory: Factory) -> None:
    c = factory.client(factory.user("engineer"))
    marker = "ECHO-" + "y" * 200_000
    for body in (
        {"name": marker, "classes": ["a"]},
        {"name": "p", "classes": [marker]},
        {"name": "p", "classes": ["a"], "settings": {"backbone": marker}},
        {"name": "p", "classes": ["a"], "settings": {marker: 1}},
    ):
        r = c.post("/api/projects", json=body)
        assert r.status_code == 422, r.text
        # A message may name a short bad value ("unknown backbone 'x'"), cut at 300 characters.
        assert marker[:400] not in r.text
        assert len(r.content) < 2000
        for error in r.json()["detail"]:
            assert set(error) == {"type", "loc", "msg"}
    r = c.post(
        "/api/projects",
        content=b'{"name": "ECHO-' + b"z" * 1000,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert "ECHO-" not in r.text


def _path_routes(factory: Factory) -> list[tuple[str, str]]:
    """Every API operation that takes an id in its path: (method, path template)."""
    paths = factory.app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if "{" in path and path.startswith("/api/")
        for method in operations
    ]


@pytest.mark.parametrize("big", [2**31, 2**63, 2**64 + 5])
def test_ids_past_the_column_range_are_never_a_500(factory: Factory, big: int) -> None:
    admin = factory.client(factory.user("admin"))
    routes = _path_routes(factory)
    assert len(routes) > 15
    for method, template in routes:
        path = re.sub(r"\{[a-z_]+\}", str(big), template)
        r = admin.request(method, path, json={})
        assert r.status_code in (404, 422), (method, path, r.status_code, r.text)
    eng = factory.user("engineer")
    project = factory.project(eng, annotators_label_any_pool_item=True)
    c = factory.client(eng)
    for method, path, body in (
        ("POST", "/api/labels", {"item_id": big, "label": "cat", "key": "k"}),
        ("POST", f"/api/projects/{project.id}/queue/skip", {"item_id": big}),
        ("GET", f"/api/jobs?project_id={big}", None),
        ("GET", f"/api/jobs?after={big}", None),
        ("GET", f"/api/projects/{project.id}/items?after={encode_cursor(big)}", None),
    ):
        r = c.request(method, path, json=body)
        assert r.status_code in (404, 422), (method, path, r.status_code, r.text)


def test_nul_in_any_text_is_422(factory: Factory) -> None:
    admin = factory.client(factory.user("admin"))
    eng_user = factory.user("engineer")
    eng = factory.client(eng_user)
    project = factory.project(eng_user)
    for c, method, path, body in (
        (factory.anonymous(), "POST", "/api/auth/login", {"username": "a\0b", "password": "p"}),
        (
            admin,
            "POST",
            "/api/users",
            {"username": "a\0b", "password": "pw-long-1", "role": "annotator"},
        ),
        (eng, "POST", "/api/projects", {"name": "p\0", "classes": ["a"]}),
        (eng, "POST", "/api/projects", {"name": "p", "classes": ["a"], "description": "d\0"}),
        (eng, "POST", "/api/projects", {"name": "p", "classes": ["a\0"]}),
        (eng, "PATCH", f"/api/projects/{project.id}", {"description": "\0"}),
        (eng, "POST", "/api/tokens", {"name": "t\0"}),
        (
            eng,
            "PUT",
            f"/api/projects/{project.id}/members",
            {"username": "x\0", "role": "annotator"},
        ),
        (eng, "POST", "/api/labels", {"item_id": 1, "label": "cat", "key": "k\0"}),
    ):
        r = c.request(method, path, json=body)
        assert r.status_code == 422, (path, r.status_code, r.text)


def test_an_uploaded_file_with_a_nul_in_its_name_is_refused_alone(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    # Written by hand: httpx would percent-encode the NUL, a raw client need not.
    boundary = b"svpboundary"
    parts = [
        b'Content-Disposition: form-data; name="split"\r\n\r\npool',
        b'Content-Disposition: form-data; name="file"; filename="bad\0name.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(1),
        b'Content-Disposition: form-data; name="file"; filename="good.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(2),
    ]
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary + b"--\r\n"
    r = c.post(
        f"/api/projects/{project.id}/items",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=svpboundary"},
    )
    assert r.status_code == 202, r.text
    job = factory.wait_job(r.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.result is not None
    assert job.result["added"] == 1
    assert job.result["rejected"] == [
        {"name": "bad\ufffdname.png", "reason": "file name contains a NUL byte"}
    ]
    names = [i["name"] for i in c.get(f"/api/projects/{project.id}/items").json()["items"]]
    assert names == ["good.png"]


def test_security_headers_on_every_answer(factory: Factory) -> None:
    anon = factory.anonymous()
    answers = [
        anon.get("/"),
        anon.get("/js/main.js"),
        anon.get("/api/me"),
        anon.get("/api/health"),
        anon.get("/api/items/1"),
        anon.post("/api/auth/login", content=b"x" * (MAX_BODY_BYTES + 1)),
        anon.get("/docs"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 401, 200, 401, 413, 200]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "same-origin"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self';" in csp
        assert "unsafe-eval" not in csp
    assert "unsafe-inline" not in answers[0].headers["content-security-policy"]


def test_docs_load_swagger_from_this_server(factory: Factory) -> None:
    anon = factory.anonymous()
    page = anon.get("/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources
    assert all(s.startswith("/") and not s.startswith("//") for s in sources)
    assert "<script>" not in page  # no inline script: script-src 'self' holds here too
    for s in sources:
        assert anon.get(s).status_code == 200, s
    assert anon.get("/openapi.json").status_code == 200
    assert anon.get("/redoc").status_code == 404


def _declared(app_schema: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return app_schema["paths"][path][method.lower()]["responses"]


def test_every_error_answer_is_one_the_schema_declares(factory: Factory) -> None:
    """Issue 9's fuzzing found these undeclared: each status a route gives is in /openapi.json,
    with the {detail} body a client can parse (a message, or validation errors)."""
    admin = factory.client(factory.user("admin"))
    eng_user = factory.user("engineer")
    project = factory.project(eng_user)
    eng = factory.client(eng_user)
    anon = factory.anonymous()
    app_schema = anon.get("/openapi.json").json()
    body_schema = app_schema["components"]["schemas"]["ErrorBody"]
    assert set(body_schema["required"]) == {"detail"}
    answers = [
        # JSON that is not UTF-8: FastAPI's own 400, before any validation.
        (
            "POST",
            "/api/tokens",
            admin.post(
                "/api/tokens", content=b"\xff\xfe{", headers={"content-type": "application/json"}
            ),
        ),
        ("GET", "/api/me", anon.get("/api/me")),
        ("GET", "/api/users", eng.get("/api/users")),
        ("GET", "/api/items/{item_id}", eng.get("/api/items/999999")),
        (
            "POST",
            "/api/users",
            admin.post(
                "/api/users",
                json={"username": eng_user.username, "password": "long enough pw", "role": "admin"},
            ),
        ),
        (
            "POST",
            "/api/projects/{project_id}/rounds",
            eng.post(
                f"/api/projects/{project.id}/rounds", json={"strategy": "nope", "batch_size": 1}
            ),
        ),
        (
            "POST",
            "/api/labels",
            eng.post("/api/labels", json={"item_id": 1, "label": "x", "key": "k" * 10_000}),
        ),
    ]
    statuses = [r.status_code for _, _, r in answers]
    assert statuses == [400, 401, 403, 404, 409, 422, 422], [r.text for _, _, r in answers]
    for method, path, r in answers:
        declared = _declared(app_schema, method, path)
        assert str(r.status_code) in declared, (method, path, r.status_code, sorted(declared))
        ref = declared[str(r.status_code)]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorBody", (method, path, ref)
        assert ErrorBody.model_validate(r.json())
    # A domain 422 carries a message where FastAPI's carries a list: both are ErrorBody.
    body = {"fraction": 0.5, "strategy": "forgetting"}
    r = eng.post(f"/api/projects/{project.id}/coresets", json=body)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str), r.text
    assert "422" in _declared(app_schema, "POST", "/api/projects/{project_id}/coresets")
    # Too many failed sign-ins: 429, declared on login alone.
    assert "429" in _declared(app_schema, "POST", "/api/auth/login")
    assert "429" not in _declared(app_schema, "GET", "/api/me")
    # Health answers anyone: no 401 there, but its 503.
    health = _declared(app_schema, "GET", "/api/health")
    assert "503" in health
    assert "401" not in health


def test_metrics_answer_admins_and_the_scraper_token_only(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    scraper_token = "m" * 40
    monkeypatch.setenv("SVP_METRICS_TOKEN", scraper_token)
    get_settings.cache_clear()
    anonymous = factory.anonymous()
    assert anonymous.get("/metrics").status_code == 401
    anonymous.headers["Authorization"] = "Bearer " + "x" * 40
    assert anonymous.get("/metrics").status_code == 401
    assert factory.client(factory.user("engineer")).get("/metrics").status_code == 403
    admin = factory.client(factory.user("admin"))
    assert admin.get("/api/items/999999").status_code == 404
    r = admin.get("/metrics")
    assert r.status_code == 200
    # Counted by route template and status, not by raw path.
    assert 'svp_http_requests_total{method="GET",route="/api/items/{item_id}",status="404"}' in (
        r.text
    )
    assert "/api/items/999999" not in r.text
    anonymous.headers["Authorization"] = f"Bearer {scraper_token}"
    assert anonymous.get("/metrics").status_code == 200
    # Anyone on the host itself (a Prometheus beside the server) needs nothing: DESIGN section 5.
    for host, status in (("127.0.0.1", 200), ("::1", 200), ("10.1.2.3", 401)):
        local = TestClient(factory.app, client=(host, 50000))
        assert local.get("/metrics").status_code == status, host
