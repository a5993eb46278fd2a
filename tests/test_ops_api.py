"""Operators: created by the `dispatch` CLI only, signed in like everyone, and the
/api/v1/ops/ endpoints: drivers with their standing and last position, approve and suspend
(logged with the operator, told to the driver's sockets, and binding on dispatch and
accept), jobs by status with their timelines, and live counts."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from flask.testing import FlaskClient
from sqlalchemy import update

from models.accounts import DriverProfile, Role, register_user
from models.db import redis_connection, session_scope
from models.positions import eligible_drivers
from settings import PROJECT_ROOT
from tests.contract import API, assert_error, assert_job, bearer, parse_time
from tests.factories import ORIGIN, PASSWORD, Account, Factory, north_of
from tests.processes import BIN, start_gateway
from tests.sockets import Listener, emit_until_seen
from workers.events import emit

DISPATCH = str(BIN / "dispatch")
OPS = f"{API}/ops"
OPERATOR_EMAIL = "ops@example.com"
# Every operator endpoint, with a driver id or job id of 1 (the first made in a test).
ENDPOINTS = [
    ("get", f"{OPS}/drivers"),
    ("post", f"{OPS}/drivers/1/approve"),
    ("post", f"{OPS}/drivers/1/suspend"),
    ("get", f"{OPS}/drivers/1/events"),
    ("get", f"{OPS}/jobs"),
    ("get", f"{OPS}/jobs/1/events"),
    ("get", f"{OPS}/counts"),
]


def _dispatch(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """The real `dispatch` command, on this run's environment."""
    return subprocess.run(
        [DISPATCH, *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def _create_operator(email: str, password: str, *args: str) -> subprocess.CompletedProcess:
    return _dispatch("create-operator", email, "--password-stdin", *args, stdin=password + "\n")


def _sign_in(client: FlaskClient, email: str, password: str) -> dict:
    answer = client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.json
    return answer.json


@pytest.fixture
def operator(client: FlaskClient) -> dict[str, str]:
    """An operator's headers: the account made as the CLI makes it, signed in over the API."""
    with session_scope() as session:
        register_user(session, Role.operator, OPERATOR_EMAIL, PASSWORD, "Olga")
    return bearer(_sign_in(client, OPERATOR_EMAIL, PASSWORD)["token"])


def _operator_actor(client: FlaskClient) -> dict[str, object]:
    user = _sign_in(client, OPERATOR_EMAIL, PASSWORD)["user"]
    return {"id": user["id"], "role": "operator"}


def _unapproved(driver: Account) -> None:
    with session_scope() as session:
        session.execute(
            update(DriverProfile).where(DriverProfile.user_id == driver.id).values(approved=False)
        )


def test_the_cli_creates_an_operator_who_signs_in(client: FlaskClient) -> None:
    made = _create_operator(" Ops@Example.com ", "operator-pass-1", "--name", "Olga")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "created operator 1 (ops@example.com)"
    signed_in = _sign_in(client, "ops@example.com", "operator-pass-1")
    assert signed_in["user"] == {
        "id": 1,
        "role": "operator",
        "email": "ops@example.com",
        "name": "Olga",
    }
    answer = client.get(f"{OPS}/counts", headers=bearer(signed_in["token"]))
    assert answer.status_code == 200, answer.json

    again = _create_operator("ops@example.com", "operator-pass-2")
    assert again.returncode == 1 and "already exists" in again.stderr
    weak = _create_operator("other@example.com", "password1")
    assert weak.returncode == 2 and "most common passwords" in weak.stderr
    _sign_in(client, "ops@example.com", "operator-pass-1")  # the first password still

    asked = _dispatch("create-operator", "second@example.com", stdin="operator-pass-3\n" * 2)
    assert asked.returncode == 0, asked.stderr
    assert "Repeat for confirmation" in asked.stderr
    assert "operator-pass-3" not in asked.stdout + asked.stderr
    _sign_in(client, "second@example.com", "operator-pass-3")


def test_the_clis_approval_is_logged_without_an_actor(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    driver = factory.driver()
    _unapproved(driver)
    approved = _dispatch("approve-driver", driver.email.upper())
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"approved driver {driver.id} ({driver.email})"
    events = client.get(f"{OPS}/drivers/{driver.id}/events", headers=operator).json["events"]
    assert [(e["type"], e["actor"]) for e in events] == [("approved", None)]
    unknown = _dispatch("approve-driver", "nobody@example.com")
    assert unknown.returncode == 1 and "No driver with email" in unknown.stderr


def test_registration_never_makes_an_operator(client: FlaskClient) -> None:
    body = {"role": "operator", "email": "o@example.com", "password": PASSWORD, "name": "O"}
    assert_error(client.post(f"{API}/auth/register", json=body), 422, "validation_error", "role")
    answer = client.post(f"{API}/auth/login", json={"email": "o@example.com", "password": PASSWORD})
    assert answer.status_code == 401


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_only_operators_may_call_the_ops_endpoints(
    client: FlaskClient, factory: Factory, method: str, path: str
) -> None:
    driver, customer = factory.driver(), factory.customer()
    factory.job(customer)
    call = getattr(client, method)
    assert_error(call(path), 401, "unauthorized")
    assert_error(call(path, headers=bearer("forged")), 401, "unauthorized")
    for account in (driver, customer):
        assert_error(call(path, headers=account.headers), 403, "forbidden")


def test_the_ops_endpoints_are_in_the_document_for_operators(client: FlaskClient) -> None:
    paths = client.get(f"{API}/openapi.json").json["paths"]
    for method, path in ENDPOINTS:
        documented = path.replace("/drivers/1", "/drivers/{driver_id}").replace(
            "/jobs/1", "/jobs/{job_id}"
        )
        op = paths[documented][method]
        assert op["x-roles"] == ["operator"], (method, path)
        assert {"200", "401", "403"} <= set(op["responses"]), (method, path)


def test_drivers_show_standing_position_and_job(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    here = north_of(ORIGIN, 2)
    working, idle = factory.driver(at=here), factory.driver(at=None, online=False)
    job = factory.job(factory.customer())
    factory.offer(job["id"])
    assert client.post(f"{API}/jobs/{job['id']}/accept", headers=working.headers).status_code == 200

    answer = client.get(f"{OPS}/drivers", headers=operator)
    assert answer.status_code == 200, answer.json
    by_id = {d["id"]: d for d in answer.json["drivers"]}
    assert list(by_id) == [working.id, idle.id]
    seen = by_id[working.id]
    assert seen["position"]["lat"] == here[0] and seen["position"]["lng"] == here[1]
    parse_time(seen["position"]["at"])
    assert 0 <= seen["position_age_s"] < 60
    assert {k: seen[k] for k in ("online", "approved", "suspended", "current_job_id")} == {
        "online": True,
        "approved": True,
        "suspended": False,
        "current_job_id": job["id"],
    }
    assert by_id[idle.id] == {
        "id": idle.id,
        "name": idle.name,
        "email": idle.email,
        "online": False,
        "approved": True,
        "suspended": False,
        "suspended_at": None,
        "current_job_id": None,
        "position": None,
        "position_age_s": None,
    }


def test_approve_and_suspend_are_idempotent_and_logged_with_the_operator(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    driver = factory.driver()
    _unapproved(driver)
    approve, suspend = f"{OPS}/drivers/{driver.id}/approve", f"{OPS}/drivers/{driver.id}/suspend"

    first = client.post(approve, headers=operator)
    assert first.status_code == 200, first.json
    assert (first.json["approved"], first.json["suspended"]) == (True, False)
    repeat = client.post(approve, headers=operator)
    assert repeat.status_code == 200
    assert {**repeat.json, "position_age_s": None} == {**first.json, "position_age_s": None}
    suspended = client.post(suspend, headers=operator).json
    assert (suspended["approved"], suspended["suspended"]) == (True, True)
    again = client.post(suspend, headers=operator).json
    assert again["suspended_at"] == suspended["suspended_at"]
    reinstated = client.post(approve, headers=operator).json
    assert (reinstated["suspended"], reinstated["suspended_at"]) == (False, None)

    events = client.get(f"{OPS}/drivers/{driver.id}/events", headers=operator)
    assert events.status_code == 200, events.json
    operator_actor = _operator_actor(client)
    assert [(e["type"], e["actor"]) for e in events.json["events"]] == [
        ("approved", operator_actor),
        ("suspended", operator_actor),
        ("approved", operator_actor),
    ]
    assert events.json["events"][1]["at"] == suspended["suspended_at"]


def test_a_driver_the_operator_cannot_name_is_not_found(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    customer = factory.customer()
    for who in (customer.id, 999):
        for action in ("approve", "suspend"):
            answer = client.post(f"{OPS}/drivers/{who}/{action}", headers=operator)
            assert_error(answer, 404, "not_found")
        assert_error(client.get(f"{OPS}/drivers/{who}/events", headers=operator), 404, "not_found")
    assert_error(client.get(f"{OPS}/jobs/999/events", headers=operator), 404, "not_found")


def _eligible() -> list[int]:
    return [c.driver_id for c in eligible_drivers(redis_connection(), *ORIGIN)]


def test_a_suspended_driver_is_offered_nothing_until_reinstated(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    near, other = factory.driver(at=north_of(ORIGIN, 1)), factory.driver(at=north_of(ORIGIN, 2))
    client.post(f"{OPS}/drivers/{near.id}/suspend", headers=operator)
    assert _eligible() == [other.id]
    job = factory.job(factory.customer())
    assert factory.offer(job["id"]) == [other.id]
    client.post(f"{OPS}/drivers/{near.id}/approve", headers=operator)
    assert _eligible() == [near.id, other.id]


def test_a_suspended_driver_cannot_accept(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    driver = factory.driver()
    job = factory.job(factory.customer())
    assert factory.offer(job["id"]) == [driver.id]
    client.post(f"{OPS}/drivers/{driver.id}/suspend", headers=operator)
    feed = f"{API}/drivers/me/offers"
    assert client.get(feed, headers=driver.headers).json == {"offers": []}  # nothing to take
    accept = f"{API}/jobs/{job['id']}/accept"
    assert_error(client.post(accept, headers=driver.headers), 403, "forbidden")
    assert client.get(f"{API}/jobs/{job['id']}", headers=driver.headers).json["status"] == "pending"
    client.post(f"{OPS}/drivers/{driver.id}/approve", headers=operator)
    assert [o["job"]["id"] for o in client.get(feed, headers=driver.headers).json["offers"]] == [
        job["id"]
    ]
    assert client.post(accept, headers=driver.headers).status_code == 200


def test_jobs_by_status_newest_first_with_their_age_and_offers(
    client: FlaskClient, factory: Factory, operator: dict[str, str]
) -> None:
    driver, decliner, customer = factory.driver(), factory.driver(), factory.customer()
    first, second, third = (factory.job(customer) for _ in range(3))
    for job in (first, second):
        assert sorted(factory.offer(job["id"])) == [driver.id, decliner.id]
    client.post(f"{API}/jobs/{first['id']}/accept", headers=driver.headers)
    client.post(f"{API}/jobs/{second['id']}/decline", headers=decliner.headers)

    answer = client.get(f"{OPS}/jobs?status=pending", headers=operator)
    assert answer.status_code == 200, answer.json
    pending = answer.json["jobs"]
    assert [j["id"] for j in pending] == [third["id"], second["id"]]
    assert [j["offered_to"] for j in pending] == [0, 1]
    for job in pending:
        age_s = job.pop("age_s")
        job.pop("offered_to")
        assert_job(job, status="pending")
        assert 0 <= age_s < 60
    everything = client.get(f"{OPS}/jobs", headers=operator).json["jobs"]
    assert [(j["id"], j["status"]) for j in everything] == [
        (third["id"], "pending"),
        (second["id"], "pending"),
        (first["id"], "accepted"),
    ]
    newest = client.get(f"{OPS}/jobs?limit=1", headers=operator).json["jobs"]
    assert [j["id"] for j in newest] == [third["id"]]
    for bad in ("limit=0", "limit=501", "status=lost"):
        answer = client.get(f"{OPS}/jobs?{bad}", headers=operator)
        assert_error(answer, 422, "validation_error", bad.split("=")[0])


def test_a_jobs_timeline(client: FlaskClient, factory: Factory, operator: dict[str, str]) -> None:
    driver, customer = factory.driver(), factory.customer()
    job = factory.job(customer)
    factory.offer(job["id"])
    client.post(f"{API}/jobs/{job['id']}/accept", headers=driver.headers)
    answer = client.get(f"{OPS}/jobs/{job['id']}/events", headers=operator)
    assert answer.status_code == 200, answer.json
    assert (
        answer.json == client.get(f"{API}/jobs/{job['id']}/events", headers=customer.headers).json
    )
    assert [e["type"] for e in answer.json["events"]] == ["created", "offered", "accepted"]


def test_live_counts(client: FlaskClient, factory: Factory, operator: dict[str, str]) -> None:
    on_job, suspended, _ = factory.driver(), factory.driver(), factory.driver(online=False)
    waiting = factory.driver(online=False, at=None)
    _unapproved(waiting)
    customer = factory.customer()
    job = factory.job(customer)
    factory.offer(job["id"])
    client.post(f"{API}/jobs/{job['id']}/accept", headers=on_job.headers)
    factory.job(customer)
    client.post(f"{OPS}/drivers/{suspended.id}/suspend", headers=operator)

    answer = client.get(f"{OPS}/counts", headers=operator)
    assert answer.status_code == 200, answer.json
    assert answer.json == {
        "drivers": {"total": 4, "online": 2, "on_job": 1, "suspended": 1, "awaiting_approval": 1},
        "jobs": {"pending": 1, "accepted": 1, "arrived": 0, "in_progress": 0},
    }


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[int]:
    process, port = start_gateway(tmp_path)
    try:
        yield port
    finally:
        process.stop()


def test_the_drivers_socket_is_told_of_suspension_and_reinstatement(
    client: FlaskClient, factory: Factory, operator: dict[str, str], gateway: int
) -> None:
    driver, other = factory.driver(), factory.driver()
    to_driver, to_other = Listener(gateway, driver.token), Listener(gateway, other.token)
    try:
        # The gateway subscribes after its first socket: wait until events get through.
        emit_until_seen(
            lambda: emit("test:probe", {}, [f"driver:{driver.id}"]), to_driver, "test:probe"
        )
        emit_until_seen(
            lambda: emit("test:probe", {}, [f"driver:{other.id}"]), to_other, "test:probe"
        )
        suspended = client.post(f"{OPS}/drivers/{driver.id}/suspend", headers=operator).json
        [told] = to_driver.wait_for("driver:suspended")
        assert told == {
            "driver_id": driver.id,
            "approved": True,
            "suspended": True,
            "at": suspended["suspended_at"],
        }
        client.post(f"{OPS}/drivers/{driver.id}/suspend", headers=operator)  # a repeat
        client.post(f"{OPS}/drivers/{driver.id}/approve", headers=operator)
        [reinstated] = to_driver.wait_for("driver:approved")
        assert (reinstated["driver_id"], reinstated["suspended"]) == (driver.id, False)
        assert len(to_driver.got("driver:suspended")) == 1
        assert [name for name, _ in to_other.events if name.startswith("driver:")] == []
    finally:
        to_driver.close()
        to_other.close()


ROWS = """
INSERT INTO users VALUES (1, 'customer', 'c@example.com', 'h', 'C', '2026-11-01 10:00:00');
INSERT INTO users VALUES (2, 'driver', 'd@example.com', 'h', 'D', '2026-11-01 10:00:00');
INSERT INTO jobs (id, status, customer_id, driver_id, pickup_lat, pickup_lng, created_at,
                  expires_at)
VALUES (1, 'accepted', 1, 2, 38.7, -9.1, '2026-11-01 10:00:00', '2026-11-01 10:10:00');
INSERT INTO driver_profiles (user_id, approved, online, current_job_id) VALUES (2, 1, 1, 1);
INSERT INTO offers (job_id, driver_id, distance_km, offered_at)
VALUES (1, 2, 1.0, '2026-11-01 10:00:00');
"""


@pytest.mark.parametrize("since", ["0002", "0003"])
def test_migrating_an_embedded_database_keeps_every_row(tmp_path: Path, since: str) -> None:
    """SQLite alters a table by rebuilding it (0003: jobs and offers; 0004: users to allow
    operators); the rows that refer to a rebuilt table all stay, with their references."""
    path = tmp_path / "embedded.sqlite3"
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = f"sqlite:///{path}"
    command.upgrade(config, since)
    with sqlite3.connect(path) as db:
        db.executescript(ROWS)
    command.upgrade(config, "head")
    with sqlite3.connect(path) as db:
        counts = [
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("users", "jobs", "offers")
        ]
        profile = db.execute("SELECT current_job_id, suspended_at FROM driver_profiles").fetchall()
        db.execute(
            "INSERT INTO users VALUES (3, 'operator', 'o@example.com', 'h', 'O', '2026-11-02')"
        )
    assert counts == [2, 1, 1]
    assert profile == [(1, None)]
