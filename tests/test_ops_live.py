"""The operators' room, live: an operator's socket is placed there (and in no customer's
room), hears `ops:job` after each announcement of a job's change (the job as GET /jobs/<id>
shows it), `ops:driver_position` at most once per driver every 2 s whether the driver
reports over the socket or REST, and `ops:driver` when an operator suspends a driver. A
real gateway and dispatch worker, PostgreSQL, Redis and python-socketio clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from models.accounts import Role, register_user
from models.db import session_scope
from models.rooms import OPERATORS_ROOM, customer_room
from models.tracking import OPERATORS_SEE_POSITIONS_EVERY_MS
from tests.contract import API
from tests.factories import ORIGIN, PASSWORD, Account, Factory, north_of
from tests.processes import start_gateway, start_workers, wait_until
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import emit

pytestmark = pytest.mark.slow

POSITION = "ops:driver_position"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]) -> Iterator[int]:
    """A gateway, and the workers that announce every change."""
    logs: Path = tmp_path_factory.mktemp("ops-live")
    with ExitStack() as started:
        process, port = start_gateway(logs)
        started.callback(process.stop)
        for worker in start_workers(logs, env=apns_env):
            started.callback(worker.stop)
        yield port


@pytest.fixture
def sockets() -> Iterator[Listeners]:
    opened = Listeners()
    yield opened
    opened.close()


@pytest.fixture
def operator(client: FlaskClient) -> Account:
    with session_scope() as session:
        user = register_user(session, Role.operator, "console@example.com", PASSWORD, "Olga")
        user_id = user.id
    answer = client.post(
        f"{API}/auth/login", json={"email": "console@example.com", "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.json
    return Account(user_id, "operator", "console@example.com", "Olga", answer.json["token"])


@pytest.fixture
def console(gateway: int, sockets: Listeners, operator: Account) -> Listener:
    """The operator's socket, once the gateway delivers to the operators' room."""
    listener = sockets.open(gateway, operator.token)
    emit_until_seen(lambda: emit("test:probe", {}, [OPERATORS_ROOM]), listener, "test:probe")
    return listener


def _all_heard(listener: Listener, marker: str) -> None:
    """Everything published before now has reached the listener: a marker published after it
    to the operators' room has (one Redis channel keeps its order)."""
    emit(marker, {}, [OPERATORS_ROOM])
    listener.wait_for(marker)


def test_an_operator_hears_each_change_of_a_job(
    client: FlaskClient, factory: Factory, console: Listener, operator: Account
) -> None:
    driver = factory.driver(at=north_of(ORIGIN, 1))
    customer = factory.customer()
    job = factory.job(customer, at=ORIGIN, notes="flat tyre")

    def told(status: str) -> list[dict]:
        return [j for j in console.got("ops:job") if j["id"] == job["id"] and j["status"] == status]

    wait_until(lambda: told("pending"), 20, "ops:job: pending, offered")
    # Told once the round's offers are committed: the console reads them on it.
    [listed] = client.get(f"{API}/ops/jobs?status=pending", headers=operator.headers).json["jobs"]
    assert (listed["id"], listed["offered_to"]) == (job["id"], 1)
    accepted = client.post(f"{API}/jobs/{job['id']}/accept", headers=driver.headers)
    assert accepted.status_code == 200, accepted.json
    wait_until(lambda: told("accepted"), 20, "ops:job: accepted")
    as_the_customer_sees_it = client.get(f"{API}/jobs/{job['id']}", headers=customer.headers)
    assert told("accepted") == [as_the_customer_sees_it.json]
    _all_heard(console, "test:after")
    assert len(told("pending")) == 1  # one ops:job for the booking and its round of offers


def test_an_operator_is_in_no_customers_room(
    factory: Factory, console: Listener, operator: Account
) -> None:
    emit("test:customer", {}, [customer_room(operator.id)])
    _all_heard(console, "test:after")
    assert console.got("test:customer") == []


def _report(client: FlaskClient, driver: Account, at: tuple[float, float]) -> None:
    """A position over REST (PUT /drivers/me/location)."""
    answer = client.put(
        f"{API}/drivers/me/location", json={"lat": at[0], "lng": at[1]}, headers=driver.headers
    )
    assert answer.status_code == 204, answer.json


def test_driver_positions_reach_operators_at_most_every_two_seconds(
    client: FlaskClient, factory: Factory, gateway: int, sockets: Listeners, console: Listener
) -> None:
    driver = factory.driver(at=None)
    driver_socket = sockets.open(gateway, driver.token)

    def positions() -> list[dict]:
        return [p for p in console.got(POSITION) if p["driver_id"] == driver.id]

    first = {"lat": ORIGIN[0], "lng": ORIGIN[1]}
    assert driver_socket.call("driver:location", first) == {"ok": True}
    wait_until(positions, 20, POSITION)
    time.sleep(0.5)
    _report(client, driver, north_of(ORIGIN, 0.2))
    _all_heard(console, "test:after-second")
    assert len(positions()) == 1
    [seen] = positions()
    assert seen.keys() == {"driver_id", "lat", "lng", "at"}
    assert (seen["lat"], seen["lng"]) == ORIGIN

    time.sleep(OPERATORS_SEE_POSITIONS_EVERY_MS / 1000)  # the throttle's window passes
    later = north_of(ORIGIN, 0.4)
    _report(client, driver, later)
    wait_until(lambda: len(positions()) == 2, 20, f"a second {POSITION}")
    assert (positions()[1]["lat"], positions()[1]["lng"]) == later


def test_an_operator_hears_a_driver_go_online_and_offline(
    client: FlaskClient, factory: Factory, console: Listener
) -> None:
    driver = factory.driver(online=False)
    for online in (True, False):
        answer = client.put(
            f"{API}/drivers/me/availability", json={"online": online}, headers=driver.headers
        )
        assert answer.status_code == 200, answer.json
    heard = console.wait_for("ops:driver_availability", count=2)
    assert [h for h in heard if h["driver_id"] == driver.id] == [
        {"driver_id": driver.id, "online": True},
        {"driver_id": driver.id, "online": False},
    ]


def test_an_operator_hears_a_driver_suspended(
    client: FlaskClient, factory: Factory, console: Listener, operator: Account
) -> None:
    driver = factory.driver()
    answer = client.post(f"{API}/ops/drivers/{driver.id}/suspend", headers=operator.headers)
    assert answer.status_code == 200, answer.json
    [told] = console.wait_for("ops:driver")
    assert told == {
        "driver_id": driver.id,
        "approved": True,
        "suspended": True,
        "at": answer.json["suspended_at"],
    }
