"""`dispatch` command line for operators: migrate the database, create operator accounts,
approve drivers."""

from __future__ import annotations

import sys
from typing import Any

import click
from alembic import command
from alembic.config import Config
from pydantic import TypeAdapter, ValidationError

from api.ops import tell_driver_after_commit
from api.schemas import Email, Name, Password
from models.accounts import Role, register_user
from models.db import session_scope
from models.errors import Conflict, NotFound
from models.operations import approve_driver, driver_id_for_email
from settings import PROJECT_ROOT, settings


@click.group()
def main() -> None:
    """Operate a Dispatch deployment (reads the same environment as the services)."""


@main.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    command.upgrade(Config(str(PROJECT_ROOT / "alembic.ini")), "head")
    click.echo(f"database at head: {settings.sqlalchemy_url.split('@')[-1]}")


def _valid(what: str, kind: Any, value: str) -> str:
    """The value as registration would accept it (the same rules), or the reason it is not."""
    try:
        valid: str = TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        reason = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise click.BadParameter(reason, param_hint=what) from exc
    return valid


@main.command("create-operator")
@click.argument("email")
@click.option("--name", help="The name the console shows (default: the email's local part).")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of asking.",
)
def create_operator_command(email: str, name: str | None, password_stdin: bool) -> None:
    """Create an operator account with EMAIL; it signs in with POST /api/v1/auth/login and
    may use /api/v1/ops/. Registration never creates operators."""
    email = _valid("EMAIL", Email, email)
    name = _valid("--name", Name, name or email.split("@")[0])
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    password = _valid("password", Password, password)
    try:
        with session_scope() as session:
            user = register_user(session, Role.operator, email, password, name)
            click.echo(f"created operator {user.id} ({user.email})")
    except Conflict as exc:
        raise click.ClickException(exc.message) from exc


@main.command("approve-driver")
@click.argument("email")
def approve_driver_command(email: str) -> None:
    """Approve the driver with EMAIL for work (or reinstate them if suspended): from now on
    they can be offered jobs."""
    try:
        with session_scope() as session:
            change = approve_driver(session, driver_id_for_email(session, email), actor=None)
            tell_driver_after_commit(session, change)
            click.echo(f"approved driver {change.driver.id} ({change.driver.email})")
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
