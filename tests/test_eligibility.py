"""The dispatch rule on real Redis and PostgreSQL: who is eligible for a job at a point."""

import time

from sqlalchemy import update

from models.accounts import DriverProfile
from models.db import redis_connection, session_scope
from models.positions import drivers_near, eligible_drivers
from models.tracking import record_position
from settings import settings
from tests.factories import ORIGIN, Factory, north_of


def _eligible(point: tuple[float, float] = ORIGIN) -> list[tuple[int, float]]:
    with session_scope() as session:
        found = eligible_drivers(session, redis_connection(), *point)
    return [(c.driver_id, round(c.distance_km, 1)) for c in found]


def test_near_drivers_are_eligible_nearest_first(factory: Factory) -> None:
    far_in = factory.driver(at=north_of(ORIGIN, 25))
    near = factory.driver(at=north_of(ORIGIN, 1))
    mid = factory.driver(at=north_of(ORIGIN, 5))
    assert _eligible() == [(near.id, 1.0), (mid.id, 5.0), (far_in.id, 25.0)]


def test_drivers_beyond_the_radius_are_not(factory: Factory) -> None:
    factory.driver(at=north_of(ORIGIN, 40))
    factory.driver(at=north_of(ORIGIN, settings.dispatch_radius_km + 0.5))
    inside = factory.driver(at=north_of(ORIGIN, settings.dispatch_radius_km - 0.5))
    assert [driver for driver, _ in _eligible()] == [inside.id]


def test_offline_drivers_are_not(client, factory: Factory) -> None:
    online = factory.driver()
    never_online = factory.driver(online=False)  # reports a position all the same
    went_offline = factory.driver()
    client.put(
        "/api/v1/drivers/me/availability", json={"online": False}, headers=went_offline.headers
    )
    answer = client.put(  # and reports on while offline
        "/api/v1/drivers/me/location",
        json={"lat": ORIGIN[0], "lng": ORIGIN[1]},
        headers=went_offline.headers,
    )
    assert answer.status_code == 204
    located = [c.driver_id for c in drivers_near(redis_connection(), *ORIGIN, 1, 60)]
    assert sorted(located) == sorted([online.id, never_online.id, went_offline.id])
    assert _eligible() == [(online.id, 0.0)]


def test_stale_positions_are_not(factory: Factory) -> None:
    stale = factory.driver()
    fresh = factory.driver()
    seen_key = settings.redis_key("drivers", "seen")
    redis_connection().zadd(seen_key, {str(stale.id): time.time() - settings.location_stale_s - 1})
    assert [driver for driver, _ in _eligible()] == [fresh.id]


def test_drivers_on_a_job_and_unapproved_drivers_are_not(client, factory: Factory) -> None:
    customer = factory.customer()
    busy = factory.driver()
    unapproved = factory.driver()
    with session_scope() as session:
        session.execute(
            update(DriverProfile)
            .where(DriverProfile.user_id == unapproved.id)
            .values(approved=False)
        )
    job = factory.job(customer)
    factory.offer(job["id"])
    assert client.post(f"/api/v1/jobs/{job['id']}/accept", headers=busy.headers).status_code == 200
    assert _eligible() == []


def test_positions_near_the_poles_are_indexed_at_the_edge(factory: Factory) -> None:
    r = redis_connection()
    record_position(r, 999, 89.9, 10.0)
    assert [c.driver_id for c in drivers_near(r, 89.9, 10.0, 1, 60)] == [999]
