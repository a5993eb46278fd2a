"""The embedded SQLite store that `make run` shares between its processes: a transaction
holds the database from its first read, as row locks hold rows on PostgreSQL."""

import threading
from pathlib import Path

from sqlalchemy import Engine, text

from models.db import build_engine


def _counter_engine(tmp_path: Path) -> Engine:
    engine = build_engine(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    return engine


def _increment(engine: Engine) -> None:
    with engine.begin() as conn:
        n = conn.execute(text("SELECT n FROM counter")).scalar_one()
        conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})


def test_a_write_waits_for_a_transaction_that_has_only_read(tmp_path: Path) -> None:
    """Two read-then-write increments, the second started while the first has read: the
    second waits for the first to commit, so neither increment is lost."""
    engine = _counter_engine(tmp_path)
    try:
        with engine.begin() as first:
            n = first.execute(text("SELECT n FROM counter")).scalar_one()
            second = threading.Thread(target=_increment, args=(engine,))
            second.start()
            second.join(0.5)  # bounded: the second has its chance to run ahead (it must not)
            first.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        second.join(10)
        assert not second.is_alive()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 2
    finally:
        engine.dispose()
