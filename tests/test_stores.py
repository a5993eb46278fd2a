"""The SQL engine's pool: a connection the server closed is replaced at checkout, and a
healthy one costs no ping (models.db)."""

from __future__ import annotations

import select
from unittest import mock

import psycopg2
from sqlalchemy import text

from models.db import engine, session_scope
from tests.processes import wait_until


def _backend() -> tuple[int, int]:
    """The PostgreSQL backend a session's pooled connection talks to, and its socket."""
    with session_scope() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        dbapi_connection = session.connection().connection.dbapi_connection
        assert dbapi_connection is not None
        return int(pid), dbapi_connection.fileno()


def _spoke(socket: int) -> bool:
    return bool(select.select([socket], [], [], 0)[0])


def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout() -> None:
    engine().dispose()
    first, socket = _backend()
    dsn = engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = psycopg2.connect(dsn)
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (first,))
    finally:
        admin.close()
    wait_until(lambda: _spoke(socket), 5, "the server to close the pooled connection")

    dialect = engine().dialect
    with mock.patch.object(dialect, "do_ping", wraps=dialect.do_ping) as ping:
        second, _ = _backend()  # no error: the pool replaced the closed connection
    assert second != first
    assert ping.call_count == 1


def test_a_pooled_connection_closed_on_this_side_is_replaced_at_checkout() -> None:
    engine().dispose()
    with session_scope() as session:
        session.execute(text("SELECT 1"))
        dbapi_connection = session.connection().connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.close()  # in the pool, as a driver's failure could leave it

    with session_scope() as session:
        assert session.execute(text("SELECT 1")).scalar_one() == 1
        assert session.connection().connection.dbapi_connection is not dbapi_connection


def test_a_healthy_pooled_connection_is_not_pinged() -> None:
    engine().dispose()
    first, _ = _backend()
    dialect = engine().dialect
    with mock.patch.object(dialect, "do_ping", wraps=dialect.do_ping) as ping:
        assert _backend()[0] == first
        assert _backend()[0] == first
    assert ping.call_count == 0
