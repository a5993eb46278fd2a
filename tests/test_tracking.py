"""Live driver tracking (contract v1.1): while a job is accepted, arrived or in progress,
every position its driver reports reaches its customer as `job:driver_location`, at most
one a second, and GET /jobs/<id> shows it; nobody else ever sees it, and it stops when
the job ends. Real gateways (two, so reports cross them), a real dispatch worker (which
sets the tracking target as it announces each change), PostgreSQL, Redis and
python-socketio clients; then unit tests of `models.tracking` against the real Redis."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select

from models.db import redis_connection, session_scope
from models.job_events import JobEvent
from models.jobs import Job, JobStatus
from models.rooms import customer_room, driver_room
from models.tracking import (
    EARTH_RADIUS_KM,
    great_circle_km,
    record_position,
    sync_tracking,
    target_key,
    throttle_key,
)
from tests.events import EventTap
from tests.factories import ORIGIN, Account, Factory, north_of
from tests.processes import Process, start_gateway, start_workers, wait_until
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import emit

UPDATE = "job:driver_location"
UPDATE_FIELDS = {"job_id", "lat", "lng", "at", "distance_km"}
ISO_Z = "%Y-%m-%dT%H:%M:%S.%fZ"
# Far enough from ORIGIN (200 km) that nothing there is offered to drivers near ORIGIN.
ELSEWHERE = north_of(ORIGIN, 200)
NOTHING_MORE_S = 0.5  # how long a test waits to prove that no more events arrive


# ---------------------------------------------------------------------------------------
# Processes, sockets and helpers


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[list[int]]:
    """Two gateways, and the dispatch worker that announces every change (and the push
    worker beside it, as in the Procfile)."""
    logs: Path = tmp_path_factory.mktemp("tracking")
    processes: list[Process] = []
    try:
        ports = []
        for name in ("gateway-a", "gateway-b"):
            gateway, port = start_gateway(logs, name=name)
            processes.append(gateway)
            ports.append(port)
        processes.extend(start_workers(logs, env=apns_env))
        yield ports
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture
def connect(gateways: list[int]) -> Iterator[Callable[..., Listener]]:
    """Opens a socket for an account on gateway 0 or 1, once that gateway delivers to it."""
    listeners = Listeners()

    def open_socket(account: Account, gateway: int = 0) -> Listener:
        listener = listeners.open(gateways[gateway], account.token)
        room = driver_room(account.id) if account.role == "driver" else customer_room(account.id)
        # A gateway subscribes to Redis only after its first client connects.
        emit_until_seen(lambda: emit("tracking:ready", {}, [room]), listener, "tracking:ready")
        return listener

    yield open_socket
    listeners.close()


@pytest.fixture
def tap(gateways: list[int]) -> Iterator[EventTap]:
    """Every emit on this run's socket channel, the gateways' own included."""
    with EventTap() as events:
        yield events


@dataclass
class Trip:
    """A job on which a driver works, the customer following it on their socket."""

    job_id: int
    customer: Account
    driver: Account
    follows: Listener  # the customer's socket
    reports: Listener  # the driver's socket
    # A moment after the customer got the last update: its throttle started before it.
    heard_at: float = 0.0

    def updates(self) -> list[dict[str, Any]]:
        return self.follows.got(UPDATE)


def _announced(job_id: int, step: str, times: int = 1) -> bool:
    """Whether the worker has announced the job's `step` event (`times` of them)."""
    with session_scope() as session:
        done = session.scalar(
            select(func.count()).where(
                JobEvent.job_id == job_id,
                JobEvent.type == step,
                JobEvent.announced_at.is_not(None),
            )
        )
    return (done or 0) >= times


def _answer(client: FlaskClient, path: str, account: Account) -> Any:
    """The JSON body of a GET that must answer 200."""
    answer = client.get(path, headers=account.headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def _offered(client: FlaskClient, driver: Account, job_id: int) -> bool:
    feed = _answer(client, "/api/v1/drivers/me/offers", driver)
    return job_id in [offer["job"]["id"] for offer in feed["offers"]]


def _take(client: FlaskClient, driver: Account, job_id: int, times: int = 1) -> None:
    """The driver accepts the job once it is offered to them, and the worker announces it
    (which is when tracking starts)."""
    wait_until(lambda: _offered(client, driver, job_id), 15, f"job {job_id} offered")
    answer = client.post(f"/api/v1/jobs/{job_id}/accept", headers=driver.headers)
    assert answer.status_code == 200, answer.json
    wait_until(lambda: _announced(job_id, "accepted", times), 15, "the accept announced")


def _step(client: FlaskClient, account: Account, job_id: int, step: str, event: str) -> None:
    answer = client.post(f"/api/v1/jobs/{job_id}/{step}", headers=account.headers)
    assert answer.status_code == 200, answer.json
    wait_until(lambda: _announced(job_id, event), 15, f"{event} announced")


def _trip(
    client: FlaskClient,
    factory: Factory,
    connect: Callable[..., Listener],
    driver_at: tuple[float, float],
    pickup: tuple[float, float] = ORIGIN,
    gateways: tuple[int, int] = (0, 1),
    **job: Any,
) -> Trip:
    """A customer with a job at `pickup`, taken by a driver at `driver_at`; the driver's
    socket on one gateway, the customer's on the other (by default)."""
    customer = factory.customer()
    driver = factory.driver(at=driver_at)
    follows = connect(customer, gateways[1])
    reports = connect(driver, gateways[0])
    created = factory.job(customer, at=pickup, **job)
    _take(client, driver, created["id"])
    return Trip(created["id"], customer, driver, follows, reports)


def _at(update: dict[str, Any]) -> float:
    return datetime.strptime(update["at"], ISO_Z).replace(tzinfo=UTC).timestamp()


def _wait_out_throttle(*trips: Trip) -> None:
    """A quiet second after the last update each customer got: the next report is due to
    them. (The one-second bound is the requirement, hence a wait for time.)"""
    last = max(trip.heard_at for trip in trips)
    time.sleep(max(0.0, last + 1.02 - time.time()))


def _report(
    client: FlaskClient, trip_or_driver: Trip | Account, where: tuple[float, float], via: str
) -> None:
    """One position report by the driver, on their socket (ack `{ok: true}`) or over REST."""
    body = {"lat": where[0], "lng": where[1]}
    if via == "socket":
        assert isinstance(trip_or_driver, Trip)
        assert trip_or_driver.reports.call("driver:location", body) == {"ok": True}
    else:
        driver = trip_or_driver.driver if isinstance(trip_or_driver, Trip) else trip_or_driver
        answer = client.put("/api/v1/drivers/me/location", json=body, headers=driver.headers)
        assert answer.status_code == 204, answer.json


def _next_update(
    client: FlaskClient, trip: Trip, where: tuple[float, float], via: str = "socket"
) -> dict[str, Any]:
    """Report once a quiet second after the last update, and return what the customer
    gets for it; checks the payload's shape, position and time."""
    seen = trip.updates()
    _wait_out_throttle(trip)
    before = time.time()
    _report(client, trip, where, via)
    update = trip.follows.wait_for(UPDATE, len(seen) + 1)[-1]
    trip.heard_at = after = time.time()
    assert set(update) == UPDATE_FIELDS
    assert update["job_id"] == trip.job_id
    assert (update["lat"], update["lng"]) == where
    assert update["at"].endswith("Z")
    assert before - 0.001 <= _at(update) <= after  # the report's time, to the millisecond
    return update


def _job(client: FlaskClient, account: Account, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = _answer(client, f"/api/v1/jobs/{job_id}", account)
    return job


def _nothing_more(trip: Trip, count: int) -> None:
    time.sleep(NOTHING_MORE_S)
    assert len(trip.updates()) == count, trip.updates()[count:]


# ---------------------------------------------------------------------------------------
# 1. Reports reach the customer, across gateways, from the socket and from REST


@pytest.mark.slow
def test_reports_reach_the_customer_with_the_distance_to_the_pickup(
    client: FlaskClient, factory: Factory, connect
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 5))

    update = _next_update(client, trip, north_of(ORIGIN, 3))
    assert update["distance_km"] == pytest.approx(3.0, abs=0.002)

    update = _next_update(client, trip, north_of(ORIGIN, 2), via="rest")
    assert update["distance_km"] == pytest.approx(2.0, abs=0.002)

    # Longitude too: 0.01° east at ORIGIN's latitude is 0.868 km.
    east = (ORIGIN[0], ORIGIN[1] + 0.01)
    update = _next_update(client, trip, east)
    assert update["distance_km"] == pytest.approx(0.868, abs=0.002)
    assert trip.reports.got(UPDATE) == []


# ---------------------------------------------------------------------------------------
# 2. The target: the pickup until the job starts, then the dropoff if it has one


@pytest.mark.slow
def test_once_started_the_distance_is_to_the_dropoff(
    client: FlaskClient, factory: Factory, connect
) -> None:
    dropoff = north_of(ORIGIN, 10)
    trip = _trip(
        client,
        factory,
        connect,
        driver_at=north_of(ORIGIN, 4),
        dropoff={"lat": dropoff[0], "lng": dropoff[1], "address": "Rua do Ouro 10"},
    )
    assert _next_update(client, trip, north_of(ORIGIN, 3))["distance_km"] == pytest.approx(
        3.0, abs=0.002
    )
    _step(client, trip.driver, trip.job_id, "arrive", "arrived")
    assert _next_update(client, trip, north_of(ORIGIN, 1))["distance_km"] == pytest.approx(
        1.0, abs=0.002
    )
    _step(client, trip.driver, trip.job_id, "start", "started")
    assert _next_update(client, trip, north_of(ORIGIN, 4))["distance_km"] == pytest.approx(
        6.0, abs=0.002
    )
    assert _next_update(client, trip, north_of(ORIGIN, 12), "rest")["distance_km"] == pytest.approx(
        2.0, abs=0.002
    )


@pytest.mark.slow
def test_once_started_without_a_dropoff_the_distance_stays_to_the_pickup(
    client: FlaskClient, factory: Factory, connect
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 1))
    _step(client, trip.driver, trip.job_id, "arrive", "arrived")
    _step(client, trip.driver, trip.job_id, "start", "started")
    assert _next_update(client, trip, north_of(ORIGIN, 4))["distance_km"] == pytest.approx(
        4.0, abs=0.002
    )


# ---------------------------------------------------------------------------------------
# 3. At most one update a second per job, whichever way the driver reports


@pytest.mark.slow
def test_a_burst_of_reports_gives_at_most_one_update_a_second(
    client: FlaskClient, factory: Factory, connect
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    sent: list[tuple[float, float]] = []
    first_sent = time.time()
    while time.time() - first_sent < 2.5:
        where = north_of(ORIGIN, 2 + len(sent) / 1000)
        _report(client, trip, where, "socket" if len(sent) % 2 == 0 else "rest")
        sent.append(where)
        time.sleep(0.03)
    span_s = time.time() - first_sent
    time.sleep(NOTHING_MORE_S)
    updates = trip.updates()
    trip.heard_at = time.time()

    assert len(sent) > 4 * span_s  # many reports a second, both ways
    assert 2 <= len(updates) <= math.ceil(span_s) + 1, [u["at"] for u in updates]
    assert (updates[0]["lat"], updates[0]["lng"]) == sent[0]  # the first report is due
    forwarded = [(u["lat"], u["lng"]) for u in updates]
    assert forwarded == sorted(forwarded) and set(forwarded) <= set(sent)
    # A whole second (to the millisecond the payload carries) between any two updates.
    times = [_at(u) for u in updates]
    assert all(b - a >= 0.999 for a, b in zip(times, times[1:], strict=False)), times

    # After a quiet second the very next report gets through, over REST as well.
    update = _next_update(client, trip, north_of(ORIGIN, 1), via="rest")
    assert update["distance_km"] == pytest.approx(1.0, abs=0.002)
    # … and it is the position GET /jobs/<id> shows.
    assert _job(client, trip.customer, trip.job_id)["driver_location"] == {
        "lat": update["lat"],
        "lng": update["lng"],
        "at": update["at"],
    }


@pytest.mark.slow
def test_each_job_has_its_own_throttle(client: FlaskClient, factory: Factory, connect) -> None:
    here = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    there = _trip(client, factory, connect, driver_at=north_of(ELSEWHERE, 3), pickup=ELSEWHERE)
    first = _next_update(client, here, north_of(ORIGIN, 2))
    # Within the second that holds the first job back, the other job's update gets through.
    second = _next_update(client, there, north_of(ELSEWHERE, 2))
    assert _at(second) - _at(first) < 1, "not within the first job's second"


# ---------------------------------------------------------------------------------------
# 4. Nobody else sees it


@pytest.mark.slow
def test_only_the_jobs_customer_sees_where_its_driver_is(
    client: FlaskClient, factory: Factory, connect, tap: EventTap
) -> None:
    ours = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3), gateways=(0, 1))
    theirs = _trip(
        client,
        factory,
        connect,
        driver_at=north_of(ELSEWHERE, 3),
        pickup=ELSEWHERE,
        gateways=(1, 0),
    )
    bystander = factory.driver(at=north_of(ORIGIN, 1))  # near, connected, on no job
    bystander_sockets = [connect(bystander, 0), connect(bystander, 1)]
    idle_customer = factory.customer()
    idle_customer_sockets = [connect(idle_customer, 0), connect(idle_customer, 1)]

    ours_update = _next_update(client, ours, north_of(ORIGIN, 2))
    theirs_update = _next_update(client, theirs, north_of(ELSEWHERE, 2), via="rest")
    assert theirs_update["distance_km"] == pytest.approx(2.0, abs=0.002)

    # A driver on no job, reporting both ways, a quiet second after anything else.
    _wait_out_throttle(ours, theirs)
    assert bystander_sockets[0].call("driver:location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}) == {
        "ok": True
    }
    _report(client, bystander, north_of(ORIGIN, 0.5), "rest")
    time.sleep(NOTHING_MORE_S)

    assert ours.updates() == [ours_update] and theirs.updates() == [theirs_update]
    assert tap.of(UPDATE) == [
        (customer_room(ours.customer.id), ours_update),
        (customer_room(theirs.customer.id), theirs_update),
    ]
    for listener in [ours.reports, theirs.reports, *bystander_sockets, *idle_customer_sockets]:
        assert listener.got(UPDATE) == []


# ---------------------------------------------------------------------------------------
# 5. Nothing once the job ends; a released job tracks its next driver


def _complete(client: FlaskClient, trip: Trip) -> None:
    _step(client, trip.driver, trip.job_id, "arrive", "arrived")
    _step(client, trip.driver, trip.job_id, "start", "started")
    _step(client, trip.driver, trip.job_id, "complete", "completed")


def _cancel(client: FlaskClient, trip: Trip) -> None:
    _step(client, trip.customer, trip.job_id, "cancel", "cancelled")


def _release(client: FlaskClient, trip: Trip) -> None:
    _step(client, trip.driver, trip.job_id, "arrive", "arrived")
    _step(client, trip.driver, trip.job_id, "release", "released")


ENDINGS = {"complete": _complete, "cancel": _cancel, "release": _release}
END_STATUS = {"complete": "completed", "cancel": "cancelled", "release": "pending"}
END_EVENT = {"complete": "completed", "cancel": "cancelled", "release": "released"}


@pytest.mark.slow
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_reports_reach_nobody_once_the_job_ends(
    client: FlaskClient, factory: Factory, connect, tap: EventTap, ending: str
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    last = _next_update(client, trip, north_of(ORIGIN, 2))
    ENDINGS[ending](client, trip)

    _wait_out_throttle(trip)
    _report(client, trip, north_of(ORIGIN, 1), "socket")
    _report(client, trip, north_of(ORIGIN, 1), "rest")
    _nothing_more(trip, 1)
    assert tap.of(UPDATE) == [(customer_room(trip.customer.id), last)]
    for account in (trip.customer, trip.driver):
        answer = client.get(f"/api/v1/jobs/{trip.job_id}", headers=account.headers)
        if answer.status_code == 200:  # a released job is no longer its driver's to see
            job: Any = answer.json
            assert job["status"] == END_STATUS[ending] and job["driver_location"] is None
        else:
            assert (ending, account.role, answer.status_code) == ("release", "driver", 404)


@pytest.mark.slow
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_report_right_after_the_job_ends_reaches_nobody(
    client: FlaskClient, factory: Factory, connect, ending: str
) -> None:
    """The contract sends `job:driver_location` only while the job is accepted, arrived or
    in progress: a report made after the step's 200 must not reach the customer, even
    before the worker has announced the step."""
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    _next_update(client, trip, north_of(ORIGIN, 2))
    if ending != "cancel":
        _step(client, trip.driver, trip.job_id, "arrive", "arrived")
    if ending == "complete":
        _step(client, trip.driver, trip.job_id, "start", "started")
    _wait_out_throttle(trip)
    step, by = {
        "complete": ("complete", trip.driver),
        "cancel": ("cancel", trip.customer),
        "release": ("release", trip.driver),
    }[ending]
    answer = client.post(f"/api/v1/jobs/{trip.job_id}/{step}", headers=by.headers)
    assert answer.status_code == 200, answer.json
    _report(client, trip, north_of(ORIGIN, 1), "socket")
    wait_until(lambda: _announced(trip.job_id, END_EVENT[ending]), 15, "the end announced")
    _nothing_more(trip, 1)


@pytest.mark.slow
def test_a_released_job_tracks_the_driver_who_takes_it_next(
    client: FlaskClient, factory: Factory, connect
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    _next_update(client, trip, north_of(ORIGIN, 2))
    successor = factory.driver(at=north_of(ORIGIN, 6))
    successor_socket = connect(successor, 1)
    _step(client, trip.driver, trip.job_id, "release", "released")
    assert _job(client, trip.customer, trip.job_id)["driver_location"] is None

    _take(client, successor, trip.job_id, times=2)
    # The successor's last position shows at once; their reports reach the customer.
    shown = _job(client, trip.customer, trip.job_id)["driver_location"]
    assert (shown["lat"], shown["lng"]) == north_of(ORIGIN, 6)
    after = Trip(trip.job_id, trip.customer, successor, trip.follows, successor_socket)
    update = _next_update(client, after, north_of(ORIGIN, 5))
    assert update["distance_km"] == pytest.approx(5.0, abs=0.002)
    # The releasing driver's reports reach nobody, and do not move the job's driver.
    _wait_out_throttle(trip, after)
    _report(client, trip, north_of(ORIGIN, 1), "socket")
    _report(client, trip, north_of(ORIGIN, 1), "rest")
    _nothing_more(after, 2)
    assert _job(client, trip.customer, trip.job_id)["driver_location"] == {
        "lat": update["lat"],
        "lng": update["lng"],
        "at": update["at"],
    }
    assert successor_socket.got(UPDATE) == [] == trip.reports.got(UPDATE)


# ---------------------------------------------------------------------------------------
# 6. GET /jobs/<id>: the last report, to the customer and the driver, while tracked


@pytest.mark.slow
def test_the_job_shows_its_drivers_last_position_while_tracked(
    client: FlaskClient, factory: Factory, connect
) -> None:
    customer = factory.customer()
    start = north_of(ORIGIN, 4)
    driver = factory.driver(at=start)
    follows, reports = connect(customer, 1), connect(driver, 0)
    job = factory.job(customer)
    wait_until(lambda: _offered(client, driver, job["id"]), 15, "the offer")
    assert _job(client, customer, job["id"])["driver_location"] is None
    assert _job(client, driver, job["id"])["driver_location"] is None  # offered, pending

    _take(client, driver, job["id"])
    for account in (customer, driver):
        shown = _job(client, account, job["id"])["driver_location"]
        assert (shown["lat"], shown["lng"]) == start and shown["at"].endswith("Z")

    trip = Trip(job["id"], customer, driver, follows, reports)
    update = _next_update(client, trip, north_of(ORIGIN, 3))
    for account in (customer, driver):
        assert _job(client, account, job["id"])["driver_location"] == {
            "lat": update["lat"],
            "lng": update["lng"],
            "at": update["at"],
        }
    # A report the throttle holds back from the customer still moves the position.
    held = north_of(ORIGIN, 2.5)
    before = time.time()
    _report(client, trip, held, "rest")
    for account in (customer, driver):
        shown = _job(client, account, job["id"])["driver_location"]
        assert (shown["lat"], shown["lng"]) == held
        assert _at(shown) >= before - 0.001
    _nothing_more(trip, 1)  # it was held back indeed
    # Every Job the API answers carries it: the job list and the driver's current job.
    [listed] = _answer(client, "/api/v1/jobs", customer)["jobs"]
    assert (listed["driver_location"]["lat"], listed["driver_location"]["lng"]) == held
    me = _answer(client, "/api/v1/drivers/me", driver)
    assert me["current_job"]["driver_location"] == listed["driver_location"]


# ---------------------------------------------------------------------------------------
# 7. The ack


@pytest.mark.slow
def test_the_ack_stays_ok_and_bad_reports_are_refused_without_effect(
    client: FlaskClient, factory: Factory, connect
) -> None:
    trip = _trip(client, factory, connect, driver_at=north_of(ORIGIN, 3))
    _next_update(client, trip, north_of(ORIGIN, 2))
    # Held back by the throttle: still {ok: true}.
    assert trip.reports.call("driver:location", {"lat": 38.75, "lng": -9.14}) == {"ok": True}
    _wait_out_throttle(trip)
    for bad, field in (
        ({"lat": 91, "lng": 0}, "lat"),
        ({"lat": 0, "lng": "-9"}, "lng"),
        ({"lat": 0}, "lng"),
        ("here", "body"),
    ):
        ack = trip.reports.call("driver:location", bad)
        assert ack["ok"] is False and ack["error"]["code"] == "validation_error", ack
        assert set(ack["error"]["fields"]) == {field}
        answer = client.put("/api/v1/drivers/me/location", json=bad, headers=trip.driver.headers)
        assert answer.status_code == 422, answer.json
    _nothing_more(trip, 1)
    shown = _job(client, trip.customer, trip.job_id)["driver_location"]
    assert (shown["lat"], shown["lng"]) == (38.75, -9.14)
    # A good report after the bad ones is the one that gets through.
    assert _next_update(client, trip, north_of(ORIGIN, 1))["distance_km"] == pytest.approx(
        1.0, abs=0.002
    )


# ---------------------------------------------------------------------------------------
# Unit tests of models.tracking against the real Redis


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        (ORIGIN, ORIGIN, 0.0),
        ((0.0, 0.0), (1.0, 0.0), 111.195),  # one degree of a meridian
        ((0.0, 0.0), (0.0, 90.0), math.pi / 2 * EARTH_RADIUS_KM),  # a quarter of the equator
        ((0.0, 0.0), (0.0, 180.0), math.pi * EARTH_RADIUS_KM),  # antipodes (asin clamp)
        ((90.0, 0.0), (-90.0, 45.0), math.pi * EARTH_RADIUS_KM),
        ((0.0, 179.5), (0.0, -179.5), 111.195),  # across the antimeridian
    ],
)
def test_great_circle_km_of_known_distances(
    a: tuple[float, float], b: tuple[float, float], km: float
) -> None:
    assert great_circle_km(*a, *b) == pytest.approx(km, abs=0.001)
    assert great_circle_km(*b, *a) == pytest.approx(km, abs=0.001)


def test_great_circle_km_nashville_to_los_angeles() -> None:
    """Rosetta Code's haversine example, 2887.2599506 km on a 6372.8 km sphere."""
    km = great_circle_km(36.12, -86.67, 33.94, -118.40)
    assert km * 6372.8 / EARTH_RADIUS_KM == pytest.approx(2887.2599506, abs=1e-6)


def _job_at(status: JobStatus, dropoff: tuple[float, float] | None, driver_id: int | None = 7):
    return Job(
        id=41,
        status=status.value,
        customer_id=3,
        driver_id=driver_id,
        pickup_lat=ORIGIN[0],
        pickup_lng=ORIGIN[1],
        dropoff_lat=dropoff[0] if dropoff else None,
        dropoff_lng=dropoff[1] if dropoff else None,
    )


def _distance_due(r: redis.Redis, driver_id: int, where: tuple[float, float]) -> float | None:
    """What a report from `where` sends the customer now (the throttle cleared first)."""
    r.delete(throttle_key(driver_id))
    update = record_position(r, driver_id, *where).customer_update
    if update is None:
        return None
    assert update.customer_id == 3 and update.payload["job_id"] == 41
    return float(update.payload["distance_km"])


DROPOFF = north_of(ORIGIN, 10)
HERE = north_of(ORIGIN, 4)


@pytest.mark.parametrize(
    ("status", "dropoff", "km"),
    [
        (JobStatus.accepted, DROPOFF, 4.0),
        (JobStatus.arrived, DROPOFF, 4.0),
        (JobStatus.in_progress, DROPOFF, 6.0),
        (JobStatus.accepted, None, 4.0),
        (JobStatus.in_progress, None, 4.0),
        (JobStatus.pending, DROPOFF, None),
        (JobStatus.completed, DROPOFF, None),
        (JobStatus.cancelled, None, None),
        (JobStatus.expired, None, None),
    ],
)
def test_the_target_follows_the_jobs_status(
    status: JobStatus, dropoff: tuple[float, float] | None, km: float | None
) -> None:
    r = redis_connection()
    sync_tracking(r, _job_at(status, dropoff), 1, [7])
    due = _distance_due(r, 7, HERE)
    assert due == (pytest.approx(km, abs=0.002) if km is not None else None)


def test_a_driver_let_go_is_no_longer_tracked() -> None:
    r = redis_connection()
    sync_tracking(r, _job_at(JobStatus.accepted, None), 1, [7])
    released = _job_at(JobStatus.pending, None, driver_id=None)
    sync_tracking(r, released, 2, [7])
    assert _distance_due(r, 7, HERE) is None
    assert r.ttl(target_key(7)) > 0  # the tombstone expires by itself


def test_a_late_announcement_never_overwrites_a_newer_target() -> None:
    r = redis_connection()
    sync_tracking(r, _job_at(JobStatus.in_progress, DROPOFF), 5, [7])
    sync_tracking(r, _job_at(JobStatus.accepted, DROPOFF), 4, [7])  # older, late
    assert _distance_due(r, 7, HERE) == pytest.approx(6.0, abs=0.002)
    sync_tracking(r, _job_at(JobStatus.completed, DROPOFF), 6, [7])
    sync_tracking(r, _job_at(JobStatus.in_progress, DROPOFF), 5, [7])  # a redelivery
    assert _distance_due(r, 7, HERE) is None
    sync_tracking(r, _job_at(JobStatus.accepted, None), 6, [7])  # same version: no change
    assert _distance_due(r, 7, HERE) is None
    sync_tracking(r, _job_at(JobStatus.accepted, None), 7, [7])  # the next job
    assert _distance_due(r, 7, HERE) == pytest.approx(4.0, abs=0.002)


def test_the_throttle_lets_one_report_a_second_through() -> None:
    r = redis_connection()
    sync_tracking(r, _job_at(JobStatus.accepted, None), 1, [7])
    assert record_position(r, 7, *HERE).customer_update is not None
    assert record_position(r, 7, *ORIGIN).customer_update is None
    assert 900 < r.pttl(throttle_key(7)) <= 1000  # held back for a second
    assert record_position(r, 8, *HERE).customer_update is None  # another driver, untracked
