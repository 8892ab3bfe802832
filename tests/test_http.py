"""Guards every route shares (DESIGN 5, issue 9): body size, errors that echo nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

from app.http import MAX_BODY_BYTES
from tests.factories import Factory


def _login_body(size: int) -> bytes:
    """A well-formed login body of about ``size`` bytes."""
    pad = "x" * max(0, size - 40)
    return json.dumps({"username": "u", "password": "p", "pad": pad}).encode()


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
