"""Driver-level SQL for the labelling hot path, inside the session's own transaction.

The hot routes (``queue/next``, ``POST /api/labels``) run a few fixed statements thousands of
times a minute. Through SQLAlchemy each costs about twice its round trip (measured on this
project's 2-core machine kind, PostgreSQL on loopback: ``text()`` through the session 250 us,
the same statement on the driver's cursor 127 us), and the Core statements built per call cost
more again. Here a statement is a constant string with ``:name`` parameters, handed to the
DBAPI cursor of the connection the unit of work already holds: same transaction, same commit or
rollback, no ORM state. Everything else keeps to SQLAlchemy.

Parameters and results are translated as the ORM's column types store them: timestamps are
timezone-aware UTC datetimes (SQLite keeps them as naive UTC text with microseconds, which also
sorts and compares as text), booleans are 0/1 on SQLite, JSON comes back parsed on both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

R = TypeVar("R", bound=NamedTuple)

# ``:name`` but not the ``::type`` cast of PostgreSQL, nor a colon inside a word.
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


@lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``:name`` parameters in psycopg's style (a literal % doubled first)."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def sqlite_time(value: datetime) -> str:
    """A timestamp as SQLAlchemy stores it on SQLite: naive UTC text, always with microseconds."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def read_time(value: datetime | str | None) -> datetime | None:
    """A timestamp column's value, timezone-aware in UTC, from either back end."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_json(value: Any) -> Any:
    """A JSON column's value: psycopg parses jsonb itself, SQLite hands back the text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


class Raw:
    """The unit of work's DBAPI connection, for the hot path's fixed statements.

    Made from a session, it flushes the session's pending changes and procures its connection,
    so the transaction has begun (``BEGIN IMMEDIATE`` on SQLite for a writing unit of work),
    these statements see what the session wrote, and its commit or rollback covers them.
    """

    __slots__ = ("_connection", "_dbapi", "postgres")

    def __init__(self, db: Session) -> None:
        # What the session holds unwritten goes first, as before any query through it.
        db.flush()
        connection = db.connection()
        self._connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None, "the session's connection is open"
        self._dbapi = dbapi

    def _bind(self, value: Any) -> Any:
        if self.postgres:
            return value
        if isinstance(value, datetime):
            return sqlite_time(value)
        if isinstance(value, list | tuple):
            # Lists reach SQLite as JSON text, read back with json_each(); PostgreSQL takes
            # them as arrays.
            return json.dumps(list(value))
        return value

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """Every row the statement returns (none for a statement without a result)."""
        return self._execute(sql, params, None)

    def fetch(self, sql: str, params: Mapping[str, Any] | None, into: type[R]) -> list[R]:
        """Every row, each as ``into``, whose fields are the statement's column names in order."""
        return self._execute(sql, params, into)

    def fetch_one(self, sql: str, params: Mapping[str, Any] | None, into: type[R]) -> R | None:
        """The first row as ``into`` (see ``fetch``), or None."""
        found = self._execute(sql, params, into)
        return found[0] if found else None

    def _execute(
        self, sql: str, params: Mapping[str, Any] | None, into: type[Any] | None
    ) -> list[Any]:
        bound = {k: self._bind(v) for k, v in (params or {}).items()}
        dialect = self._connection.dialect
        cursor = self._dbapi.cursor()
        try:
            cursor.execute(_pyformat(sql) if self.postgres else sql, bound)
            if cursor.description is None:
                return []
            found = cursor.fetchall()
            if into is None:
                return list(found)
            _check_names(sql, into, tuple(c[0] for c in cursor.description))
            return [into._make(row) for row in found]
        except dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy's own execution does: the driver's error wrapped in SQLAlchemy's
            # class for it (the app maps OperationalError to 503, IntegrityError to 409), and a
            # connection the database dropped is invalidated rather than pooled again.
            gone = dialect.is_disconnect(exc, self._dbapi, cursor)
            if gone:
                self._connection.invalidate(exc)
            raise DBAPIError.instance(
                sql,
                bound,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=gone,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()

    def first(self, sql: str, params: Mapping[str, Any] | None = None) -> Sequence[Any] | None:
        """The first row the statement returns, or None."""
        found = self.rows(sql, params)
        return found[0] if found else None


# Statements whose columns were checked against their row type once in this process.
_checked: set[tuple[str, type[Any]]] = set()


def _check_names(sql: str, into: type[Any], names: tuple[str, ...]) -> None:
    """A row type reads its statement by name: a column added, dropped or moved fails loudly.

    Checked once per statement and type, so the hot path pays a set look-up, not a dict per row.
    """
    if (sql, into) in _checked:
        return
    if names != into._fields:
        raise TypeError(f"{into.__name__} has fields {into._fields}, the statement gives {names}")
    _checked.add((sql, into))
