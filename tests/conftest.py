"""Test set-up: a throwaway database and Redis key prefix for this run.

TEST_DATABASE picks the database: `postgresql` (the default) creates a PostgreSQL database
for the run; `sqlite` uses a SQLite file in a temporary directory, the embedded default
`make run` uses, and runs only SQLITE_TESTS, less POSTGRES_ONLY. Either is migrated to
head with Alembic, as `dispatch migrate` does.

TEST_BROKER picks Celery's broker: `redis` (the default, `REDIS_URL`'s server under this
run's key prefix) or `rabbitmq`: a vhost of this run's own on the RabbitMQ at
TEST_RABBITMQ_URL (default guest on 127.0.0.1:5672), made with rabbitmqctl and deleted at
the end, for every process the tests start; that run takes only RABBITMQ_TESTS, the worker
tests that exercise routing, retries and countdowns, acks and the broker's outages, and the
modules tests/test_rabbitmq*.py, which only it runs.

The environment is set before any project module is imported, because the one config
object reads it at import; hence the imports below the assignments (E402 is allowed here).
"""

import fnmatch
import os
import shutil
import tempfile
import uuid

RUN_ID = uuid.uuid4().hex[:10]
ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_DATABASE = os.environ.get("TEST_DATABASE", "postgresql")
if TEST_DATABASE not in ("postgresql", "sqlite"):
    raise RuntimeError(f"TEST_DATABASE={TEST_DATABASE!r}: choose postgresql or sqlite")
ON_SQLITE = TEST_DATABASE == "sqlite"
TEST_BROKER = os.environ.get("TEST_BROKER", "redis")
if TEST_BROKER not in ("redis", "rabbitmq"):
    raise RuntimeError(f"TEST_BROKER={TEST_BROKER!r}: choose redis or rabbitmq")
ON_RABBITMQ = TEST_BROKER == "rabbitmq"
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
TEST_DB = f"dispatch_test_{RUN_ID}"
SQLITE_DIR = tempfile.mkdtemp(prefix=f"dispatch-test-{RUN_ID}-") if ON_SQLITE else ""
os.environ.update(
    {
        "DATABASE_URL": (
            f"sqlite:///{SQLITE_DIR}/dispatch.sqlite3"
            if ON_SQLITE
            else ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB
        ),
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
# The vhost's name and URL, without the project's modules (not importable yet).
TEST_VHOST = f"dispatch_test_{RUN_ID}"
if ON_RABBITMQ:
    os.environ["CELERY_BROKER_URL"] = f"{RABBITMQ_URL.rstrip('/')}/{TEST_VHOST}"

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402
from kombu import Connection  # noqa: E402
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name  # noqa: E402
from sqlalchemy import text  # noqa: E402

from api import create_app  # noqa: E402
from models import metadata  # noqa: E402
from models.db import engine, redis_connection  # noqa: E402
from settings import PROJECT_ROOT, settings  # noqa: E402
from tests.factories import Factory  # noqa: E402
from tests.processes import RabbitMQVhost, run_admin_sql  # noqa: E402
from workers.celery_app import app as celery_app  # noqa: E402

pytest_plugins = ["tests.fake_apns_fixtures"]

# What runs on SQLite too, `make run`'s embedded default: modules, or tests by node id (`*`
# matches any run). The domain and the API in one process; the whole stack of processes on one
# SQLite file (test_end_to_end); of the races over real gunicorn processes, the one SQLite once
# lost (a decline reads the job under FOR SHARE, which SQLite ignores: models.db's BEGIN
# IMMEDIATE holds it). The rest run once, on PostgreSQL: they need no database, hold
# PostgreSQL's row or advisory locks, stop PostgreSQL or Redis, or spend minutes on workers'
# recovery that a second run would double.
SQLITE_TESTS = (
    "tests/test_accept_race.py",
    "tests/test_api_auth.py",
    "tests/test_api_devices.py",
    "tests/test_api_drivers.py",
    "tests/test_api_jobs.py",
    "tests/test_bad_input.py",
    "tests/test_eligibility.py",
    "tests/test_end_to_end.py",
    "tests/test_lifecycle_api.py",
    "tests/test_lifecycle_races.py::test_a_driver_never_both_declines_and_gets_a_job[*]",
    "tests/test_ops_api.py",
    "tests/test_smoke_api.py",
)
# Tests of SQLITE_TESTS that are not run on SQLite: node id -> why.
POSTGRES_ONLY = {
    "tests/test_accept_race.py::test_exactly_one_of_thirty_concurrent_accepts_wins_fifty_times": (
        "a race on PostgreSQL's row locks; SQLite runs one transaction at a time, which "
        "test_one_driver_racing_for_two_jobs_gets_at_most_one checks in a fraction of the time"
    ),
}
SQLITE_MODULES = {entry.split("::")[0] for entry in SQLITE_TESTS}
# What runs with TEST_BROKER=rabbitmq (besides tests/test_rabbitmq*.py), as SQLITE_TESTS: the
# worker tests whose path through the broker differs from Redis's, few enough to keep that
# run short. Routing: each queue's tasks (dispatch, push); retries and countdowns: APNs
# answers retried (held in the broker's delay queues); headers: a task's publish time; acks:
# a pool child killed mid-task; confirms and publish timeouts: the broker's outage, with the
# API under gunicorn.
RABBITMQ_TESTS = (
    "tests/test_backlog.py::test_the_worker_reports_how_long_its_tasks_waited_in_the_queue",
    "tests/test_broker_outage.py",
    "tests/test_dispatch_worker.py::test_job_reaches_exactly_the_eligible_drivers",
    "tests/test_dispatch_worker.py::test_accept_and_cancel_reach_every_offered_driver",
    "tests/test_dispatch_worker.py::test_worker_killed_mid_task_loses_no_offer",
    "tests/test_dispatch_worker.py::test_offer_pushes_go_to_the_offered_drivers_devices",
    "tests/test_dispatch_worker.py::test_transient_answers_are_retried_until_delivered[503-*]",
    "tests/test_rabbitmq.py",
)
RABBITMQ_MODULES = {entry.split("::")[0] for entry in RABBITMQ_TESTS}


def _named(nodeid: str, pattern: str) -> bool:
    """Whether the node id matches the pattern, a module path or a node id where only `*`
    is special (a parameter's brackets are literal)."""
    if "::" not in pattern:
        pattern += "::*"
    return fnmatch.fnmatchcase(nodeid, pattern.replace("[", "[[]"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres_only(reason): about PostgreSQL; not run with TEST_DATABASE=sqlite"
    )
    for name, modules in (("SQLITE_TESTS", SQLITE_MODULES), ("RABBITMQ_TESTS", RABBITMQ_MODULES)):
        missing = sorted(module for module in modules if not (PROJECT_ROOT / module).is_file())
        if missing:
            raise pytest.UsageError(f"{name} names modules that do not exist: {missing}")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """On SQLite, modules SQLITE_TESTS does not name are not even imported; on RabbitMQ,
    those RABBITMQ_TESTS does not name; on Redis, tests/test_rabbitmq*.py."""
    if not collection_path.name.startswith("test_"):
        return None
    relative = collection_path.relative_to(PROJECT_ROOT).as_posix()
    if ON_SQLITE and relative not in SQLITE_MODULES:
        return True
    if ON_RABBITMQ and relative not in RABBITMQ_MODULES:
        return True
    if not ON_RABBITMQ and collection_path.name.startswith("test_rabbitmq"):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for pattern, reason in POSTGRES_ONLY.items():
            if _named(item.nodeid, pattern):
                item.add_marker(pytest.mark.postgres_only(reason))
    if ON_SQLITE or ON_RABBITMQ:
        kept = [item for item in items if _runs_here(item)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def _runs_here(item: pytest.Item) -> bool:
    """Whether the test is one this run's database and broker take."""
    if ON_SQLITE and (
        item.get_closest_marker("postgres_only") is not None
        or not any(_named(item.nodeid, entry) for entry in SQLITE_TESTS)
    ):
        return False
    return not ON_RABBITMQ or any(_named(item.nodeid, entry) for entry in RABBITMQ_TESTS)


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """Create this run's database, migrate it to head with Alembic, drop it at the end."""
    if not ON_SQLITE:
        run_admin_sql(ADMIN_URL, f'CREATE DATABASE "{TEST_DB}"')
    try:
        command.upgrade(Config(str(PROJECT_ROOT / "alembic.ini")), "head")
        yield os.environ["DATABASE_URL"]
    finally:
        engine().dispose()
        if ON_SQLITE:
            shutil.rmtree(SQLITE_DIR, ignore_errors=True)
        else:
            run_admin_sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


def _empty_tables() -> None:
    """Every table emptied, children first, and its ids restarted: on PostgreSQL each
    sequence set back (a DELETE of a few rows and setval cost half of TRUNCATE's ~23 ms a
    test); SQLite's ids restart by themselves (no table is AUTOINCREMENT)."""
    with engine().begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        if not ON_SQLITE:
            conn.execute(text("SELECT setval(oid, 1, false) FROM pg_class WHERE relkind = 'S'"))


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_vhost() -> Iterator[RabbitMQVhost | None]:
    """With TEST_BROKER=rabbitmq, this run's vhost (CELERY_BROKER_URL's), made before the
    first test and deleted, with whatever it holds, after the last."""
    if not ON_RABBITMQ:
        yield None
        return
    vhost = RabbitMQVhost(settings.broker_url)
    vhost.create()
    try:
        yield vhost
    finally:
        celery_app.close()  # its pooled connections, before the vhost closes them
        vhost.delete()


# Every queue that may hold a task on RabbitMQ: the run's own and Celery's delay queues.
RABBITMQ_QUEUES = [queue.name for queue in celery_app.conf.task_queues] + [
    level_name(level) for level in range(MAX_LEVEL + 1)
]


def _purge_rabbitmq_queues() -> None:
    """Drop the tasks earlier tests left queued, delayed ones included (ids restart with
    each test); a queue no process has declared yet has nothing to drop."""
    with Connection(settings.broker_url) as connection:
        for name in RABBITMQ_QUEUES:
            with connection.channel() as channel:
                try:
                    channel.queue_purge(name)
                except connection.channel_errors:
                    pass


def _delete_prefixed_keys(r: redis.Redis) -> None:
    """Drop this run's keys, queued tasks included (ids restart with each test), but keep
    kombu's queue bindings, which a running worker set up once."""
    for key in r.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        if "_kombu.binding." not in key:
            r.delete(key)


@pytest.fixture(autouse=True)
def clean_state(database: str, rabbitmq_vhost: RabbitMQVhost | None) -> Iterator[None]:
    """Every test starts with empty tables, no Redis keys of this run and no task queued."""
    _empty_tables()
    _delete_prefixed_keys(redis_connection())
    if rabbitmq_vhost is not None:
        _purge_rabbitmq_queues()
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
