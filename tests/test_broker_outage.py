"""With the broker down, jobs are still created, and the relay's sweep of the job_events outbox
dispatches them once it is back. Real gunicorn, Celery workers and the relay, and a broker of
this test's own to take down: on Redis (TEST_BROKER=redis) a Redis server of its own, which is
the cache too; on RabbitMQ, a proxy in front of the run's vhost, whose connections it drops."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.job_events import EventType, JobEvent
from models.offers import Offer
from settings import settings
from tests.factories import Factory, HttpClient
from tests.processes import (
    PrivateRedis,
    RabbitMQVhost,
    TcpProxy,
    start_relay,
    start_web,
    start_workers,
    wait_until,
)

pytestmark = pytest.mark.slow


class Broker:
    """The processes' broker, to take down and bring back: `env` points them at it."""

    def __init__(self, tmp_path: Path) -> None:
        if settings.broker_is_rabbitmq:
            vhost = RabbitMQVhost(settings.broker_url)
            self.server: PrivateRedis | TcpProxy = TcpProxy(vhost.address)
            self.env = {"CELERY_BROKER_URL": vhost.through(self.server.port)}
        else:
            self.server = PrivateRedis(tmp_path)
            self.env = {"REDIS_URL": self.server.url}

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path)
    broker.up()
    yield broker
    broker.down()


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


def test_job_created_while_the_broker_is_down_is_dispatched_when_it_is_back(
    tmp_path: Path, broker: Broker
) -> None:
    env = {**broker.env, "RELAY_AFTER_S": "1"}
    web, port = start_web(tmp_path, env)
    worker, push_worker = start_workers(tmp_path, env)
    relay = start_relay(tmp_path, env)
    http = HttpClient(f"http://127.0.0.1:{port}")
    try:
        factory = Factory(http)
        customer = factory.customer()
        driver = factory.driver()

        broker.down()
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

        broker.up()  # a Redis comes back empty: it keeps nothing on disk, like production's
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
