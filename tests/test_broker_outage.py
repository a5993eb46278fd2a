"""With Redis (the broker) down, jobs are still created, and the relay's sweep of the job_events
outbox dispatches them once it is back. Real gunicorn, Celery workers and the relay, and a Redis
server of this test's own."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.job_events import EventType, JobEvent
from models.offers import Offer
from tests.factories import Factory, HttpClient
from tests.processes import PrivateRedis, start_relay, start_web, start_workers, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


def _dispatch_state(job_id: int) -> tuple[bool, list[int]]:
    """Whether the job's `created` event is announced, and who was offered the job."""
    with session_scope() as session:
        created = session.scalar(
            select(JobEvent).where(
                JobEvent.job_id == job_id, JobEvent.type == EventType.created.value
            )
        )
        assert created is not None
        offered = list(session.scalars(select(Offer.driver_id).where(Offer.job_id == job_id)))
        return created.announced_at is not None, offered


def test_job_created_while_redis_is_down_is_dispatched_when_it_is_back(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = {"REDIS_URL": private_redis.url, "RELAY_AFTER_S": "1"}
    web, port = start_web(tmp_path, env)
    worker, push_worker = start_workers(tmp_path, env)
    relay = start_relay(tmp_path, env)
    http = HttpClient(f"http://127.0.0.1:{port}")
    try:
        factory = Factory(http)
        customer = factory.customer()
        driver = factory.driver()

        private_redis.stop()
        # A short client timeout: the API must answer at once, not wait on the broker.
        created = http.post(
            "/api/v1/jobs",
            json={"pickup": {"lat": 38.7223, "lng": -9.1393}},
            headers=customer.headers,
            timeout=3,
        )
        assert created.status_code == 201, created.json
        job_id = created.json["id"]
        assert _dispatch_state(job_id) == (False, [])
        assert "could not enqueue notify_nearby for event" in web.log()

        private_redis.start()  # empty: it keeps nothing on disk, like production's cache
        moved = http.put(
            "/api/v1/drivers/me/location",
            json={"lat": 38.7223, "lng": -9.1393},
            headers=driver.headers,
        )
        assert moved.status_code == 204
        wait_until(lambda: _dispatch_state(job_id)[0], 60, "the sweep to re-drive the job")
        assert _dispatch_state(job_id) == (True, [driver.id])
        assert "re-driving 1 announcements and 0 pushes" in relay.log()
    finally:
        http.close()
        for process in (relay, push_worker, worker, web):
            process.stop()
