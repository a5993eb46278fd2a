"""The stores: the SQL engine with its one session scope, and the Redis connection."""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import (
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    Index,
    Insert,
    Table,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from settings import settings

AFTER_COMMIT = "after_commit"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def table_of(model: type[Base]) -> Table:
    """The model's table, typed as one (for statements on the table, not the ORM)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def insert_row(session: Session, model: type[Base], values: dict[str, Any]) -> int:
    """Insert one row of `model`'s table in the session's transaction and return its id: one
    INSERT … RETURNING, not a unit-of-work flush (which costs about a millisecond more), and
    the statement built once, the values passed as parameters (a statement with the values
    in it builds a bound parameter and its cache key for each, per call). No object is
    attached to the session."""
    statement = _insert_returning_id(table_of(model))
    return int(session.connection().execute(statement, values).scalar_one())


@cache
def _insert_returning_id(table: Table) -> Insert:
    return insert(table).returning(table.c.id)


def one_of(column: str, values: type[StrEnum], name: str) -> CheckConstraint:
    """The column holds one of the enum's values: the database's CHECK, made from the enum
    the code uses, so the two cannot drift apart."""
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name)


def partial_index(name: str, column: str, where: str) -> Index:
    """An index of the rows matching `where` only, on PostgreSQL and SQLite alike."""
    return Index(name, column, postgresql_where=text(where), sqlite_where=text(where))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL and a busy timeout, so the processes of `make run` wait for each other's writes
    instead of failing; sqlite3's own BEGIN off, for `_begin_immediate`."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    """Every transaction takes SQLite's one write lock at its start, so it holds the database
    from its first read to its commit, as `FOR UPDATE` and the advisory locks hold rows on
    PostgreSQL. (sqlite3 alone would begin only at the first write, after the reads a step
    decides on, and a concurrent step could change what they saw.)"""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _server_spoke(dbapi_connection: Any) -> bool:
    """Whether anything waits to be read on an idle connection's socket. PostgreSQL says
    nothing to an idle client unless it is closing the connection (a restart, a terminated
    backend, an idle timeout: its last words, then end of file), or, rarely, a notice."""
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    return bool(readable)


def _replacing_closed(dialect: Dialect) -> Callable[[Any, Any, Any], None]:
    """Pessimistic disconnect handling without a round trip in the common case: a pooled
    connection is pinged at checkout only if the server has spoken on it since it was last
    used, and replaced (the pool's checkout retries) if the ping fails. SQLAlchemy's
    `pool_pre_ping` pings every checkout, and through psycopg2 that is three round trips
    where a transaction would otherwise need one (SELECT 1 in autocommit, the session reset
    as autocommit goes off, and a BEGIN naming its isolation level)."""

    unaskable = (OSError, ValueError, dialect.loaded_dbapi.Error)

    def replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        try:
            if not _server_spoke(dbapi_connection):
                return
        except unaskable:  # closed on this side (psycopg2: InterfaceError): ping, replace
            pass
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # whatever the ping met: the pool tries another connection
            raise DisconnectionError(f"the server closed a pooled connection: {exc}") from exc

    return replace_if_closed


def build_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    # A database that accepts and never answers must not hold a thread for the kernel's
    # TCP timeout: connecting gives up after 5 s (the gateway's token checks rely on it).
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 5})
    event.listen(engine, "checkout", _replacing_closed(engine.dialect))
    return engine


@cache
def engine() -> Engine:
    return build_engine(settings.sqlalchemy_url)


@cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """The one unit of work: commit on success, roll back on error, then run the
    callbacks registered with `after_commit` (only if the commit happened)."""
    session = _session_factory()()
    try:
        yield session
        session.commit()
        callbacks: list[Callable[[], object]] = session.info.pop(AFTER_COMMIT, [])
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    for callback in callbacks:
        callback()


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` once the session's transaction has committed; never if it rolls back."""
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


@cache
def redis_connection() -> redis.Redis:
    """One pooled client per process. Short timeouts: a dead Redis must fail fast."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=0.5,
        socket_timeout=2,
        decode_responses=True,
        health_check_interval=30,
    )
