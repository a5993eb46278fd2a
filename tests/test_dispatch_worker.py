"""notify_nearby / notify_accepted / notify_removed in a real Celery worker process, on the
real Redis broker and PostgreSQL, read off the Socket.IO message queue."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import func, select, update

from fake_apns import Behaviour, FakeAPNs
from models.db import session_scope, utcnow
from models.devices import DeviceToken
from models.job_events import JobEvent
from models.jobs import Job
from models.offers import Offer
from settings import settings
from tests.events import EventTap
from tests.factories import ORIGIN, Account, Factory, north_of
from tests.processes import Process, start_workers, wait_until
from workers.enqueue import enqueue
from workers.relay import expire_jobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]) -> Iterator[Process]:
    """The dispatch worker (a push worker runs beside it, as in the Procfile)."""
    dispatch_worker, push_worker = start_workers(tmp_path_factory.mktemp("worker"), apns_env)
    yield dispatch_worker
    push_worker.stop()
    dispatch_worker.stop()


@pytest.fixture
def tap() -> Iterator[EventTap]:
    with EventTap() as events:
        yield events


def _offers(job_id: int) -> list[int]:
    with session_scope() as session:
        return sorted(session.scalars(select(Offer.driver_id).where(Offer.job_id == job_id)))


def _rooms(events: list[tuple[object, dict]]) -> list[object]:
    return sorted(str(room) for room, _ in events)


def test_job_reaches_exactly_the_eligible_drivers(worker, tap, client, factory: Factory) -> None:
    customer = factory.customer()
    near = [factory.driver(at=north_of(ORIGIN, km)) for km in (1, 5, 25)]
    factory.driver(at=north_of(ORIGIN, 40))  # far
    factory.driver(online=False)  # offline
    stale = factory.driver()
    busy = factory.driver()
    redis_seen = settings.redis_key("drivers", "seen")
    tap_client = tap._client  # same Redis as the app
    tap_client.zadd(redis_seen, {str(stale.id): time.time() - settings.location_stale_s - 5})
    earlier = factory.job(customer)
    factory.offer(earlier["id"])
    took = client.post(f"/api/v1/jobs/{earlier['id']}/accept", headers=busy.headers)
    assert took.status_code == 200

    job = factory.job(customer, at=ORIGIN, notes="flat tyre")

    def offers_of_this_job() -> list[tuple[object, dict]]:
        # The earlier job was offered too (before the busy driver took it): not these.
        return [(room, o) for room, o in tap.of("job:new") if o["job"]["id"] == job["id"]]

    wait_until(lambda: len(offers_of_this_job()) >= 3, 20, "the job's three offers")
    offers = offers_of_this_job()
    assert _rooms(offers) == sorted(f"driver:{d.id}" for d in near)
    by_room = {room: payload for room, payload in offers}
    first = by_room[f"driver:{near[0].id}"]
    assert first["job"]["id"] == job["id"]
    assert first["job"]["notes"] == "flat tyre"
    assert first["distance_km"] == pytest.approx(1.0, abs=0.01)
    assert set(first) == {"job", "distance_km", "offered_at"}
    assert first["offered_at"].endswith("Z")
    wait_until(lambda: _offers(job["id"]) == sorted(d.id for d in near), 10, "offers recorded")
    time.sleep(0.5)  # nothing more arrives for the others
    assert len(offers_of_this_job()) == 3


def _created_event(job_id: int) -> int:
    with session_scope() as session:
        [event_id] = session.scalars(
            select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.type == "created")
        )
        return event_id


def _unannounce(event_id: int) -> None:
    """As if the worker that announced the event had died before marking it."""
    with session_scope() as session:
        session.execute(update(JobEvent).where(JobEvent.id == event_id).values(announced_at=None))


def test_a_task_delivered_twice_offers_nobody_twice(worker, tap, factory: Factory) -> None:
    customer = factory.customer()
    drivers = [factory.driver() for _ in range(3)]
    job = factory.job(customer)
    tap.wait_for("job:new", count=3)
    created = _created_event(job["id"])
    assert enqueue("notify_nearby", created)  # announced already: does nothing
    late = factory.driver()  # eligible now: offered once, by a rerun of the whole event
    _unannounce(created)
    assert enqueue("notify_nearby", created)
    assert enqueue("notify_nearby", created)
    tap.wait_for("job:new", count=4)
    wait_until(lambda: late.id in _offers(job["id"]), 10, "the late driver's offer")
    time.sleep(0.5)
    rooms = [room for room, _ in tap.of("job:new")]
    assert sorted(rooms) == sorted(f"driver:{d.id}" for d in [*drivers, late])
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(Offer.job_id == job["id"]))
    assert count == 4


def test_accept_and_cancel_reach_every_offered_driver(worker, tap, client, factory: Factory):
    customer = factory.customer()
    winner, other = factory.driver(), factory.driver()
    job = factory.job(customer)
    tap.wait_for("job:new", count=2)
    assert (
        client.post(f"/api/v1/jobs/{job['id']}/accept", headers=winner.headers).status_code == 200
    )

    [(rooms, accepted)] = tap.wait_for("job:accepted")
    assert sorted(rooms) == sorted([f"driver:{winner.id}", f"driver:{other.id}"])
    assert accepted["job_id"] == job["id"] and accepted["accepted_at"].endswith("Z")
    [(status_rooms, status)] = tap.wait_for("job:status")
    assert sorted(status_rooms) == sorted([f"customer:{customer.id}", f"driver:{winner.id}"])
    assert status["status"] == "accepted" and status["driver"]["id"] == winner.id

    assert (
        client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=customer.headers).status_code == 200
    )
    [(removed_rooms, removed)] = tap.wait_for("job:removed")
    assert sorted(removed_rooms) == sorted([f"driver:{winner.id}", f"driver:{other.id}"])
    assert removed == {"job_id": job["id"], "reason": "cancelled"}


def _hold_offer_row(job_id: int, driver: Account) -> psycopg2.extensions.connection:
    """Insert (uncommitted) the offer the task is about to insert: its INSERT then waits."""
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO offers (job_id, driver_id, distance_km, offered_at)"
            " VALUES (%s, %s, 0, now())",
            (job_id, driver.id),
        )
    return conn


def _waiters(held: psycopg2.extensions.connection) -> int:
    """How many sessions wait on a lock the held transaction has."""
    with held.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        [waiting] = cur.fetchone()
    return int(waiting)


def _busy_child_pids(worker: Process) -> list[int]:
    children = Path(f"/proc/{worker.popen.pid}/task/{worker.popen.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def test_worker_killed_mid_task_loses_no_offer(worker, tap, factory: Factory) -> None:
    customer = factory.customer()
    drivers = [factory.driver() for _ in range(5)]
    job = factory.job(customer)  # dispatched at once: every driver offered
    tap.wait_for("job:new", count=5)
    late = factory.driver()
    held = _hold_offer_row(job["id"], late)
    received = worker.log().count("] received")
    created = _created_event(job["id"])
    _unannounce(created)
    try:
        assert enqueue("notify_nearby", created)
        wait_until(lambda: worker.log().count("] received") > received, 10, "the rerun to start")
        wait_until(lambda: _waiters(held) > 0, 10, "the rerun to wait on the held row")
        for pid in _busy_child_pids(worker):
            os.kill(pid, signal.SIGKILL)
    finally:
        held.rollback()
        held.close()
    tap.wait_for("job:new", count=6, timeout_s=30)
    assert late.id in _offers(job["id"])
    assert _offers(job["id"]) == sorted(d.id for d in [*drivers, late])


def _push_owed(job_id: int) -> bool:
    """Whether an event of the job still owes a push (a retry is due)."""
    with session_scope() as session:
        owed = session.scalar(
            select(func.count()).where(JobEvent.job_id == job_id, JobEvent.push_due_at.is_not(None))
        )
    return bool(owed)


def _device(token: str) -> tuple[bool, str | None]:
    with session_scope() as session:
        device = session.scalar(select(DeviceToken).where(DeviceToken.token == token))
        assert device is not None
        return device.active, device.last_apns_reason


def test_offer_pushes_go_to_the_offered_drivers_devices(
    worker, tap, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    near = factory.driver(at=north_of(ORIGIN, 2))
    far = factory.driver(at=north_of(ORIGIN, 40))
    phone, tablet = factory.device(near), factory.device(near, "sandbox")
    far_phone = factory.device(far)
    job = factory.job(customer, address="Rua Augusta 1")

    wait_until(lambda: len(fake_apns.received()) == 2, 20, "two pushes")
    assert sorted(p.token for p in fake_apns.received()) == sorted([phone, tablet])
    assert fake_apns.received(far_phone) == []
    [push] = fake_apns.received(phone)
    assert push.payload == {
        "aps": {
            "alert": {"title": "New job nearby", "body": "2.0 km from you · Rua Augusta 1"},
            "sound": "default",
        },
        "type": "job:new",
        "job_id": job["id"],
    }
    expires = datetime.fromisoformat(job["expires_at"].replace("Z", "+00:00"))
    assert push.headers["apns-expiration"] == str(int(expires.timestamp()))
    assert push.headers["apns-collapse-id"] == f"job-{job['id']}"
    assert (push.headers["apns-push-type"], push.headers["apns-priority"]) == ("alert", "10")
    wait_until(lambda: _delivered(phone), 10, "delivery recorded")


def _delivered(token: str) -> bool:
    with session_scope() as session:
        device = session.scalar(select(DeviceToken).where(DeviceToken.token == token))
        return device is not None and device.last_pushed_at is not None


@pytest.mark.parametrize(
    ("status", "reason"),
    [(410, "Unregistered"), (400, "BadDeviceToken"), (400, "DeviceTokenNotForTopic")],
)
def test_dead_tokens_are_deactivated_and_never_pushed_again(
    worker, tap, factory: Factory, fake_apns: FakeAPNs, status: int, reason: str
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    dead, alive = factory.device(driver), factory.device(driver)
    fake_apns.behave(dead, Behaviour(status, reason))
    factory.job(customer)
    wait_until(lambda: _device(dead) == (False, reason), 20, "the dead token deactivated")
    assert _device(alive) == (True, None)

    factory.job(customer)
    wait_until(lambda: len(fake_apns.received(alive)) == 2, 20, "the second job's push")
    assert len(fake_apns.received(dead)) == 1


@pytest.mark.parametrize(
    ("status", "reason"), [(429, "TooManyRequests"), (503, "ServiceUnavailable")]
)
def test_transient_answers_are_retried_until_delivered(
    worker, tap, factory: Factory, fake_apns: FakeAPNs, status: int, reason: str
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    phone = factory.device(driver)
    fake_apns.behave(phone, Behaviour(status, reason, times=2))
    factory.job(customer)
    wait_until(lambda: len(fake_apns.received(phone)) == 3, 30, "two retries")
    assert [p.status for p in fake_apns.received(phone)] == [status, status, 200]
    assert _device(phone) == (True, None)


def test_offer_push_is_not_retried_once_the_job_is_taken(
    worker, tap, client, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    winner, other = factory.driver(), factory.driver()
    phone = factory.device(other)
    fake_apns.behave(phone, Behaviour(503, "ServiceUnavailable"))
    job = factory.job(customer)
    wait_until(lambda: len(fake_apns.received(phone)) == 1, 20, "the first attempt")
    accepted = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=winner.headers)
    assert accepted.status_code == 200
    wait_until(lambda: not _push_owed(job["id"]), 20, "the retry to find the job taken")
    assert len(fake_apns.received(phone)) == 1


def test_slow_or_down_apns_does_not_hold_back_job_new(
    worker, tap, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    phone = factory.device(driver)
    fake_apns.behave(phone, Behaviour(200, None, delay_s=10))
    factory.job(customer)
    tap.wait_for("job:new", timeout_s=5)
    wait_until(lambda: fake_apns.pending() == 1, 10, "the push to hang on APNs")

    factory.job(customer)  # while that push still waits on APNs
    tap.wait_for("job:new", count=2, timeout_s=5)
    assert fake_apns.received(phone) == [] and fake_apns.pending() == 1

    fake_apns.down()
    factory.job(customer)
    tap.wait_for("job:new", count=3, timeout_s=5)


def test_expired_jobs_leave_every_feed_and_the_customer_is_told(
    worker, tap, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    customer_phone = factory.device(customer)
    job = factory.job(customer)
    tap.wait_for("job:new")
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert expire_jobs() == 1  # what the relay does every pass

    [(rooms, removed)] = tap.wait_for("job:removed")
    assert (rooms, removed) == (f"driver:{driver.id}", {"job_id": job["id"], "reason": "expired"})
    [(status_rooms, status)] = tap.wait_for("job:status")
    assert status_rooms == f"customer:{customer.id}" and status["status"] == "expired"
    wait_until(lambda: fake_apns.received(customer_phone), 20, "the customer's push")
    [push] = fake_apns.received(customer_phone)
    assert push.payload["aps"]["alert"]["title"] == "No driver found"
    assert (push.payload["type"], push.payload["job_id"]) == ("job:expired", job["id"])
    assert push.headers["apns-push-type"] == "alert" and "apns-priority" not in push.headers
