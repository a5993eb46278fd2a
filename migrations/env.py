"""Alembic environment: the URL and the metadata come from the app's own config and models.

Alembic logs each migration as it starts (`Running upgrade 0002 -> 0003, …`, INFO on the
`alembic` logger, shown by alembic.ini's console handler); `StepClock` adds how long it took,
so that a long migration is seen running and then seen done."""

import logging
import time
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationInfo
from sqlalchemy import Connection

import models
from models.db import build_engine
from settings import settings

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

url = context.config.attributes.get("url") or settings.sqlalchemy_url
log = logging.getLogger("alembic.env")


class StepClock:
    """An `on_version_apply` callback: logs each step done, timed from the previous one's
    end (or from this clock's start)."""

    def __init__(self) -> None:
        self.since = time.monotonic()

    def __call__(self, *, step: MigrationInfo, **_: Any) -> None:
        now = time.monotonic()
        done = "Upgraded" if step.is_upgrade else "Downgraded"
        revisions = " ".join(step.destination_revision_ids) or "base"
        log.info("%s to %s in %.1f s", done, revisions, now - self.since)
        self.since = now


def run_offline() -> None:
    context.configure(
        url=url, target_metadata=models.metadata, literal_binds=True, on_version_apply=StepClock()
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """SQLite alters a table by copying it and dropping the old one (Alembic's batch mode),
    and with foreign keys on, that DROP deletes or nulls every row referring to it (offers
    and driver profiles lost from a `make run` database). The pragma works only outside a
    transaction: on the driver's own connection, in autocommit (models.db sets that)."""
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def run_online() -> None:
    engine = build_engine(url)
    with engine.connect() as connection:
        on_sqlite = connection.dialect.name == "sqlite"
        if on_sqlite:
            _sqlite_foreign_keys(connection, on=False)
        context.configure(
            connection=connection,
            target_metadata=models.metadata,
            render_as_batch=on_sqlite,
            on_version_apply=StepClock(),
        )
        with context.begin_transaction():
            context.run_migrations()
            if on_sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:  # the migration itself left a dangling reference: undo it all
                    raise RuntimeError(f"foreign keys broken by the migration: {broken[:10]}")
        if on_sqlite:
            _sqlite_foreign_keys(connection, on=True)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
