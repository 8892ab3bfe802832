"""The hot path's driver-level SQL: same values, same errors, same transaction as SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from app.db import UTCDateTime, get_engine, unit_of_work
from app.labeling.models import Lease
from app.rawsql import Raw, _pyformat, read_time, sqlite_time
from tests.conftest import BACKEND
from tests.factories import Factory


def test_parameters_become_psycopg_style_without_touching_casts_or_percent_signs() -> None:
    sql = "SELECT CAST(:ids AS integer[]), x::text, '%' || :name, a % 7 FROM t WHERE b = :b"
    assert _pyformat(sql) == (
        "SELECT CAST(%(ids)s AS integer[]), x::text, '%%' || %(name)s, a %% 7 FROM t "
        "WHERE b = %(b)s"
    )


@pytest.mark.parametrize(
    "moment",
    [datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC)],
)
def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them(moment: datetime) -> None:
    # Text comparison (expires_at >= :now) is only right if both sides share one format.
    dialect = sqlite.dialect()
    expected = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(moment)  # type: ignore[misc]
    assert sqlite_time(moment) == expected
    assert read_time(sqlite_time(moment)) == moment
    with pytest.raises(ValueError, match="naive"):
        sqlite_time(moment.replace(tzinfo=None))


def test_values_written_raw_read_back_through_the_orm(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    item = factory.items(project, 1)[0]
    rnd = factory.round_with_selection(project, [item])
    until = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with unit_of_work() as db:
        raw = Raw(db)
        raw.rows(
            "INSERT INTO leases (item_id, round_id, user_id, expires_at, created_at) "
            "VALUES (:item, :round, :user, :until, :until)",
            {"item": item.id, "round": rnd.id, "user": eng.id, "until": until},
        )
        # The same transaction: the ORM sees the row before the commit.
        assert db.scalar(select(Lease.expires_at).where(Lease.item_id == item.id)) == until
        row = raw.first(
            "SELECT expires_at, :flag FROM leases WHERE item_id = :i", {"i": item.id, "flag": 1}
        )
        assert row is not None
        assert read_time(row[0]) == until
    with unit_of_work(write=False) as db:
        assert db.scalar(select(Lease.expires_at).where(Lease.item_id == item.id)) == until


def test_driver_errors_arrive_as_sqlalchemys_and_roll_the_unit_of_work_back(
    factory: Factory,
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    item = factory.items(project, 1)[0]
    rnd = factory.round_with_selection(project, [item])
    insert = (
        "INSERT INTO leases (item_id, round_id, user_id, expires_at, created_at) "
        "VALUES (:item, :round, :user, :now, :now)"
    )
    params = {"item": item.id, "round": rnd.id, "user": eng.id, "now": datetime.now(UTC)}

    def twice() -> None:
        with unit_of_work() as db:
            raw = Raw(db)
            raw.rows(insert, params)
            raw.rows(insert, params)  # leases.item_id is unique

    def no_table() -> None:
        with unit_of_work() as db:
            Raw(db).rows("SELECT * FROM no_such_table")

    # The app answers these by class: IntegrityError 409, OperationalError 503.
    with pytest.raises(IntegrityError):
        twice()
    with pytest.raises((OperationalError, ProgrammingError)):
        no_table()
    with unit_of_work(write=False) as db:
        assert db.scalar(text("SELECT count(*) FROM leases")) == 0


@pytest.mark.skipif(BACKEND != "postgres", reason="a dropped connection is a PostgreSQL event")
def test_a_connection_the_database_dropped_is_not_pooled_again(factory: Factory) -> None:
    factory.user("engineer")
    engine = get_engine()

    def dropped() -> None:
        with unit_of_work() as db:
            Raw(db).rows("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(OperationalError) as caught:
        dropped()
    assert caught.value.connection_invalidated
    # The pool hands out a live connection next, without a pre-ping having to find out.
    checked_in = engine.pool.checkedin()
    with unit_of_work() as db:
        assert Raw(db).first("SELECT 1") == (1,)
    assert engine.pool.checkedin() <= checked_in + 1
