"""Test set-up: a throwaway PostgreSQL database and Redis key prefix for this run.

The environment is set before any project module is imported, because the one config
object reads it at import; hence the imports below the assignments (E402 is allowed here).
"""

import os
import uuid

RUN_ID = uuid.uuid4().hex[:10]
ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_DB = f"dispatch_test_{RUN_ID}"
os.environ.update(
    {
        "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB,
        "REDIS_URL": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "REDIS_PREFIX": f"test-{RUN_ID}",
        "SECRET_KEY": f"test-secret-{RUN_ID}",
        "AUTO_APPROVE_DRIVERS": "true",
        "RELAY_AFTER_S": "2",
        "PASSWORD_HASH_PROFILE": "CHEAPEST",
    }
)
for unset in ("CELERY_BROKER_URL", "APNS_KEY_PATH", "APNS_HOST", "APNS_PORT", "APNS_CA_FILE"):
    os.environ.pop(unset, None)

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from api import create_app  # noqa: E402
from models.db import engine, redis_connection  # noqa: E402
from settings import PROJECT_ROOT, settings  # noqa: E402
from tests.factories import Factory  # noqa: E402
from tests.processes import run_admin_sql  # noqa: E402

pytest_plugins = ["tests.fake_apns_fixtures"]

TABLES = "job_events, offers, device_tokens, driver_profiles, jobs, users"


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """Create this run's database, migrate it to head with Alembic, drop it at the end."""
    run_admin_sql(ADMIN_URL, f'CREATE DATABASE "{TEST_DB}"')
    try:
        config = Config(str(PROJECT_ROOT / "alembic.ini"))
        command.upgrade(config, "head")
        yield os.environ["DATABASE_URL"]
    finally:
        engine().dispose()
        run_admin_sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


def _delete_prefixed_keys(r: redis.Redis) -> None:
    """Drop this run's keys, queued tasks included (ids restart with each test), but keep
    kombu's queue bindings, which a running worker set up once."""
    for key in r.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        if "_kombu.binding." not in key:
            r.delete(key)


@pytest.fixture(autouse=True)
def clean_state(database: str) -> Iterator[None]:
    """Every test starts with empty tables and no Redis keys of this run."""
    with engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    _delete_prefixed_keys(redis_connection())
    yield


@pytest.fixture(scope="session", autouse=True)
def drop_redis_keys() -> Iterator[None]:
    yield
    r = redis_connection()
    for key in r.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        r.delete(key)


@pytest.fixture(scope="session")
def app() -> Flask:
    return create_app({"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def factory(client: FlaskClient) -> Factory:
    return Factory(client)
