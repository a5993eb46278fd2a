"""Alembic environment: the URL and the metadata come from the app's own config and models."""

from logging.config import fileConfig

from alembic import context

import models
from models.db import build_engine
from settings import settings

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

url = context.config.attributes.get("url") or settings.sqlalchemy_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=models.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = build_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=models.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
