"""Test data made through the real models and the real application."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import itertools
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, update

from app.auth.models import User
from app.db import unit_of_work
from app.items.models import TEXT_MEDIA_TYPE, Item
from app.jobs.dispatch import wait_for_inline_jobs
from app.jobs.models import Job
from app.labeling import service as labeling
from app.labeling.models import Label
from app.main import create_app
from app.projects.models import Member, Project
from app.rounds.models import Round, Selection
from app.security import hash_password

PASSWORD = "correct horse battery"
_counter = itertools.count(1)


@functools.cache
def password_hash() -> str:
    """PASSWORD hashed once per run: argon2 is slow on purpose (a third of a second here), and
    most tests make several users. Logins still verify it for real."""
    return hash_password(PASSWORD)


def png_bytes(seed: int, size: tuple[int, int] = (16, 16)) -> bytes:
    """A small PNG whose pixels depend on ``seed``, so each seed gives a distinct image."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255 - seed % 256, 0, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Factory:
    """Makes rows through the ORM and clients through the app; closes its clients at exit."""

    def __init__(self) -> None:
        self.app = create_app()
        self._clients: list[TestClient] = []

    def __enter__(self) -> Factory:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # No inline job of this test may run on into the next one (see wait_for_inline_jobs).
        # What the test did not wait for is asked to stop: the embedding an import queues, say,
        # which in this process (where the worker's runners are registered too) would embed a
        # whole pool in the background of the tests after it. A runner stops at its next report.
        with unit_of_work() as db:
            db.execute(
                update(Job)
                .where(Job.status.in_(("queued", "running")))
                .values(cancel_requested=True)
            )
        assert wait_for_inline_jobs(), "an inline job was still running 60 s after the test"
        for c in self._clients:
            c.close()

    def user(self, role: str = "engineer", username: str | None = None) -> User:
        """A user with the shared test password."""
        with unit_of_work() as db:
            user = User(
                username=username or f"{role}{next(_counter)}",
                password_hash=password_hash(),
                role=role,
            )
            db.add(user)
            db.flush()
            return user

    def project(
        self,
        owner: User,
        classes: list[str] | None = None,
        members: dict[User, str] | None = None,
        kind: str | None = None,
        **settings: Any,
    ) -> Project:
        """A project made by ``owner`` through the API, plus members added directly."""
        c = self.client(owner)
        body: dict[str, Any] = {
            "name": f"project {next(_counter)}",
            "classes": classes or ["cat", "dog", "bird"],
            "settings": settings,
        }
        if kind is not None:
            body["kind"] = kind
        r = c.post("/api/projects", json=body)
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        with unit_of_work() as db:
            for user, role in (members or {}).items():
                db.add(Member(project_id=pid, user_id=user.id, role=role))
            project = db.get(Project, pid)
            assert project is not None
            return project

    def items(self, project: Project, n: int, split: str = "pool") -> list[Item]:
        """Items inserted directly (no image files), for tests that only need rows."""
        with unit_of_work() as db:
            rows = [
                Item(
                    project_id=project.id,
                    content_hash=f"{next(_counter):064x}",
                    name=f"img_{i:05d}.png",
                    media_type="image/png",
                    width=16,
                    height=16,
                    split=split,
                )
                for i in range(n)
            ]
            db.add_all(rows)
            db.flush()
            return rows

    def text_items(self, project: Project, texts: list[str], split: str = "pool") -> list[Item]:
        """Text items inserted directly, named ``t<i>``, hashed as the importer hashes them."""
        with unit_of_work() as db:
            rows = [
                Item(
                    project_id=project.id,
                    content_hash=hashlib.sha256(text.encode()).hexdigest(),
                    name=f"t{i}",
                    media_type=TEXT_MEDIA_TYPE,
                    text=text,
                    text_chars=len(text),
                    split=split,
                )
                for i, text in enumerate(texts)
            ]
            db.add_all(rows)
            db.flush()
            return rows

    def round_with_selection(
        self, project: Project, items: list[Item], status: str = "labeling"
    ) -> Round:
        """A round written directly with ``items`` as its batch, ranked in the order given."""
        with unit_of_work() as db:
            number = (
                db.scalar(select(func.max(Round.number)).where(Round.project_id == project.id)) or 0
            ) + 1
            rnd = Round(
                project_id=project.id,
                number=number,
                status=status,
                strategy="least_confidence",
                batch_size=len(items),
                proxy={},
                seed=number,
                metrics={},
            )
            db.add(rnd)
            db.flush()
            db.add_all(
                Selection(
                    round_id=rnd.id,
                    item_id=item.id,
                    rank=rank,
                    score=1.0 - rank / (len(items) + 1),
                    suggested_label=project.classes[rank % len(project.classes)],
                    suggested_prob=0.5,
                )
                for rank, item in enumerate(items)
            )
            db.flush()
            return rnd

    def label_history(self, *labels: Label) -> str | None:
        """Label rows written as given (undone ones, chosen times), then their item's current
        label settled by the one step that keeps ``Item.label`` and ``Selection.labeled`` in
        step with the history (``app.labeling.service.settle_item``); that label.

        For a history no request could write in one test (times far apart, an author who is
        gone); a label the app may write goes through ``POST /api/labels``.
        """
        (item_id,) = {label.item_id for label in labels}
        with unit_of_work() as db:
            db.add_all(labels)
            db.flush()
            return labeling.settle_item(db, item_id=item_id)

    def job(self, project: Project | None = None, kind: str = "import", **fields: Any) -> Job:
        """A job row inserted directly (nothing is sent), e.g. ``status="failed"``."""
        with unit_of_work() as db:
            fields.setdefault("params", {})
            job = Job(kind=kind, project_id=project.id if project else None, **fields)
            db.add(job)
            db.flush()
            return job

    def wait_job(self, job_id: int, timeout: float = 60.0) -> Job:
        """Poll a job's row until it has finished (the inline pool runs it in a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            with unit_of_work(write=False) as db:
                job = db.get(Job, job_id)
                assert job is not None, f"job {job_id} does not exist"
                if job.status in ("succeeded", "failed", "canceled"):
                    return job
            assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout}s"
            time.sleep(0.05)

    def anonymous(self) -> TestClient:
        """A client with no credentials."""
        c = TestClient(self.app)
        self._clients.append(c)
        return c

    def client(self, user: User) -> TestClient:
        """A client signed in by cookie, sending the CSRF token on every request."""
        c = self.anonymous()
        r = c.post("/api/auth/login", json={"username": user.username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c

    def token_client(self, user: User) -> TestClient:
        """A client authenticated by a bearer token, without cookies."""
        r = self.client(user).post("/api/tokens", json={"name": "test"})
        assert r.status_code == 201, r.text
        c = self.anonymous()
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        return c


def get_watching_slots(
    app: Any, path: str, *, authorization: str, query: bytes = b""
) -> tuple[list[tuple[str, bool]], bytes]:
    """GET ``path`` straight through the ASGI app, noting at each message it sends whether the
    request slots were all taken (``app.db``'s semaphore locked); the messages and the body.

    Meant for a test that first shrinks the pool to one request slot: a slot the request still
    held while its body went out would show as locked. The client stays connected throughout.
    """
    from app import db as app_db

    seen: list[tuple[str, bool]] = []
    body = bytearray()

    async def drive() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": [(b"host", b"testserver"), (b"authorization", authorization.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        requests = [{"type": "http.request", "body": b"", "more_body": False}]
        never = asyncio.Event()

        async def receive() -> dict[str, object]:
            if requests:
                return requests.pop()
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            slots = app_db._request_slots[asyncio.get_running_loop()]
            seen.append((message["type"], slots.connections.locked()))
            body.extend(message.get("body", b""))

        await app(scope, receive, send)

    asyncio.run(drive())
    return seen, bytes(body)
