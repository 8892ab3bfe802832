"""Schemathesis over the whole OpenAPI schema: no 5xx, and every answer is one the schema declares.

Every operation of ``/openapi.json`` is fuzzed (input that fits its schema, and input that
breaks it) against the real app on this run's database, signed in as an admin, as an annotator of
the project, and anonymous. The world it runs in has real objects (a project with imported images,
a round in labelling, a label, jobs, tokens), and small generated ids are mapped onto them, so the
cases reach handlers past their 404s. Checks: no server error; the status code, content type and
body are the ones the schema declares for that operation.

Deterministic: a fixed seed and no Hypothesis example database, so a run in CI sends the same
requests as the run that passed here. Each operation is driven by Hypothesis through schemathesis'
public strategies (``APIOperation.as_strategy``) rather than its pytest plugin, whose lazy
schemas rename pytest's nodes through an attribute pytest 9.2 no longer has.

Left out, and why:
- ``GET /api/rounds/{round_id}/events``: server-sent events that stay open while the round is
  active; a stream has no end for a fuzzer to check (tests/test_rounds_api.py covers it).

State a case may destroy for the cases after it (the run's own token deleted, its user
deactivated or demoted, the annotator removed from the project) is put back before each case, so
every case runs with the credentials it was set up with. ``POST /api/auth/logout`` is fuzzed like
the rest: the run signs in with a bearer token, which logout (a cookie's) leaves alone.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from app.auth.models import ApiToken, User
from app.auth.service import create_token
from app.db import unit_of_work
from app.labeling.models import Label
from app.projects.models import Member
from tests.factories import Factory, png_bytes

pytestmark = pytest.mark.slow

# A deeper or another run, by hand: SVP_FUZZ_SCALE=10 SVP_FUZZ_SEED=7 pytest tests/test_fuzz_api.py
SEED = int(os.environ.get("SVP_FUZZ_SEED", "20240917"))
SCALE = int(os.environ.get("SVP_FUZZ_SCALE", "1"))
# Cases per operation and principal that fit the schema; those that break it are half as many,
# at least one.
# Sized so that the three principals' ~700 cases take about half a minute on two busy cores.
MAX_EXAMPLES = {"admin": 6, "annotator": 4, "anonymous": 1}
EXCLUDED = ["/api/rounds/{round_id}/events"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Generated ids up to this value are mapped onto real objects; larger ones stay as they are.
MAPPED_IDS = 16


@dataclass
class World:
    """The objects the fuzzer's ids are mapped onto, and the principal it calls as."""

    principal: str
    ids: dict[str, list[int]]
    memberships: list[tuple[int, int, str]]
    roles: dict[int, str]
    user_id: int | None = None
    token_id: int | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # the bearer token
    # Whether a case since the last restore could have changed anything (it was not a GET).
    dirty: bool = True

    def restore(self) -> None:
        """Put back what an earlier case may have taken from the principals of this run."""
        if not self.dirty:
            return
        self.dirty = False
        with unit_of_work() as db:
            for uid, role in self.roles.items():
                user = db.get(User, uid)
                assert user is not None
                user.active, user.role = True, role
            for pid, uid, role in self.memberships:
                member = db.scalar(
                    select(Member).where(Member.project_id == pid, Member.user_id == uid)
                )
                if member is None:
                    db.add(Member(project_id=pid, user_id=uid, role=role))
                else:
                    member.role = role
            if self.user_id is not None and (
                self.token_id is None or db.get(ApiToken, self.token_id) is None
            ):
                user = db.get(User, self.user_id)
                assert user is not None
                token, secret = create_token(db, user=user, name="fuzz")
                self.token_id = token.id
                self.ids["token_id"] = [token.id]
                self.headers = {"Authorization": f"Bearer {secret}"}

    def map_ids(self, case: Case) -> None:
        """Small generated ids become real ones, so the handler gets past its lookup."""
        params = case.path_parameters or {}
        for name, value in params.items():
            real = self.ids.get(name)
            if real and isinstance(value, int) and 1 <= value <= MAPPED_IDS:
                params[name] = real[(value - 1) % len(real)]


def _zip_of_images(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"img_{i:02d}.png", png_bytes(1000 + i))
    return buf.getvalue()


def _text_worker_jobs(factory: Factory, texts: Any) -> list[int]:
    """A text project's jobs as the worker leaves them (tests/test_e2e_text.py made these
    shapes): a finished embedding, evaluations with the text targets and a fastText core-set,
    and failed ones with text parameters for the retry and cancel routes."""
    linear = {"arch": "linear", "backbone": "glove_6b_50d", "image_size": 0}
    vdcnn = {"arch": "vdcnn", "epochs": 1, "batch_size": 8, "lr": None, "image_size": 32}
    fasttext = {"arch": "fasttext", "dim": 50, "epochs": 5, "lr": None, "word_ngrams": 2}
    jobs = [
        factory.job(
            texts,
            kind="embed",
            status="succeeded",
            params={"backbone": "glove_6b_50d", "image_size": 0},
            result={"backbone": "glove_6b_50d", "image_size": 0, "total": 6, "images": 6},
        ),
        factory.job(
            texts,
            kind="evaluate",
            status="succeeded",
            params={"target": linear, "seed": 1},
            result={"target": "linear", "labels": 21, "test_items": 15, "accuracy": 1.0},
        ),
        factory.job(
            texts,
            kind="coreset",
            status="succeeded",
            params={"fraction": 0.5, "strategy": "margin", "proxy": fasttext, "seed": 3},
            result={"items": [], "fraction": 0.5, "strategy": "margin", "proxy": fasttext},
        ),
        factory.job(
            texts,
            kind="evaluate",
            status="failed",
            error="fuzz world",
            params={"target": {**vdcnn, "backbone": "minilm_l6"}, "seed": 2},
        ),
        factory.job(
            texts,
            kind="coreset",
            status="failed",
            error="fuzz world",
            params={"fraction": 0.5, "strategy": "kcenter", "proxy": fasttext, "seed": 4},
        ),
    ]
    return [job.id for job in jobs]


def build_world(factory: Factory, principal: str) -> World:
    """A project with imported images, a round in labelling with a label, jobs and a token; and
    a text project with imported texts and a round of its own (DESIGN 4c)."""
    admin = factory.user("admin")
    annotator = factory.user("annotator")
    engineer = factory.user("engineer")
    project = factory.project(engineer, members={annotator: "annotator"})
    c = factory.client(engineer)
    r = c.post(
        f"/api/projects/{project.id}/items",
        files={"file": ("pool.zip", _zip_of_images(6), "application/zip")},
        data={"split": "pool"},
    )
    assert r.status_code == 202, r.text
    import_job = factory.wait_job(r.json()["id"])
    assert import_job.status == "succeeded", import_job.error
    with unit_of_work(write=False) as db:
        from app.items.models import Item

        items = list(db.scalars(select(Item).where(Item.project_id == project.id)))
    rnd = factory.round_with_selection(project, items[:4])
    texts = factory.project(
        engineer, members={annotator: "annotator"}, kind="text", classes=["pos", "neg"]
    )
    rows = "text,label\n" + "".join(
        f"review {i} =1+{i},{'pos' if i % 2 else ''}\n" for i in range(6)
    )
    r = c.post(
        f"/api/projects/{texts.id}/items",
        files={"file": ("pool.csv", rows.encode(), "text/csv")},
        data={"split": "pool"},
    )
    assert r.status_code == 202, r.text
    text_job = factory.wait_job(r.json()["id"])
    assert text_job.status == "succeeded", text_job.error
    with unit_of_work(write=False) as db:
        text_items = list(db.scalars(select(Item).where(Item.project_id == texts.id)))
    text_round = factory.round_with_selection(texts, text_items[:3])
    text_jobs = _text_worker_jobs(factory, texts)
    failed = factory.job(project, kind="import", status="failed", error="fuzz world")
    ann = factory.client(annotator)
    r = ann.post(f"/api/projects/{project.id}/queue/next", params={"n": 2})
    assert r.status_code == 200, r.text
    leased = r.json()
    r = ann.post(
        "/api/labels",
        json={"item_id": leased[0]["item_id"], "label": project.classes[0], "key": "fuzz-1"},
    )
    assert r.status_code == 201, r.text
    with unit_of_work(write=False) as db:
        labels = list(db.scalars(select(Label.id)))
        memberships = [(m.project_id, m.user_id, m.role) for m in db.scalars(select(Member)).all()]
    users = {"admin": admin, "annotator": annotator}
    world = World(
        principal=principal,
        ids={
            "project_id": [project.id, texts.id],
            "item_id": [i.id for i in items + text_items],
            "round_id": [rnd.id, text_round.id],
            "label_id": labels,
            "job_id": [import_job.id, failed.id, text_job.id, *text_jobs],
            "user_id": [admin.id, annotator.id, engineer.id],
        },
        memberships=memberships,
        roles={u.id: u.role for u in (admin, annotator, engineer)},
        user_id=users[principal].id if principal in users else None,
    )
    world.restore()
    return world


@pytest.fixture(params=["admin", "annotator", "anonymous"])
def fuzz_world(request: pytest.FixtureRequest, factory: Factory) -> World:
    """The world, signed in as the principal this instance of the test fuzzes as."""
    return build_world(factory, request.param)


def _operations(app: Any) -> list[APIOperation]:
    """Every operation of the app's schema, as served at /openapi.json, less the excluded."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path=EXCLUDED)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz_operation(operation: APIOperation, world: World, totals: Counter[str]) -> None:
    """Positive and negative cases for one operation, each sent and checked."""

    def check(case: Case) -> None:
        world.restore()
        world.map_ids(case)
        world.dirty = case.method.upper() != "GET"
        totals["cases"] += 1
        response = case.call(headers=world.headers)
        totals[f"{response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=CHECKS, headers=world.headers)

    examples = MAX_EXAMPLES[world.principal] * SCALE
    for mode, n in (
        (GenerationMode.POSITIVE, examples),
        (GenerationMode.NEGATIVE, max(examples // 2, 1)),
    ):
        run = settings(
            max_examples=n,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )(seed(SEED)(given(operation.as_strategy(generation_mode=mode))(check)))
        try:
            run()
        except Unsatisfiable:
            # No input of this operation can break its schema (it takes no parameters).
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_api_answers_as_its_schema_says(
    fuzz_world: World, factory: Factory, subtests: pytest.Subtests
) -> None:
    """No 5xx; status, content type and body as the schema declares, for every operation."""
    operations = _operations(factory.app)
    totals: Counter[str] = Counter()
    failed: list[str] = []
    for operation in operations:
        with subtests.test(operation=operation.label):
            try:
                fuzz_operation(operation, fuzz_world, totals)
            except BaseException:
                failed.append(operation.label)
                raise
    print(
        f"\nschemathesis as {fuzz_world.principal}: {len(operations)} operations, "
        f"{totals['cases']} cases, answers {dict(sorted(totals.items()))}, "
        f"{len(failed)} failing operations {failed}"
    )
