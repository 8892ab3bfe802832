"""Database engine, declarative base and the one place where a unit of work commits."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, Engine, create_engine, event, make_url
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.settings import get_settings

T = TypeVar("T")

# SQLite's busy timeout: writers queue for this long instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_OPTION = "svp_write"

JSONType = JSON().with_variant(JSONB(), "postgresql")

# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0
# Connections per process: (pool_size, max_overflow) of each backend's pool.
SQLITE_POOL = (20, 20)
POSTGRES_POOL = (10, 20)
# Connections left outside the request slots, for work that takes one on its own for a moment
# (health checks, event streams, the start-up admin).
UNSLOTTED_CONNECTIONS = 4


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime,
    }


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys on every connection."""
    if url.startswith("sqlite"):
        ensure_sqlite_dir(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=SQLITE_POOL[0],
            max_overflow=SQLITE_POOL[1],
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own BEGIN handling is off: we issue BEGIN IMMEDIATE where a write follows.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A unit of work that will write takes the write lock at BEGIN: a read that later
            # upgrades to a write fails at once with "database is locked" instead of waiting out
            # the busy timeout. Read-only work (exports, event streams) must not hold that lock.
            immediate = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    engine = create_engine(url, pool_size=POSTGRES_POOL[0], max_overflow=POSTGRES_POOL[1])

    # Pessimistic disconnect handling, but only for connections that sat idle: SQLAlchemy's
    # pool_pre_ping pinged on every checkout, a round trip per request that took 13% of a
    # label's time in its worker thread. A connection back from a request less than a second
    # ago is used as is; if the database went away meanwhile, that request's statement fails,
    # is answered 503, and its connection is invalidated (app.rawsql does as SQLAlchemy does).
    @event.listens_for(engine, "checkin")
    def _note_idle(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out a fresh one (three tries).
            raise DisconnectionError from exc

    return engine


def ensure_sqlite_dir(url: str) -> None:
    """Make the folder of a SQLite database file, parents included, if it does not exist.

    Here, where every engine is made (the server's, the migrations', the CLI's), rather than
    in one caller: a first ``svplabel serve`` migrated before anything made the data dir and
    exited with "unable to open database file" (issue 17 #7).
    """
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """The session factory bound to the process-wide engine."""
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def unit_of_work(*, write: bool = True) -> Iterator[Session]:
    """One transaction: commit when the block ends, roll back when it raises."""
    session = get_sessionmaker()()
    if write:
        # Procures the connection now, so the BEGIN that follows sees the option.
        session.connection(execution_options={WRITE_OPTION: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# PostgreSQL's SQLSTATE for unique_violation; SQLite says it in the message.
_PG_UNIQUE_VIOLATION = "23505"


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether the database refused a row because a unique constraint already holds its key."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _PG_UNIQUE_VIOLATION:
        return True
    return "UNIQUE constraint failed" in str(orig)


def flush_new(db: Session, row: Any) -> bool:
    """Insert one new row in a savepoint; False when a unique constraint refused it.

    Two requests that create the same name at once both pass the "is it taken?" read; on
    PostgreSQL the second insert then fails, and without a savepoint that failure aborts the
    whole transaction (issue 17 #3). In a savepoint it is rolled back alone, and the caller
    answers as if the read had seen the other row (which a new read now does).
    """
    try:
        with db.begin_nested():
            db.add(row)
            db.flush()
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        return False
    return True


@dataclass
class _LoopSlots:
    """One event loop's request slots, and its queue of SQLite writers."""

    connections: asyncio.Semaphore
    sqlite_writer: asyncio.Lock


_request_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSlots] = (
    weakref.WeakKeyDictionary()
)


def request_slot_count() -> int:
    """How many requests of one process may work in the database at once (SVP_DB_CONCURRENCY)."""
    settings = get_settings()
    size, overflow = SQLITE_POOL if settings.is_sqlite else POSTGRES_POOL
    room = max(1, size + overflow - UNSLOTTED_CONNECTIONS)
    wanted = settings.db_concurrency or 3 * (os.cpu_count() or 1)
    return min(room, wanted)


def _loop_slots() -> _LoopSlots:
    loop = asyncio.get_running_loop()
    slots = _request_slots.get(loop)
    if slots is None:
        slots = _request_slots[loop] = _LoopSlots(
            connections=asyncio.Semaphore(request_slot_count()),
            sqlite_writer=asyncio.Lock(),
        )
    return slots


@asynccontextmanager
async def request_slot(*, write: bool) -> AsyncIterator[None]:
    """Wait, in the event loop, for one of the pool's connections (and on SQLite for a write,
    for the writer queue first); see ``db_slot``. A route that works in phases (sign-in: read,
    then argon2 holding nothing, then a short write) takes one slot per phase."""
    slots = _loop_slots()
    if write and get_settings().is_sqlite:
        # The writer queue first, then a connection: queued writers do not hold connections
        # that readers could use meanwhile.
        async with slots.sqlite_writer, _sqlite_writer_across_processes(), slots.connections:
            yield
    else:
        async with slots.connections:
            yield


async def run_in_unit_of_work(fn: Callable[[Session], T], *, write: bool) -> T:
    """``fn`` in a unit of work that commits before this returns: one slot, one thread hop.

    For the hot routes (the queue, labels): through FastAPI's sync dependencies a label took
    four thread hops (the unit of work in and out, the caller, the route), each a hand-off to
    the thread pool and back that costs more than the statement it carried.
    """
    async with request_slot(write=write):
        return await anyio.to_thread.run_sync(_call_in_unit_of_work, fn, write)


def _call_in_unit_of_work(fn: Callable[[Session], T], write: bool) -> T:
    with unit_of_work(write=write) as session:
        return fn(session)


def _writer_lock_fd() -> int | None:
    """This process's handle on the lock file beside the SQLite database (None in memory)."""
    database = make_url(get_settings().database_url).database
    if not database or database == ":memory:":
        return None
    return _open_writer_lock(database)


# Open lock files by database file: tests (and CLI sub-commands) switch databases in a process.
_writer_locks: dict[str, int] = {}


def _open_writer_lock(database: str) -> int:
    fd = _writer_locks.get(database)
    if fd is None:
        opened = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        # Two event loops racing here each open one: the loser's is closed, not leaked.
        fd = _writer_locks.setdefault(database, opened)
        if fd != opened:
            os.close(opened)
    return fd


@asynccontextmanager
async def _sqlite_writer_across_processes() -> AsyncIterator[None]:
    """The SQLite writer's turn among server processes (``serve --workers N``): an flock.

    The per-loop lock above orders the writers of one process; between processes only SQLite's
    busy handler would, polling with sleeps of up to 100 ms and letting newcomers overtake.
    The lock is tried without blocking first, so an uncontended write costs no thread hop; a
    wait happens in a worker thread, never in the event loop, and only one coroutine per
    process waits at a time (the per-loop lock is held).
    """
    fd = _writer_lock_fd()
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


async def db_slot(request: Request) -> AsyncIterator[None]:
    """FastAPI dependency: wait, in the event loop, for one of the pool's connections.

    A request holds its connection across several thread-pool hops (this unit of work, the
    auth dependency, the route, the commit). With more requests in flight than the pool holds,
    threads blocked in the pool's checkout starve the requests that hold every connection of the
    threads they need next, and all wait out the pool timeout (seen at 50 annotators: 30 s
    answers, then 500s). Waiting here instead costs no thread, so the pool never blocks.

    On SQLite, write requests also queue here one at a time, first come first served. Their
    BEGIN IMMEDIATE would serialise them anyway, but through SQLite's busy handler, which polls
    with growing sleeps and lets newcomers overtake: 20 annotators saw a 24 ms median and a
    9.5 s p99 that way.
    """
    async with request_slot(write=request.method not in SAFE_METHODS):
        yield


def get_db(
    request: Request, _slot: Annotated[None, Depends(db_slot, scope="function")]
) -> Iterator[Session]:
    """FastAPI dependency: the request's unit of work; safe methods do not take the write lock.

    The slot goes with the unit of work, when the route function returns (``scope="function"``,
    as ``app.auth.deps.DB``): with the default scope it stayed taken until the response was
    sent, so a streamed body (an export) held a connection slot it no longer used.
    """
    with unit_of_work(write=request.method not in SAFE_METHODS) as session:
        yield session


def reset_caches() -> None:
    """Forget the cached settings, engine and session factory (tests and CLI sub-commands)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    while _writer_locks:
        os.close(_writer_locks.popitem()[1])
    get_settings.cache_clear()
