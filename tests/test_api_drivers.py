"""The signed-in driver: availability, position reports, and the live offers feed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from models.accounts import DriverProfile
from models.db import redis_connection, session_scope, utcnow
from models.jobs import Job
from models.positions import Candidate, drivers_near
from models.tracking import last_positions
from tests.contract import API, UTC_Z, assert_error, assert_job, parse_time
from tests.factories import ORIGIN, Account, Factory, north_of
from tests.stored import positions

AVAILABILITY = f"{API}/drivers/me/availability"
LOCATION = f"{API}/drivers/me/location"
OFFERS = f"{API}/drivers/me/offers"


def _near(point: tuple[float, float], radius_km: float = 1) -> list[Candidate]:
    return drivers_near(redis_connection(), point[0], point[1], radius_km)


def _online(driver: Account) -> bool:
    with session_scope() as session:
        profile = session.get(DriverProfile, driver.id)
        assert profile is not None
        return profile.online


def _feed(client: FlaskClient, driver: Account) -> list[int]:
    answer = client.get(OFFERS, headers=driver.headers)
    assert answer.status_code == 200, answer.get_json()
    return [offer["job"]["id"] for offer in answer.get_json()["offers"]]


# --- availability ------------------------------------------------------------------------


@pytest.mark.parametrize("online", [True, False])
def test_availability_answers_200_with_the_new_state(
    client: FlaskClient, factory: Factory, online: bool
) -> None:
    driver = factory.driver(online=not online, at=None)
    answer = client.put(AVAILABILITY, json={"online": online}, headers=driver.headers)
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    assert answer.get_json() == {"online": online}
    assert _online(driver) is online
    again = client.put(AVAILABILITY, json={"online": online}, headers=driver.headers)
    assert (again.status_code, again.get_json()) == (200, {"online": online})  # idempotent
    assert _online(driver) is online


def test_going_offline_drops_the_position(client: FlaskClient, factory: Factory) -> None:
    driver = factory.driver(at=ORIGIN)
    assert [c.driver_id for c in _near(ORIGIN)] == [driver.id]
    client.put(AVAILABILITY, json={"online": False}, headers=driver.headers)
    assert _near(ORIGIN) == []


# --- location ----------------------------------------------------------------------------


def test_location_is_204_and_the_driver_is_then_near_it(
    client: FlaskClient, factory: Factory
) -> None:
    driver, other = factory.driver(at=None), factory.driver(at=None)
    answer = client.put(LOCATION, json={"lat": ORIGIN[0], "lng": ORIGIN[1]}, headers=driver.headers)
    assert (answer.status_code, answer.get_data()) == (204, b"")
    [found] = _near(ORIGIN)
    assert found.driver_id == driver.id and found.distance_km == pytest.approx(0, abs=0.01)

    moved_to = north_of(ORIGIN, 5)
    client.put(LOCATION, json={"lat": moved_to[0], "lng": moved_to[1]}, headers=driver.headers)
    assert _near(ORIGIN) == []
    assert [c.driver_id for c in _near(moved_to)] == [driver.id]
    [far] = _near(ORIGIN, radius_km=10)
    assert far.distance_km == pytest.approx(5, abs=0.05)
    assert other.id not in [c.driver_id for c in _near(ORIGIN, radius_km=20_000)]


@pytest.mark.parametrize(("lat", "lng"), [(90, 180), (-90, -180), (0, 0), (-33, 151.2)])
def test_every_point_on_earth_is_a_valid_location(
    client: FlaskClient, factory: Factory, lat: float, lng: float
) -> None:
    driver = factory.driver(at=None)
    answer = client.put(LOCATION, json={"lat": lat, "lng": lng}, headers=driver.headers)
    assert (answer.status_code, answer.get_data()) == (204, b"")
    assert [member for member, _ in positions()["seen"]] == [str(driver.id)]


def test_an_offline_driver_may_report_a_location(client: FlaskClient, factory: Factory) -> None:
    """Stored, but outside the dispatch index until they go online, which then places them
    at it at once."""
    driver = factory.driver(online=False, at=None)
    answer = client.put(LOCATION, json={"lat": 1.5, "lng": 2.5}, headers=driver.headers)
    assert answer.status_code == 204
    assert list(last_positions(redis_connection(), [driver.id])) == [driver.id]
    assert _near((1.5, 2.5)) == []
    client.put(AVAILABILITY, json={"online": True}, headers=driver.headers)
    assert [c.driver_id for c in _near((1.5, 2.5))] == [driver.id]


# --- offers feed -------------------------------------------------------------------------


def test_an_empty_feed(client: FlaskClient, factory: Factory) -> None:
    driver = factory.driver()
    answer = client.get(OFFERS, headers=driver.headers)
    assert (answer.status_code, answer.get_json()) == (200, {"offers": []})


def test_an_offer_carries_the_job_its_distance_and_when(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer(name="Ana")
    driver = factory.driver(at=north_of(ORIGIN, 5))
    job = factory.job(customer, address="Rua Augusta 1", notes="blue door")
    before = utcnow()
    assert factory.offer(job["id"]) == [driver.id]

    answer = client.get(OFFERS, headers=driver.headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert list(body) == ["offers"] and len(body["offers"]) == 1
    [offer] = body["offers"]
    assert list(offer) == ["job", "distance_km", "offered_at"]
    assert offer["job"] == job  # the Job as its customer sees it
    assert_job(offer["job"], status="pending", driver=None, notes="blue door")
    assert isinstance(offer["distance_km"], float)
    assert offer["distance_km"] == pytest.approx(5, abs=0.05)
    assert UTC_Z.match(offer["offered_at"])
    assert before - timedelta(milliseconds=1) <= parse_time(offer["offered_at"]) <= utcnow()


def test_the_feed_is_newest_first_and_only_pending_jobs(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    driver, rival = factory.driver(), factory.driver()
    jobs = [factory.job(customer)["id"] for _ in range(4)]
    for job_id in jobs:
        assert sorted(factory.offer(job_id)) == sorted([driver.id, rival.id])
    assert _feed(client, driver) == jobs[::-1]

    cancelled, taken, expired, pending = jobs
    assert (
        client.post(f"{API}/jobs/{cancelled}/cancel", headers=customer.headers).status_code == 200
    )
    assert client.post(f"{API}/jobs/{taken}/accept", headers=rival.headers).status_code == 200
    with session_scope() as session:  # past its expiry, not yet marked by the relay
        session.execute(
            update(Job).where(Job.id == expired).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert _feed(client, driver) == [pending]

    newest = factory.job(customer)["id"]
    factory.offer(newest)
    assert _feed(client, driver) == [newest, pending]


def test_a_feed_holds_only_the_jobs_offered_to_that_driver(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    near, far = factory.driver(), factory.driver(at=north_of(ORIGIN, 100))
    job = factory.job(customer)
    assert factory.offer(job["id"]) == [near.id]
    assert (_feed(client, near), _feed(client, far)) == ([job["id"]], [])


def test_a_customer_has_no_feed(client: FlaskClient, factory: Factory) -> None:
    assert_error(client.get(OFFERS, headers=factory.customer().headers), 403, "forbidden")
