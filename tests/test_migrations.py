"""The schema is made only by migrations, and the models agree with them."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from app.migrate import alembic_config
from app.models import Base


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
