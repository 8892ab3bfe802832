"""Health and metrics: what anyone may read of the service's state, and what only admins see."""

from __future__ import annotations

from app.db import unit_of_work
from app.jobs.models import WorkerNode
from tests.factories import Factory


def test_health_and_metrics(factory: Factory) -> None:
    c = factory.anonymous()
    r = c.get("/api/health")
    assert r.status_code == 200
    assert r.json()["database"] == "ok"
    assert set(r.json()) >= {"database", "broker", "workers"}
    assert c.get("/metrics").status_code == 401  # admins and the scraper token only
    text = factory.client(factory.user("admin")).get("/metrics").text
    assert 'svp_http_requests_total{method="GET",route="/api/health",status="200"}' in text
    assert c.get("/openapi.json").status_code == 200


def test_health_shows_where_workers_run_to_admins_only(factory: Factory) -> None:
    with unit_of_work() as db:
        db.add(WorkerNode(name="celery@secret-host", hostname="secret-host", pid=4242))
    admin = factory.client(factory.user("admin"))
    full = admin.get("/api/health").json()
    assert full["worker_count"] == 1
    assert full["workers"][0]["hostname"] == "secret-host"
    assert full["workers"][0]["pid"] == 4242
    for c in (factory.anonymous(), factory.client(factory.user("engineer"))):
        r = c.get("/api/health")
        assert r.status_code == 200
        body = r.json()
        assert (body["database"], body["worker_count"], len(body["workers"])) == ("ok", 1, 1)
        assert "secret-host" not in r.text
        assert "4242" not in r.text
