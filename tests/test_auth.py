"""Sign-in, sessions, CSRF, tokens, the rate limit and user management."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.auth import cache as auth_cache
from app.auth.models import ApiToken, AuthSession, LoginAttempt, User
from app.db import unit_of_work
from app.main import create_app
from app.security import hash_secret, key_stored_hash, new_secret
from app.settings import Settings, get_settings, secret_from_data_dir
from tests import procs
from tests.factories import PASSWORD, Factory


def test_login_sets_httponly_cookie_and_answers_user_and_csrf(factory: Factory) -> None:
    user = factory.user("annotator")
    c = factory.anonymous()
    r = c.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == {"id": user.id, "username": user.username, "role": "annotator"}
    assert len(body["csrf_token"]) >= 32
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie  # plain http://127.0.0.1 must work by default
    assert c.get("/api/me").json()["username"] == user.username


def test_bad_credentials_get_401_and_password_is_hashed(factory: Factory) -> None:
    user = factory.user()
    c = factory.anonymous()
    assert (
        c.post("/api/auth/login", json={"username": user.username, "password": "nope"}).status_code
        == 401
    )
    assert c.post("/api/auth/login", json={"username": "ghost", "password": "x"}).status_code == 401
    with unit_of_work() as db:
        stored = db.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_requests_without_auth_get_401(factory: Factory) -> None:
    c = factory.anonymous()
    assert c.get("/api/me").status_code == 401
    assert c.get("/api/projects").status_code == 401
    c.headers["Authorization"] = "Bearer not-a-token"
    assert c.get("/api/me").status_code == 401
    c.headers["Authorization"] = "Basic abc"
    assert c.get("/api/me").status_code == 401


def test_cookie_write_without_csrf_token_gets_403(factory: Factory) -> None:
    user = factory.user("engineer")
    c = factory.client(user)
    good = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/projects", json={"name": "p", "classes": ["a"]})
    assert r.status_code == 403
    assert "CSRF" in r.json()["detail"]
    c.headers["X-CSRF-Token"] = "wrong"
    assert c.post("/api/projects", json={"name": "p", "classes": ["a"]}).status_code == 403
    assert c.get("/api/projects").status_code == 200  # safe methods need no token
    c.headers["X-CSRF-Token"] = good
    assert c.post("/api/projects", json={"name": "p", "classes": ["a"]}).status_code == 201


def test_logout_ends_the_session(factory: Factory) -> None:
    c = factory.client(factory.user())
    cookie = c.cookies.get("svp_session")
    assert c.post("/api/auth/logout").status_code == 204
    other = factory.anonymous()
    other.cookies.set("svp_session", cookie or "")
    assert other.get("/api/me").status_code == 401


def test_token_is_shown_once_stored_hashed_and_revocable(factory: Factory) -> None:
    user = factory.user()
    c = factory.client(user)
    r = c.post("/api/tokens", json={"name": "ci"})
    assert r.status_code == 201
    token = r.json()["token"]
    listed = c.get("/api/tokens").json()
    assert [t["name"] for t in listed] == ["ci"]
    assert "token" not in listed[0]
    with unit_of_work() as db:
        hashes = list(db.scalars(select(ApiToken.token_hash)))
    assert token not in hashes
    assert len(hashes) == 1

    bearer = factory.anonymous()
    bearer.headers["Authorization"] = f"Bearer {token}"
    assert bearer.get("/api/me").json()["id"] == user.id
    # A bearer request needs no CSRF token.
    assert bearer.post("/api/tokens", json={"name": "second"}).status_code == 201

    other = factory.client(factory.user())
    assert other.delete(f"/api/tokens/{r.json()['id']}").status_code == 404
    assert c.delete(f"/api/tokens/{r.json()['id']}").status_code == 204
    assert bearer.get("/api/me").status_code == 401


def test_failed_logins_are_rate_limited_per_user_and_address(factory: Factory) -> None:
    user = factory.user()
    c = factory.anonymous()
    codes = [
        c.post("/api/auth/login", json={"username": user.username, "password": "bad"}).status_code
        for _ in range(12)
    ]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]
    # Even the right password waits out the window, so guessing cannot continue.
    r = c.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 429
    # Another user from the same address is not locked out.
    other = factory.user()
    r = c.post("/api/auth/login", json={"username": other.username, "password": PASSWORD})
    assert r.status_code == 200


def _limits(monkeypatch: pytest.MonkeyPatch, *, pair: int, address: int) -> None:
    monkeypatch.setenv("SVP_LOGIN_ATTEMPTS_PER_MINUTE", str(pair))
    monkeypatch.setenv("SVP_LOGIN_ADDRESS_ATTEMPTS_PER_MINUTE", str(address))
    get_settings.cache_clear()


def test_a_spray_of_usernames_from_one_address_is_limited(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _limits(monkeypatch, pair=10, address=5)
    user = factory.user()
    c = factory.anonymous()
    codes = [
        c.post("/api/auth/login", json={"username": f"nobody{i}", "password": "x"}).status_code
        for i in range(7)
    ]
    assert codes == [401] * 5 + [429] * 2
    # The address waits out the window, whoever it names, the right password too ...
    r = c.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 429
    # ... while another address is not affected.
    other = TestClient(factory.app, client=("192.0.2.7", 50000))
    r = other.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 200
    # Good sign-ins give their place back: they never lock out an office behind one address.
    for _ in range(8):
        r = other.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
        assert r.status_code == 200


def test_a_room_signing_in_at_once_from_one_address_is_let_in(factory: Factory) -> None:
    # A team behind one NAT signs in together at nine: every attempt holds its place in the
    # address's count while argon2 runs, so with the old default of 30 the 31st of them got 429
    # (seen with bench/api_load.py's 50 annotators). The default leaves room for a room.
    users = [factory.user("annotator") for _ in range(40)]

    async def sign_in_together() -> list[int]:
        transport = httpx.ASGITransport(app=factory.app, client=("203.0.113.9", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://svp") as c:
            answers = await asyncio.gather(
                *(
                    c.post("/api/auth/login", json={"username": u.username, "password": PASSWORD})
                    for u in users
                )
            )
        return [r.status_code for r in answers]

    assert asyncio.run(sign_in_together()) == [200] * len(users)


def test_login_counts_are_shared_by_server_processes(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two applications on one database stand for two `svplabel serve` workers: what one counted,
    # the other sees. Before, each process kept its own count, so N workers allowed N times more.
    _limits(monkeypatch, pair=3, address=100)
    user = factory.user()
    first, second = TestClient(factory.app), TestClient(create_app())
    bad = {"username": user.username, "password": "bad"}
    assert [first.post("/api/auth/login", json=bad).status_code for _ in range(2)] == [401, 401]
    assert second.post("/api/auth/login", json=bad).status_code == 401
    assert first.post("/api/auth/login", json=bad).status_code == 429
    assert second.post("/api/auth/login", json=bad).status_code == 429
    with unit_of_work() as db:
        rows = list(db.scalars(select(LoginAttempt)))
    # The table holds digests, never the names or addresses people typed.
    assert rows
    assert all(user.username not in r.key and "testclient" not in r.key for r in rows)


def test_parallel_attempts_cannot_pass_the_limit(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _limits(monkeypatch, pair=4, address=100)
    user = factory.user()
    c = factory.anonymous()
    bad = {"username": user.username, "password": "bad"}
    with ThreadPoolExecutor(10) as pool:
        codes = sorted(
            pool.map(lambda _: c.post("/api/auth/login", json=bad).status_code, range(10))
        )
    # Each attempt takes its place before argon2 runs, so parallel guesses cannot all slip
    # through a check made before any of them was counted.
    assert codes == [401] * 4 + [429] * 6


def test_argon2_runs_outside_the_write_queue(factory: Factory) -> None:
    # A user whose stored hash is costly to verify (argon2's parameters live in the hash): its
    # sign-in spends seconds in argon2. Other writers must not wait for it, as they did when
    # the login held SQLite's write transaction (and the writer queue) around argon2.
    slow = factory.user("annotator")
    # Calibrated to this machine: about 2.5 s a verification, however fast the cores are.
    probe = PasswordHasher(time_cost=10)
    probe_hash = probe.hash(PASSWORD)
    t = time.perf_counter()
    probe.verify(probe_hash, PASSWORD)
    time_cost = max(10, int(10 * 2.5 / max(time.perf_counter() - t, 1e-3)))
    with unit_of_work() as db:
        row = db.get(User, slow.id)
        assert row is not None
        row.password_hash = PasswordHasher(time_cost=time_cost).hash(PASSWORD)
    writer = factory.client(factory.user("engineer"))
    login = factory.anonymous()
    started = threading.Event()

    def sign_in() -> int:
        started.set()
        body = {"username": slow.username, "password": "wrong guess"}
        return login.post("/api/auth/login", json=body).status_code

    with ThreadPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        result = pool.submit(sign_in)
        started.wait()
        time.sleep(0.5)  # the sign-in is in argon2 by now
        write_started = time.perf_counter()
        assert writer.post("/api/tokens", json={"name": "t"}).status_code == 201
        write_s = time.perf_counter() - write_started
        assert result.result() == 401
        login_s = time.perf_counter() - t0
    assert login_s > 1.5, "the slow hash was not slow: the test proves nothing"
    # Had it waited, it would have taken the rest of the sign-in, over a second.
    assert write_s < min(1.0, login_s - 1.0), f"a write waited {write_s:.2f}s behind argon2"


def test_admin_manages_users_and_others_cannot(factory: Factory) -> None:
    admin = factory.client(factory.user("admin"))
    r = admin.post(
        "/api/users", json={"username": "ann", "password": "longenough", "role": "annotator"}
    )
    assert r.status_code == 201
    assert r.json()["role"] == "annotator"
    uid = r.json()["id"]
    assert (
        admin.post("/api/users", json={"username": "ann", "password": "longenough"}).status_code
        == 409
    )
    assert admin.post("/api/users", json={"username": "x", "password": "short"}).status_code == 422
    assert (
        admin.post(
            "/api/users", json={"username": "y", "password": "longenough", "role": "king"}
        ).status_code
        == 422
    )
    assert "ann" in [u["username"] for u in admin.get("/api/users").json()]

    ann = factory.anonymous()
    assert (
        ann.post("/api/auth/login", json={"username": "ann", "password": "longenough"}).status_code
        == 200
    )
    assert admin.patch(f"/api/users/{uid}", json={"role": "engineer"}).json()["role"] == "engineer"
    assert ann.get("/api/me").json()["role"] == "engineer"
    assert admin.patch(f"/api/users/{uid}", json={"active": False}).json()["active"] is False
    assert ann.get("/api/me").status_code == 401
    assert admin.patch("/api/users/99999", json={"active": True}).status_code == 404

    for role in ("engineer", "annotator"):
        c = factory.client(factory.user(role))
        assert c.get("/api/users").status_code == 403
        assert (
            c.post("/api/users", json={"username": "z", "password": "longenough"}).status_code
            == 403
        )
        assert c.patch(f"/api/users/{uid}", json={"role": "admin"}).status_code == 403


def test_first_admin_comes_from_settings(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.db import reset_caches
    from app.main import create_app

    monkeypatch.setenv("SVP_ADMIN_USERNAME", "root")
    monkeypatch.setenv("SVP_ADMIN_PASSWORD", "rootpassword")
    reset_caches()
    with TestClient(create_app()) as c:
        r = c.post("/api/auth/login", json={"username": "root", "password": "rootpassword"})
        assert r.status_code == 200
        assert r.json()["user"]["role"] == "admin"


def test_first_admin_survives_two_servers_starting_at_once(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from app.auth.models import User
    from app.db import reset_caches, unit_of_work
    from app.main import ensure_first_admin

    monkeypatch.setenv("SVP_ADMIN_USERNAME", "root")
    monkeypatch.setenv("SVP_ADMIN_PASSWORD", "rootpassword")
    reset_caches()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            ensure_first_admin()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with unit_of_work() as db:
        assert list(db.scalars(select(User.username))) == ["root"]


@pytest.mark.slow
@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_forwarded_addresses_are_believed_only_from_trusted_proxies(
    tmp_path: Path, database_url: str, trusted: str
) -> None:
    # A real `svplabel serve`: the forwarded-header handling is uvicorn's, set up by the command.
    env = {"SVP_LOGIN_ATTEMPTS_PER_MINUTE": "3", "SVP_TRUSTED_PROXIES": trusted}
    with procs.stack(tmp_path, database_url=database_url, extra_env=env) as s:
        s.serve()
        codes = []
        for i in range(5):
            r = httpx.post(
                f"{s.url}/api/auth/login",
                json={"username": "admin", "password": "wrong"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=30,
            )
            codes.append(r.status_code)
    if trusted:
        # Behind a trusted proxy each forwarded address is its own client.
        assert codes == [401] * 5
    else:
        # Nobody is trusted: a client cannot dodge the limit by naming another address.
        assert codes == [401, 401, 401, 429, 429]


def test_a_password_reset_or_disabling_revokes_sessions_and_tokens(factory: Factory) -> None:
    admin = factory.client(factory.user("admin"))
    ann = factory.user("annotator")
    cookie, bearer = factory.client(ann), factory.token_client(ann)
    assert bearer.get("/api/me").status_code == 200
    r = admin.patch(f"/api/users/{ann.id}", json={"password": "a new password"})
    assert r.status_code == 200
    assert cookie.get("/api/me").status_code == 401
    assert bearer.get("/api/me").status_code == 401  # a stolen token dies with the old password
    with unit_of_work() as db:
        assert db.scalars(select(ApiToken).where(ApiToken.user_id == ann.id)).all() == []

    # Disabled, then enabled again: the tokens made before do not come back to life.
    assert admin.patch(f"/api/users/{ann.id}", json={"password": PASSWORD}).status_code == 200
    bearer = factory.token_client(ann)
    assert admin.patch(f"/api/users/{ann.id}", json={"active": False}).status_code == 200
    assert admin.patch(f"/api/users/{ann.id}", json={"active": True}).status_code == 200
    assert bearer.get("/api/me").status_code == 401


def test_an_admin_changing_their_own_password_keeps_this_session_only(factory: Factory) -> None:
    me = factory.user("admin")
    here, elsewhere, token = factory.client(me), factory.client(me), factory.token_client(me)
    assert here.patch(f"/api/users/{me.id}", json={"password": "a new password"}).status_code == 200
    assert here.get("/api/me").status_code == 200
    assert elsewhere.get("/api/me").status_code == 401
    assert token.get("/api/me").status_code == 401


def test_the_last_active_admin_cannot_demote_or_disable_themself(factory: Factory) -> None:
    me = factory.user("admin")
    c = factory.client(me)
    for change in ({"role": "engineer"}, {"active": False}):
        r = c.patch(f"/api/users/{me.id}", json=change)
        assert r.status_code == 409
        assert "only active admin" in r.json()["detail"]
    assert c.get("/api/me").json()["role"] == "admin"
    # A disabled admin does not count: the last active one is still alone.
    other = factory.user("admin")
    assert c.patch(f"/api/users/{other.id}", json={"active": False}).status_code == 200
    assert c.patch(f"/api/users/{me.id}", json={"role": "engineer"}).status_code == 409
    # With another active admin, stepping down is fine.
    assert c.patch(f"/api/users/{other.id}", json={"active": True}).status_code == 200
    assert c.patch(f"/api/users/{me.id}", json={"role": "engineer"}).status_code == 200
    assert c.get("/api/users").status_code == 403


def test_a_token_records_its_last_use_at_most_once_a_minute(factory: Factory) -> None:
    from datetime import timedelta

    from app.db import utcnow

    user = factory.user("engineer")
    bearer = factory.token_client(user)

    def last_used() -> object:
        with unit_of_work() as db:
            return db.scalar(
                select(ApiToken.last_used_at).where(
                    ApiToken.user_id == user.id, ApiToken.name == "test"
                )
            )

    assert last_used() is None
    assert bearer.get("/api/me").status_code == 200  # a read notes it in a write of its own
    first = last_used()
    assert first is not None
    assert bearer.get("/api/me").status_code == 200
    assert bearer.post("/api/tokens", json={"name": "second"}).status_code == 201
    assert last_used() == first  # not written again within the minute
    with unit_of_work() as db:
        db.execute(
            ApiToken.__table__.update()
            .where(ApiToken.user_id == user.id, ApiToken.name == "test")
            .values(last_used_at=utcnow() - timedelta(minutes=5))
        )
    # Five minutes on, the few seconds' auth cache (app/auth/cache.py) has long forgotten it.
    auth_cache.clear()
    before = utcnow()
    assert bearer.post("/api/tokens", json={"name": "third"}).status_code == 201  # a write
    with unit_of_work() as db:
        stamp = db.scalar(select(ApiToken.last_used_at).where(ApiToken.name == "test"))
    assert stamp is not None
    assert stamp >= before


@pytest.mark.slow
def test_an_events_stream_ends_after_its_caller_signs_out(
    factory: Factory, tmp_path: Path, database_url: str
) -> None:
    # A real server: the stream must be read while it runs, which the test client cannot do.
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    rnd = factory.round_with_selection(project, factory.items(project, 2), status="running")
    with procs.stack(tmp_path, database_url=database_url) as s:
        s.serve()
        c = httpx.Client(base_url=s.url, timeout=30)
        r = c.post("/api/auth/login", json={"username": engineer.username, "password": PASSWORD})
        csrf = r.json()["csrf_token"]
        events: list[str] = []
        ended = threading.Event()

        def listen() -> None:
            with (
                httpx.Client(base_url=s.url, cookies=c.cookies, timeout=60) as listener,
                listener.stream("GET", f"/api/rounds/{rnd.id}/events") as stream,
            ):
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        events.append(line)
            ended.set()

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        procs.wait_for(lambda: events, 20, "no first event")
        assert not ended.wait(1.0), "the stream of a running round ended by itself"
        assert c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        # Re-checked every EVENTS_REAUTH_SECONDS: it ends well within this.
        assert ended.wait(15), "the stream outlived its caller's session"
        c.close()


@pytest.mark.parametrize(
    ("env", "args", "reason"),
    [
        # Production needs its secret key to start at all.
        ({"SVP_ENVIRONMENT": "production", "SVP_SECRET_KEY": "k" * 40}, [], "production"),
        ({"SVP_DATABASE_URL": "postgresql://svp@db.internal/svp"}, [], "not the embedded SQLite"),
        ({}, ["--host", "0.0.0.0"], "reachable from other machines"),  # noqa: S104
    ],
)
def test_demo_refuses_to_create_well_known_logins_outside_a_laptop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    args: list[str],
    reason: str,
) -> None:
    from app.cli import main
    from app.demo import demo_refusal
    from app.settings import Settings

    # The laptop: the embedded SQLite file, development, loopback (./scripts/demo's case).
    monkeypatch.setenv("SVP_ENVIRONMENT", "development")
    monkeypatch.setenv("SVP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SVP_DATABASE_URL", raising=False)
    assert demo_refusal(Settings(), host="127.0.0.1") is None
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        assert main(["demo", "--port", "1", *args]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert reason in err
    assert "--allow-demo-logins" in err
    assert not (tmp_path / "data").exists()  # refused before it created or migrated anything


def test_old_login_windows_are_swept(factory: Factory) -> None:
    from app.auth.service import LOGIN_WINDOW_SECONDS, login_window

    old = login_window() - 5 * LOGIN_WINDOW_SECONDS
    with unit_of_work() as db:
        db.add_all(
            LoginAttempt(scope="address", key=f"{i:064x}", window_start=old, count=3)
            for i in range(5)
        )
    c = factory.anonymous()
    assert c.post("/api/auth/login", json={"username": "x", "password": "y"}).status_code == 401
    with unit_of_work() as db:
        windows = set(db.scalars(select(LoginAttempt.window_start)))
    assert old not in windows
    assert windows  # the attempt just made is kept


@pytest.mark.slow
def test_two_server_processes_share_the_login_count(tmp_path: Path, database_url: str) -> None:
    # Two real `svplabel serve` on one database, as `--workers 2` or two hosts would be.
    env = {"SVP_LOGIN_ATTEMPTS_PER_MINUTE": "4"}
    with procs.stack(tmp_path, database_url=database_url, extra_env=env) as s:
        s.serve()
        second_port = procs.free_port()
        second = s.spawn("server2", "serve", "--host", "127.0.0.1", "--port", str(second_port))
        second_url = f"http://127.0.0.1:{second_port}"
        procs.wait_for(lambda: procs._healthy(second_url), 60, "second server", second)
        bad = {"username": "admin", "password": "wrong"}
        codes = [
            httpx.post(f"{url}/api/auth/login", json=bad, timeout=30).status_code
            for url in (s.url, second_url, s.url, second_url, s.url, second_url)
        ]
    assert codes == [401, 401, 401, 401, 429, 429]


def test_a_row_written_into_the_database_without_the_key_signs_no_one_in(
    factory: Factory,
) -> None:
    # Session and token secrets are stored as HMAC under SVP_SECRET_KEY: someone who can write
    # to the database (a tampered backup, an injected row) but lacks the key cannot plant a
    # token they know, neither in the unkeyed form earlier releases stored nor keyed otherwise.
    admin = factory.user("admin")
    planted = {
        "bare": "svp_" + new_secret(),
        "other-key": "svp_" + new_secret(),
    }
    with unit_of_work() as db:
        db.add(
            ApiToken(
                user_id=admin.id,
                name="bare",
                token_hash=hashlib.sha256(planted["bare"].encode()).hexdigest(),
            )
        )
        unkeyed = hashlib.sha256(planted["other-key"].encode()).hexdigest()
        db.add(
            ApiToken(
                user_id=admin.id,
                name="other-key",
                token_hash=key_stored_hash(unkeyed, key="a key that is not this server's key"),
            )
        )
    anon = factory.anonymous()
    for secret in planted.values():
        r = anon.get("/api/me", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401, r.text
    # A token the server made is stored keyed, and works.
    made = factory.token_client(admin)
    assert made.get("/api/me").status_code == 200
    secret = made.headers["Authorization"].removeprefix("Bearer ")
    with unit_of_work(write=False) as db:
        hashes = set(db.scalars(select(ApiToken.token_hash)))
    assert hash_secret(secret) in hashes


def test_production_refuses_to_start_without_a_strong_secret_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SVP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SVP_ENVIRONMENT", "production")
    for weak in ("", "changeme", "short-but-not-default"):
        monkeypatch.setenv("SVP_SECRET_KEY", weak)
        with pytest.raises(ValueError, match="SVP_SECRET_KEY"):
            Settings()
    monkeypatch.setenv("SVP_SECRET_KEY", "k" * 40)
    assert Settings().secret_key == "k" * 40
    # Outside production one is made in the data dir when first needed, and kept.
    monkeypatch.setenv("SVP_ENVIRONMENT", "development")
    monkeypatch.setenv("SVP_SECRET_KEY", "")
    assert not (tmp_path / "secret_key").exists()
    first = secret_from_data_dir(tmp_path)
    assert len(first) >= 32
    assert secret_from_data_dir(tmp_path) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_sessions_and_tokens_per_user_are_bounded(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a client signing in or making tokens in a loop added rows without end. A sign-in
    past SVP_SESSIONS_PER_USER ends the oldest session; a token past SVP_TOKENS_PER_USER is 409."""
    monkeypatch.setenv("SVP_SESSIONS_PER_USER", "3")
    monkeypatch.setenv("SVP_TOKENS_PER_USER", "2")
    get_settings.cache_clear()
    user = factory.user("annotator")
    clients = [factory.client(user) for _ in range(5)]
    with unit_of_work(write=False) as db:
        held = db.scalar(
            select(func.count()).select_from(AuthSession).where(AuthSession.user_id == user.id)
        )
    assert held == 3
    # The two oldest ended at once (cache included); the three newest work.
    assert [c.get("/api/me").status_code for c in clients] == [401, 401, 200, 200, 200]
    c = clients[-1]
    assert c.post("/api/tokens", json={"name": "a"}).status_code == 201
    assert c.post("/api/tokens", json={"name": "b"}).status_code == 201
    r = c.post("/api/tokens", json={"name": "c"})
    assert r.status_code == 409
    assert "revoke" in r.json()["detail"]
    first = c.get("/api/tokens").json()[-1]["id"]
    assert c.delete(f"/api/tokens/{first}").status_code == 204
    assert c.post("/api/tokens", json={"name": "c"}).status_code == 201
