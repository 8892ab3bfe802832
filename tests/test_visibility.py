"""Worker identities and infrastructure in what non-admins read (issue 17 #9, #11)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from app.db import unit_of_work
from app.rounds.models import Round
from app.settings import get_settings
from tests.factories import Factory
from tests.procs import free_port

NODE = "svp-4242@secret-host"


def _report(images: int) -> dict[str, object]:
    return {"images": images, "chunks": 3, "workers": {NODE: 2, "svp-77@other-host": 1}}


def test_worker_names_hosts_and_pids_reach_admins_only(factory: Factory) -> None:
    """Every shape that can carry a worker's node name: a job's ``worker``, an embedding's
    ``result.workers``, a core-set's or evaluation's embedding report, a round's metrics."""
    admin = factory.user("admin")
    engineer = factory.user("engineer")
    annotator = factory.user("annotator")
    project = factory.project(engineer, members={annotator: "annotator"})
    for kind, result in (
        ("embed", _report(10)),
        ("coreset", {"kept": 5, "embedding": _report(10)}),
        ("evaluate", {"accuracy": 0.5, "embedding": _report(10)}),
        ("round", {"embedding": _report(10)}),
    ):
        factory.job(project, kind=kind, status="succeeded", worker=NODE, result=result)
    rnd = factory.round_with_selection(project, factory.items(project, 2))
    with unit_of_work() as db:
        db.execute(
            update(Round)
            .where(Round.id == rnd.id)
            .values(metrics={"embedding": _report(10), "selection": {"seconds": 1.0}})
        )
    pid = project.id
    reads = [
        f"/api/projects/{pid}/embeddings",
        f"/api/projects/{pid}/coresets",
        f"/api/projects/{pid}/evaluations",
        f"/api/projects/{pid}/rounds",
        f"/api/rounds/{rnd.id}",
    ]
    engineer_reads = [*reads, "/api/jobs", f"/api/jobs?project_id={pid}"]
    for user, paths in ((annotator, reads), (engineer, engineer_reads)):
        for client in (factory.client(user), factory.token_client(user)):
            for path in paths:
                r = client.get(path)
                assert r.status_code == 200, (path, r.text)
                for secret in ("secret-host", "other-host", "4242", "svp-77"):
                    assert secret not in r.text, (user.role, path, r.text)
    # What the fan-out was still shows, without names.
    r = factory.client(annotator).get(f"/api/projects/{pid}/embeddings")
    assert r.json()[0]["result"]["workers"] == {"worker 1": 2, "worker 2": 1}
    assert r.json()[0]["worker"] is None
    r = factory.client(engineer).get(f"/api/rounds/{rnd.id}")
    assert r.json()["metrics"]["embedding"]["workers"] == {"worker 1": 2, "worker 2": 1}
    assert r.json()["metrics"]["selection"] == {"seconds": 1.0}
    # An admin sees them all.
    a = factory.client(admin)
    for path in [*engineer_reads]:
        assert "secret-host" in a.get(path).text, path
    assert a.get("/api/jobs").json()[0]["worker"] == NODE


def test_health_names_no_host_port_or_path_to_anyone_but_an_admin(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17 #11: with the broker down, anonymous ``/api/health`` showed its host and port."""
    admin = factory.client(factory.user("admin"))
    port = free_port()  # nothing listens there: the broker is down
    monkeypatch.setenv("SVP_INLINE_JOBS", "false")
    monkeypatch.setenv("SVP_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    get_settings.cache_clear()
    for client in (factory.anonymous(), factory.client(factory.user("annotator"))):
        body = client.get("/api/health").json()
        assert body["broker"].startswith("error"), body
        for secret in (str(port), "127.0.0.1", "localhost", "redis://"):
            assert secret not in json.dumps(body), body
    # The admin gets the driver's own words, to find the fault.
    assert str(port) in admin.get("/api/health").json()["broker"]
