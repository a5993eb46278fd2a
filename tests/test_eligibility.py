"""The dispatch rule on real Redis and PostgreSQL: who is eligible for a job at a point, and
the index of dispatchable drivers that answers it without a database query, kept right by
each change of a driver's standing and reconciled by the relay."""

import time

import pytest
from sqlalchemy import select, update

from models.accounts import DriverProfile
from models.db import redis_connection, session_scope
from models.job_events import EventType, JobEvent, announcement
from models.jobs import Job
from models.offers import Offer, offer_and_announce, offer_round
from models.positions import (
    dispatchable_key,
    drivers_near,
    eligible_drivers,
    reconcile_standing,
    reindex_after_commit,
    set_standing,
    standing_lost,
)
from models.schemas import JobView, OfferView, as_json
from models.tracking import last_positions, record_position
from settings import settings
from tests.factories import ORIGIN, Factory, north_of
from workers.relay import reconcile_index


def _eligible(point: tuple[float, float] = ORIGIN) -> list[tuple[int, float]]:
    found = eligible_drivers(redis_connection(), *point)
    return [(c.driver_id, round(c.distance_km, 1)) for c in found]


def _set_in_database(driver_id: int, **values: object) -> None:
    """Change a profile behind the models' back, as a lost index write leaves it."""
    with session_scope() as session:
        session.execute(
            update(DriverProfile).where(DriverProfile.user_id == driver_id).values(**values)
        )


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
    r = redis_connection()
    stored = last_positions(r, [online.id, never_online.id, went_offline.id])
    assert sorted(stored) == sorted([online.id, never_online.id, went_offline.id])
    assert [c.driver_id for c in drivers_near(r, *ORIGIN, 1)] == [online.id]
    assert _eligible() == [(online.id, 0.0)]


def test_stale_positions_are_not(factory: Factory) -> None:
    stale = factory.driver()
    fresh = factory.driver()
    seen_key = settings.redis_key("drivers", "seen")
    redis_connection().zadd(seen_key, {str(stale.id): time.time() - settings.location_stale_s - 1})
    assert [driver for driver, _ in _eligible()] == [fresh.id]


def _geo_members() -> set[int]:
    return {int(m) for m in redis_connection().zrange(settings.redis_key("drivers", "geo"), 0, -1)}


def test_a_stale_driver_leaves_the_index_at_the_next_query_and_returns_with_a_report(
    factory: Factory,
) -> None:
    stale, fresh = factory.driver(), factory.driver(at=north_of(ORIGIN, 1))
    seen_key = settings.redis_key("drivers", "seen")
    r = redis_connection()
    r.zadd(seen_key, {str(stale.id): time.time() - settings.location_stale_s - 1})
    assert _geo_members() == {stale.id, fresh.id}
    assert _eligible() == [(fresh.id, 1.0)]
    assert _geo_members() == {fresh.id}  # dropped once, by that query
    assert r.zscore(seen_key, str(stale.id)) is None
    assert _eligible() == [(fresh.id, 1.0)]
    record_position(r, stale.id, *ORIGIN)
    assert _eligible() == [(stale.id, 0.0), (fresh.id, 1.0)]


def test_a_driver_back_in_standing_is_placed_only_if_their_last_report_is_fresh(
    factory: Factory,
) -> None:
    recent, old = factory.driver(), factory.driver(at=north_of(ORIGIN, 1))
    r = redis_connection()
    set_standing(r, {recent.id: False, old.id: False})
    assert _geo_members() == set()
    seen_key = settings.redis_key("drivers", "seen")
    r.zadd(seen_key, {str(old.id): time.time() - settings.location_stale_s - 1})
    set_standing(r, {recent.id: True, old.id: True})
    assert _geo_members() == {recent.id}  # nothing would drop a stale position
    assert _eligible() == [(recent.id, 0.0)]
    record_position(r, old.id, *north_of(ORIGIN, 1))
    assert _eligible() == [(recent.id, 0.0), (old.id, 1.0)]


def test_drivers_on_a_job_and_unapproved_drivers_are_not(client, factory: Factory) -> None:
    customer = factory.customer()
    busy = factory.driver()
    unapproved = factory.driver()
    _set_in_database(unapproved.id, approved=False)
    assert reconcile_standing(redis_connection()) == [unapproved.id]
    job = factory.job(customer)
    factory.offer(job["id"])
    assert client.post(f"/api/v1/jobs/{job['id']}/accept", headers=busy.headers).status_code == 200
    assert _eligible() == []


def test_positions_near_the_poles_are_indexed_at_the_edge(factory: Factory) -> None:
    r = redis_connection()
    record_position(r, 999, 89.9, 10.0)
    set_standing(r, {999: True})
    assert [c.driver_id for c in drivers_near(r, 89.9, 10.0, 1)] == [999]
    record_position(r, 998, -89.9, 10.0)
    set_standing(r, {998: True})
    record_position(r, 998, -89.9, 10.0)
    assert [c.driver_id for c in drivers_near(r, -89.9, 10.0, 1)] == [998]


@pytest.mark.parametrize("step", ["complete", "release"])
def test_a_driver_freed_from_a_job_is_eligible_at_once_where_they_last_were(
    client, factory: Factory, step: str
) -> None:
    driver = factory.driver(at=north_of(ORIGIN, 3))
    job = factory.job(factory.customer())
    factory.offer(job["id"])
    jobs = f"/api/v1/jobs/{job['id']}"
    assert client.post(f"{jobs}/accept", headers=driver.headers).status_code == 200
    assert _eligible() == []
    record_position(redis_connection(), driver.id, *north_of(ORIGIN, 2))  # driving there
    assert _eligible() == []
    steps = ["arrive", "start", "complete"] if step == "complete" else ["release"]
    for each in steps:
        assert client.post(f"{jobs}/{each}", headers=driver.headers).status_code == 200, each
    assert _eligible() == [(driver.id, 2.0)]  # no new report needed


def test_an_index_write_waits_for_the_commit_and_a_rollback_makes_none(factory: Factory) -> None:
    driver = factory.driver()
    _set_in_database(driver.id, online=False)
    with pytest.raises(RuntimeError), session_scope() as session:
        reindex_after_commit(session, driver.id)
        raise RuntimeError("rolled back")
    assert _eligible() == [(driver.id, 0.0)]  # still as it was: nothing ran
    with session_scope() as session:
        reindex_after_commit(session, driver.id)
        assert _eligible() == [(driver.id, 0.0)]  # not before the commit
    assert _eligible() == []


def test_a_report_takes_a_wrongly_indexed_driver_out(factory: Factory) -> None:
    """A report from a driver who is not in the set removes them from the geo index, so a
    late write of an old position cannot leave them there."""
    driver = factory.driver()
    r = redis_connection()
    r.srem(dispatchable_key(), str(driver.id))
    assert _eligible() == [(driver.id, 0.0)]
    record_position(r, driver.id, *ORIGIN)
    assert _eligible() == []


def test_the_relay_rebuilds_an_index_redis_lost(factory: Factory) -> None:
    near, far = factory.driver(at=north_of(ORIGIN, 1)), factory.driver(at=north_of(ORIGIN, 4))
    factory.driver(online=False)
    r = redis_connection()
    r.delete(dispatchable_key())
    r.delete(settings.redis_key("drivers", "geo"))
    assert standing_lost(r)
    assert _eligible() == []
    assert sorted(reconcile_index()) == sorted([near.id, far.id])
    assert _eligible() == [(near.id, 1.0), (far.id, 4.0)]
    assert not standing_lost(r)
    assert reconcile_index(force=True) == []


def test_a_round_s_offers_are_sent_as_stored_nearest_first(factory: Factory) -> None:
    """The `job:new` payloads built from what the round's upsert returned are the ones the
    stored offers give (the REST feed's OfferView), nearest first."""
    customer = factory.customer()
    drivers = [factory.driver(at=north_of(ORIGIN, km)) for km in (7, 2, 12)]
    job_id = factory.job(customer, at=ORIGIN)["id"]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        offered = offer_round(session, redis_connection(), job)
        assert offered is not None
        made = offered.offers
        view = JobView.of(job)
        payloads = OfferView.payloads(as_json(view), made)
    assert [offer.driver_id for offer in made] == [drivers[1].id, drivers[0].id, drivers[2].id]
    expected = {"round": 1, "count": 3, "drivers": sorted(d.id for d in drivers)}
    assert offered.event.data == expected
    with session_scope() as session:
        event = session.get(JobEvent, offered.event.id)
        assert event is not None
        assert (event.type, event.job_id, event.data) == ("offered", job_id, expected)
        assert (event.announced_at, event.actor_id, event.push_attempts) == (None, None, 0)
        stored = {offer.id: offer for offer in session.scalars(select(Offer))}
        assert [stored[offer.id].driver_id for offer in made] == [o.driver_id for o in made]
        assert payloads == [as_json(OfferView.of(stored[offer.id], view)) for offer in made]
    assert payloads[0]["distance_km"] == pytest.approx(2.0, abs=0.01)
    with session_scope() as session:  # a second run of the round offers nobody again
        job = session.get(Job, job_id)
        assert job is not None
        assert offer_round(session, redis_connection(), job) is None


def _created_event(job_id: int) -> int:
    with session_scope() as session:
        created = session.scalar(
            select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.type == EventType.created)
        )
    assert created is not None
    return created


def _offer_announcing(job_id: int, announced: dict) -> tuple[list[int] | None, bool]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        offered, marked = offer_and_announce(session, redis_connection(), job, announced)
    return (None if offered is None else [o.driver_id for o in offered.offers]), marked


def _announced(event_id: int) -> tuple[object, object]:
    with session_scope() as session:
        event = session.get(JobEvent, event_id)
        assert event is not None
        return event.announced_at, event.push_due_at


def test_a_round_marks_the_event_that_opened_it_announced(factory: Factory) -> None:
    """`offer_and_announce` (one statement on PostgreSQL): the round's offers and the mark
    of the event that opened it, with its push due; marked once, whatever was offered."""
    customer = factory.customer()
    driver = factory.driver(at=north_of(ORIGIN, 2))
    job_id = factory.job(customer, at=ORIGIN)["id"]
    created = _created_event(job_id)
    announced = announcement(created, 30.0)
    assert _offer_announcing(job_id, announced) == ([driver.id], True)
    assert _announced(created) == (announced["now"], announced["due"])
    # Run again (a redelivered task): nobody new, and no second mark.
    assert _offer_announcing(job_id, announcement(created, None)) == (None, False)
    assert _announced(created) == (announced["now"], announced["due"])


def test_a_round_that_offers_nobody_new_still_marks_its_event(factory: Factory) -> None:
    customer = factory.customer()
    factory.driver(at=north_of(ORIGIN, 2))
    job_id = factory.job(customer, at=ORIGIN)["id"]
    with session_scope() as session:  # offered already, by an earlier run that did not mark
        job = session.get(Job, job_id)
        assert job is not None
        assert offer_round(session, redis_connection(), job) is not None
    created = _created_event(job_id)
    announced = announcement(created, None)
    assert _offer_announcing(job_id, announced) == (None, True)
    assert _announced(created) == (announced["now"], None)
    lonely = factory.job(customer, at=north_of(ORIGIN, 500))["id"]  # nobody within reach
    assert _offer_announcing(lonely, announcement(_created_event(lonely), None)) == (None, True)
