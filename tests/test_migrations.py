"""The schema is made only by migrations, and the models agree with them."""

from __future__ import annotations

import hashlib

from alembic import command
from sqlalchemy import create_engine, insert, inspect, select

from app.auth.models import ApiToken
from app.migrate import alembic_config
from app.models import Base
from app.security import hash_secret, new_secret
from tests.factories import Factory


def test_upgrade_head_then_check_finds_no_drift(database_url: str) -> None:
    # The fixture's database was made by `alembic upgrade head`; `check` raises on any drift.
    command.check(alembic_config(database_url))
    engine = create_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    engine = create_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_keyed_secret_hashes_migration_keeps_sessions_and_tokens(
    factory: Factory, database_url: str
) -> None:
    # Rows stored by a release before 0004 hold the bare SHA-256 of their secret.
    config = alembic_config(database_url)
    user = factory.user("engineer")
    command.downgrade(config, "0003")
    secret = "svp_" + new_secret()
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(ApiToken.__table__).values(
                    user_id=user.id,
                    name="old",
                    token_hash=hashlib.sha256(secret.encode()).digest().hex(),
                )
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            stored = conn.execute(select(ApiToken.token_hash)).scalar_one()
    finally:
        engine.dispose()
    assert stored == hash_secret(secret) != hashlib.sha256(secret.encode()).hexdigest()
    c = factory.anonymous()
    r = c.get("/api/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    assert r.json()["username"] == user.username
