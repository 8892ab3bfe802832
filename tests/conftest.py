"""Shared fixtures: a migrated database per test on SQLite or PostgreSQL, clients, factories.

The backend is chosen for the whole run by ``SVP_TEST_DATABASE`` (``sqlite``, the default, or
``postgres``, at ``SVP_TEST_POSTGRES_URL``). Each test starts from an empty, migrated schema:
SQLite gets a fresh copy of a migrated template file, PostgreSQL a truncated database.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.db import reset_caches
from app.migrate import upgrade
from app.settings import Settings, get_settings
from tests.factories import Factory
from tests.s3server import S3Server, s3_server

# The browser tests' fixtures (``browser``, ``stack``) live beside their helpers.
pytest_plugins = ["tests.browser_support"]

BACKEND = os.environ.get("SVP_TEST_DATABASE", "sqlite")
POSTGRES_URL = os.environ.get(
    "SVP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_report_header() -> str:
    """Say which database the run uses."""
    return f"svp-label test database: {BACKEND}"


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate once per run: a template SQLite file, or a PostgreSQL database of the run's own."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.sqlite3"
        upgrade(f"sqlite:///{path}")
        yield str(path)
        return
    if BACKEND != "postgres":
        raise pytest.UsageError(f"SVP_TEST_DATABASE must be sqlite or postgres, not {BACKEND!r}")
    name = f"svp_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    """An empty, migrated database for this test alone."""
    if BACKEND == "sqlite":
        path = tmp_path / "svp.sqlite3"
        shutil.copyfile(database_template, path)
        return f"sqlite:///{path}"
    engine = create_engine(database_template)
    with engine.begin() as conn:
        tables = conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        ).scalars()
        names = ", ".join(f'"{t}"' for t in tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return database_template


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for this test: its own data dir and database, jobs run in the server's pool."""
    monkeypatch.setenv("SVP_ENVIRONMENT", "test")
    monkeypatch.setenv("SVP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SVP_DATABASE_URL", database_url)
    monkeypatch.setenv("SVP_INLINE_JOBS", "true")
    monkeypatch.delenv("SVP_BROKER_URL", raising=False)
    reset_caches()
    yield get_settings()
    reset_caches()


@pytest.fixture
def factory(settings: Settings) -> Iterator[Factory]:
    """Makes users, projects, items and logged-in clients for this test."""
    with Factory() as f:
        yield f


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    """The broker for real workers: Redis at SVP_TEST_REDIS_URL when set, else the embedded one.

    Each test gets its own Redis key prefix, so concurrent runs sharing one Redis never take
    each other's jobs.
    """
    redis_url = os.environ.get("SVP_TEST_REDIS_URL")
    if redis_url:
        sep = "&" if "?" in redis_url else "?"
        return f"{redis_url}{sep}global_keyprefix=svptest-{uuid.uuid4().hex[:12]}-"
    return f"sqla+sqlite:///{tmp_path / 'broker' / 'broker.sqlite3'}"


def needs_shared_data() -> pytest.MarkDecorator:
    """Skip a test when ../shared/data (CIFAR-10) is absent, as in a user's clone."""
    return pytest.mark.skipif(
        not (SHARED_DATA / "cifar10" / "train.zip").exists(),
        reason=f"needs CIFAR-10 at {SHARED_DATA / 'cifar10'} (absent in a plain clone)",
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API (moto in server mode) on 127.0.0.1 for the whole run; tests make buckets."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_settings(
    settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``settings`` with item bytes in a fresh bucket of the test S3 server (DESIGN 4d)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SVP_STORAGE_URL", f"s3://{s3.bucket()}/svp")
    reset_caches()
    yield get_settings()
    reset_caches()
