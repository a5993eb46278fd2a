"""`dispatch` command line for operators: migrate the database, approve drivers."""

from __future__ import annotations

import click
from alembic import command
from alembic.config import Config

from models.accounts import approve_driver
from models.db import session_scope
from settings import PROJECT_ROOT, settings


@click.group()
def main() -> None:
    """Operate a Dispatch deployment (reads the same environment as the services)."""


@main.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    command.upgrade(Config(str(PROJECT_ROOT / "alembic.ini")), "head")
    click.echo(f"database at head: {settings.sqlalchemy_url.split('@')[-1]}")


@main.command("approve-driver")
@click.argument("email")
def approve_driver_command(email: str) -> None:
    """Approve the driver with EMAIL for work: from now on they can be offered jobs."""
    try:
        with session_scope() as session:
            user = approve_driver(session, email)
            click.echo(f"approved driver {user.id} ({user.email})")
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
