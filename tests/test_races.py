"""Unique-constraint races through a real server: a double-click never answers 500 (issue 17 #3).

Threads send the same create at a barrier, each on its own connection to ``svplabel serve``.
On PostgreSQL both inserts pass the "is it taken?" read and one meets the unique index; on
SQLite writes queue one at a time, so the check is the same outcome by another path.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.procs import stack

CLICKS = 8
TRIALS = 4


def _at_once(url: str, token: str, send: Callable[[httpx.Client], httpx.Response]) -> list[int]:
    """``send`` from CLICKS threads released together; the statuses, in no order."""
    clients = [
        httpx.Client(base_url=url, timeout=60, headers={"authorization": f"Bearer {token}"})
        for _ in range(CLICKS)
    ]
    for c in clients:
        assert c.get("/api/me").status_code == 200  # each opens its connection first
    barrier = threading.Barrier(CLICKS)
    codes: list[int] = []

    def click(c: httpx.Client) -> None:
        barrier.wait()
        codes.append(send(c).status_code)

    threads = [threading.Thread(target=click, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return codes


def test_double_clicked_creates_answer_409_or_200_never_500(
    tmp_path: Path, database_url: str
) -> None:
    """Same project name, username and membership at once: one made, the rest 409 (or 200)."""
    with stack(tmp_path, database_url=database_url) as s:
        server = s.serve()
        with httpx.Client(base_url=s.url, timeout=60) as admin:
            r = admin.post(
                "/api/auth/login", json={"username": "admin", "password": "admin-password"}
            )
            assert r.status_code == 200, r.text
            admin.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            token = admin.post("/api/tokens", json={"name": "races"}).json()["token"]
            pid = admin.post("/api/projects", json={"name": "home", "classes": ["a"]}).json()["id"]
            for trial in range(TRIALS):
                codes = _at_once(
                    s.url,
                    token,
                    lambda c, t=trial: c.post(
                        "/api/projects", json={"name": f"twice {t}", "classes": ["a"]}
                    ),
                )
                assert Counter(codes) == {201: 1, 409: CLICKS - 1}, codes
                codes = _at_once(
                    s.url,
                    token,
                    lambda c, t=trial: c.post(
                        "/api/users", json={"username": f"bob{t}", "password": "12345678"}
                    ),
                )
                assert Counter(codes) == {201: 1, 409: CLICKS - 1}, codes
                codes = _at_once(
                    s.url,
                    token,
                    lambda c, t=trial: c.put(
                        f"/api/projects/{pid}/members",
                        json={"username": f"bob{t}", "role": "annotator"},
                    ),
                )
                assert Counter(codes) == {200: CLICKS}, codes
            members = admin.get(f"/api/projects/{pid}/members").json()
            assert sorted(m["username"] for m in members) == [
                "admin",
                *(f"bob{t}" for t in range(TRIALS)),
            ]
            names = [p["name"] for p in admin.get("/api/projects").json()]
            assert sorted(names) == sorted(["home", *(f"twice {t}" for t in range(TRIALS))])
            # No pooled connection was left broken: every request after the races succeeds.
            codes = _at_once(s.url, token, lambda c: c.get("/api/projects"))
            codes += [admin.get(f"/api/projects/{pid}").status_code for _ in range(40)]
            assert set(codes) == {200}, codes
        assert "Traceback" not in server.log(), server.log()[-4000:]
