"""The credential cache: revocation is immediate in this process, bounded by the TTL elsewhere."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth import service as auth_service
from app.auth.models import ApiToken, AuthSession, User
from app.db import get_engine, unit_of_work
from tests.factories import Factory


def _selects_for(call: object) -> int:
    """How many SELECT statements the engine ran during ``call()``."""
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        call()  # type: ignore[operator]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def test_a_session_is_looked_up_once_then_remembered(factory: Factory) -> None:
    c = factory.client(factory.user("annotator"))
    auth_cache.clear()
    assert _selects_for(lambda: c.get("/api/me")) == 1  # the session joined with its user
    assert _selects_for(lambda: c.get("/api/me")) == 0


def test_logout_revocation_and_user_changes_act_at_once(factory: Factory) -> None:
    admin, ann = factory.user("admin"), factory.user("annotator")
    c = factory.client(ann)
    assert c.get("/api/me").status_code == 200
    assert c.post("/api/auth/logout").status_code in (200, 204)
    assert c.get("/api/me").status_code == 401

    t = factory.token_client(ann)
    token_id = factory.client(ann).get("/api/tokens").json()[0]["id"]
    assert t.get("/api/me").status_code == 200
    assert factory.client(ann).delete(f"/api/tokens/{token_id}").status_code == 204
    assert t.get("/api/me").status_code == 401

    c = factory.client(ann)
    assert c.get("/api/me").json()["role"] == "annotator"
    r = factory.client(admin).patch(f"/api/users/{ann.id}", json={"role": "engineer"})
    assert r.status_code == 200
    assert c.get("/api/me").json()["role"] == "engineer"
    r = factory.client(admin).patch(f"/api/users/{ann.id}", json={"active": False})
    assert r.status_code == 200
    assert c.get("/api/me").status_code == 401


def test_another_process_revoking_is_seen_within_the_ttl(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_cache, "TTL_SECONDS", 0.5)
    ann = factory.user("annotator")
    c = factory.client(ann)
    assert c.get("/api/me").status_code == 200
    # Another server process ends the session: this one's cache does not hear of it.
    with unit_of_work() as db:
        db.execute(delete(AuthSession).where(AuthSession.user_id == ann.id))
    assert c.get("/api/me").status_code == 200
    time.sleep(0.6)
    assert c.get("/api/me").status_code == 401


def test_a_lookup_that_read_before_a_revocation_committed_is_not_remembered(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving issue 17 read: a request reads a token, the token's revocation commits
    (and clears the cache), then the request caches what it read: the revoked token worked on
    for the TTL. The revocation is made to land exactly between that read and the remember."""
    user = factory.user("annotator")
    c = factory.token_client(user)
    with unit_of_work(write=False) as db:
        token_id = db.scalars(select(ApiToken.id).where(ApiToken.user_id == user.id)).one()
    auth_cache.clear()
    read_token = auth_service.user_from_token

    def read_then_revoked(db: Session, *, secret: str) -> tuple[User, ApiToken]:
        found = read_token(db, secret=secret)
        with unit_of_work() as other:  # another request revokes, and commits, meanwhile
            auth_service.revoke_token(other, user=found[0], token_id=token_id)
        return found

    monkeypatch.setattr(auth_service, "user_from_token", read_then_revoked)
    assert c.get("/api/me").status_code == 200  # it read the token while it was valid
    monkeypatch.setattr(auth_service, "user_from_token", read_token)
    assert c.get("/api/me").status_code == 401  # not served from a stale cache entry
