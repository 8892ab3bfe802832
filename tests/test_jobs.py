"""The job monitor: who sees which jobs, filters and pages, and the retry and cancel rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.db import unit_of_work, utcnow
from app.jobs.models import Job
from app.jobs.runtime import JobCanceled, JobContext
from app.rounds.models import Round
from app.settings import Settings, get_settings
from tests.factories import Factory


@pytest.fixture
def broker_file(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Jobs go to the embedded broker (no worker reads it), so a test can see what was sent."""
    monkeypatch.setenv("SVP_INLINE_JOBS", "false")
    get_settings.cache_clear()
    return get_settings().data_dir / "broker.sqlite3"


def waiting_messages(broker: Path) -> int:
    """Messages in the embedded broker that no worker has taken."""
    with sqlite3.connect(broker) as conn:
        return int(conn.execute("SELECT count(*) FROM kombu_message WHERE visible").fetchone()[0])


def job_row(job_id: int) -> Job:
    with unit_of_work(write=False) as db:
        job = db.get(Job, job_id)
        assert job is not None
        return job


def test_anonymous_gets_401(factory: Factory) -> None:
    assert factory.anonymous().get("/api/jobs").status_code == 401


def test_annotator_gets_403(factory: Factory) -> None:
    engineer = factory.user("engineer")
    annotator = factory.user("annotator")
    project = factory.project(engineer, members={annotator: "annotator"})
    job = factory.job(project)
    c = factory.client(annotator)
    assert c.get("/api/jobs").status_code == 403
    assert c.get(f"/api/jobs/{job.id}").status_code == 403


def test_admin_sees_every_job_an_engineer_those_of_own_projects(factory: Factory) -> None:
    admin = factory.user("admin")
    mine, theirs = factory.user("engineer"), factory.user("engineer")
    only_annotating = factory.user("engineer")
    project_a = factory.project(mine, members={only_annotating: "annotator"})
    project_b = factory.project(theirs)
    job_a = factory.job(project_a)
    job_b = factory.job(project_b, kind="round")
    job_none = factory.job(None, kind="evaluate")

    assert [j["id"] for j in factory.client(admin).get("/api/jobs").json()] == [
        job_none.id,
        job_b.id,
        job_a.id,
    ]
    c = factory.client(mine)
    assert [j["id"] for j in c.get("/api/jobs").json()] == [job_a.id]
    assert c.get(f"/api/jobs/{job_a.id}").status_code == 200
    assert c.get(f"/api/jobs/{job_b.id}").status_code == 404
    assert c.post(f"/api/jobs/{job_b.id}/cancel").status_code == 404
    # An engineer by global role who only annotates in the project does not see its jobs.
    assert factory.client(only_annotating).get("/api/jobs").json() == []


def test_job_json_has_the_contract_shape(factory: Factory) -> None:
    admin = factory.user("admin")
    job = factory.job(None, status="failed", error="boom", attempts=2, worker="w1")
    body = factory.client(admin).get(f"/api/jobs/{job.id}").json()
    contract = {"id", "kind", "status", "stage", "progress", "project_id", "error", "result"}
    contract |= {"created_at", "started_at", "finished_at"}
    assert contract <= set(body)
    assert (body["status"], body["error"], body["attempts"], body["worker"]) == (
        "failed",
        "boom",
        2,
        "w1",
    )
    assert factory.client(admin).get("/api/jobs/999999").status_code == 404


def test_filters_and_keyset_pages(factory: Factory) -> None:
    admin = factory.user("admin")
    project = factory.project(admin)
    other = factory.project(admin)
    failed = factory.job(project, status="failed")
    running_round = factory.job(project, kind="round", status="running")
    queued_other = factory.job(other)
    c = factory.client(admin)

    def ids(query: str) -> list[int]:
        r = c.get(f"/api/jobs?{query}")
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()]

    assert ids("status=failed") == [failed.id]
    assert ids("kind=round") == [running_round.id]
    assert ids(f"project_id={other.id}") == [queued_other.id]
    assert ids(f"project_id={project.id}&kind=import") == [failed.id]
    assert ids("limit=2") == [queued_other.id, running_round.id]
    assert ids(f"limit=2&after={running_round.id}") == [failed.id]
    assert ids(f"after={failed.id}") == []
    assert c.get("/api/jobs?limit=501").status_code == 422
    assert c.get("/api/jobs?limit=0").status_code == 422
    assert c.get("/api/jobs?status=exploded").status_code == 422


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_retry_queues_again_and_sends_after_commit(
    factory: Factory, broker_file: Path, status: str
) -> None:
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    job = factory.job(
        project, status=status, error="boom", attempts=3, progress=0.4, finished_at=utcnow()
    )
    r = factory.client(engineer).post(f"/api/jobs/{job.id}/retry")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["error"], r.json()["attempts"]) == ("queued", None, 0)
    row = job_row(job.id)
    assert (row.status, row.finished_at, row.progress) == ("queued", None, 0.0)
    assert row.sent_at is not None
    assert waiting_messages(broker_file) == 1


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_retry_refuses_a_job_that_did_not_fail(factory: Factory, status: str) -> None:
    admin = factory.user("admin")
    job = factory.job(None, status=status)
    r = factory.client(admin).post(f"/api/jobs/{job.id}/retry")
    assert r.status_code == 409
    assert job_row(job.id).status == status


def test_cancel_a_queued_job_ends_it_now(factory: Factory) -> None:
    admin = factory.user("admin")
    job = factory.job(None)
    r = factory.client(admin).post(f"/api/jobs/{job.id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled"
    row = job_row(job.id)
    assert (row.status, row.cancel_requested) == ("canceled", True)
    assert row.finished_at is not None


def test_cancel_a_running_job_stops_it_at_its_next_progress_report(factory: Factory) -> None:
    admin = factory.user("admin")
    job = factory.job(None, status="running")
    r = factory.client(admin).post(f"/api/jobs/{job.id}/cancel")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    ctx = JobContext(job_id=job.id, kind="import", project_id=None, params={})
    with pytest.raises(JobCanceled):
        ctx.progress("importing", 0.5)


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_cancel_refuses_a_finished_job(factory: Factory, status: str) -> None:
    admin = factory.user("admin")
    job = factory.job(None, status=status)
    assert factory.client(admin).post(f"/api/jobs/{job.id}/cancel").status_code == 409
    assert job_row(job.id).status == status


def _round(project_id: int, number: int, status: str, job_id: int | None) -> int:
    with unit_of_work() as db:
        rnd = Round(
            project_id=project_id,
            number=number,
            status=status,
            strategy="random",
            batch_size=10,
            seed=1,
            job_id=job_id,
        )
        db.add(rnd)
        db.flush()
        return rnd.id


def round_status(round_id: int) -> str:
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, round_id)
        assert rnd is not None
        return rnd.status


def test_retrying_a_round_job_takes_its_round_back_to_queued(
    factory: Factory, broker_file: Path
) -> None:
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    job = factory.job(project, kind="round", status="failed", error="worker lost 3 times")
    round_id = _round(project.id, 1, "failed", job.id)
    c = factory.client(engineer)
    assert c.post(f"/api/jobs/{job.id}/retry").status_code == 200
    assert round_status(round_id) == "queued"


def test_retrying_a_round_job_while_another_round_is_active_is_409(factory: Factory) -> None:
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    job = factory.job(project, kind="round", status="failed")
    round_id = _round(project.id, 1, "failed", job.id)
    _round(project.id, 2, "running", factory.job(project, kind="round", status="running").id)
    assert factory.client(engineer).post(f"/api/jobs/{job.id}/retry").status_code == 409
    assert (job_row(job.id).status, round_status(round_id)) == ("failed", "failed")


def test_canceling_a_queued_round_job_cancels_its_round(factory: Factory) -> None:
    engineer = factory.user("engineer")
    project = factory.project(engineer)
    job = factory.job(project, kind="round")
    round_id = _round(project.id, 1, "queued", job.id)
    assert factory.client(engineer).post(f"/api/jobs/{job.id}/cancel").status_code == 200
    assert round_status(round_id) == "canceled"


def test_an_annotator_who_is_engineer_of_a_project_sees_its_jobs(factory: Factory) -> None:
    owner, person = factory.user("engineer"), factory.user("annotator")
    theirs = factory.project(owner, members={person: "engineer"})
    other = factory.project(owner, members={person: "annotator"})
    visible, hidden = factory.job(theirs), factory.job(other)
    c = factory.client(person)
    r = c.get("/api/jobs")
    assert r.status_code == 200, r.text
    assert [j["id"] for j in r.json()] == [visible.id]
    assert c.get(f"/api/jobs/{visible.id}").status_code == 200
    assert c.get(f"/api/jobs/{hidden.id}").status_code == 404
