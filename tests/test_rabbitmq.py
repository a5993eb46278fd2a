"""What RabbitMQ is chosen for, on real workers (TEST_BROKER=rabbitmq runs this module, on a
vhost of its run's own; README, "Which broker").

A worker that dies holding a late-acked task gives it back at once: RabbitMQ requeues a
consumer's unacked messages as soon as its connection drops, where Redis keeps them for its
visibility timeout (an hour here: only the relay's sweep recovers them, as
tests/test_outbox_recovery.py shows). A retried task's countdown is waited out in the
broker's delay queues (Celery's native delayed delivery on quorum queues and topic
exchanges), not in a worker's memory. And a publish waits for the broker's confirm, but not
for ever: a broker that stops answering fails it within about a second."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fake_apns import Behaviour, FakeAPNs
from settings import settings
from tests.events import EventTap
from tests.factories import ORIGIN, Factory, HttpClient
from tests.held_tasks import (
    announcement_waiting,
    announcements_held,
    next_job_id,
    tasks_received,
)
from tests.processes import (
    Process,
    RabbitMQVhost,
    TcpProxy,
    start_web,
    start_worker,
    start_workers,
    wait_until,
)

pytestmark = pytest.mark.slow

REDELIVERED_WITHIN_S = 5.0  # against Redis's visibility timeout of 3,600 s


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[list[Process]]:
    """The dispatch worker and the push worker; a test that kills the dispatch worker puts
    the one that took its task over in its place."""
    processes = start_workers(tmp_path_factory.mktemp("rabbitmq-workers"), apns_env)
    yield processes
    for process in reversed(processes):
        process.stop()


def test_a_task_held_by_a_killed_worker_goes_at_once_to_another(
    workers: list[Process], tmp_path: Path, factory: Factory, apns_env: dict[str, str]
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    spare = start_worker(tmp_path, apns_env, "spare", concurrency=1)
    candidates = [workers[0], spare]  # both take tasks from `dispatch`
    job_id = next_job_id()
    try:
        with EventTap() as tap:
            with announcements_held(job_id):
                factory.job(customer)
                wait_until(
                    lambda: any(tasks_received(w, "notify_nearby") for w in candidates),
                    10,
                    "a worker to receive notify_nearby",
                )
                [holder] = [w for w in candidates if tasks_received(w, "notify_nearby")]
                [other] = [w for w in candidates if w is not holder]
                wait_until(lambda: announcement_waiting(job_id), 10, "the task to wait")

                os.killpg(holder.popen.pid, signal.SIGKILL)  # master and pool child, unacked
                killed_at = time.monotonic()
                holder.popen.wait(10)
                holder.stop()  # closes its log
                workers[0] = other
                wait_until(lambda: tasks_received(other, "notify_nearby"), 30, "the redelivery")
                redelivered_after_s = time.monotonic() - killed_at
            # The lock is released: the other worker runs the task to its end.
            [(room, offer)] = tap.wait_for("job:new")
    finally:
        if spare is not workers[0]:
            spare.stop()
    assert (room, offer["job"]["id"]) == (f"driver:{driver.id}", job_id)
    assert redelivered_after_s < REDELIVERED_WITHIN_S


def _logged_at(line: str) -> float:
    """When a log line (workers.logs.TEXT_FORMAT) was written, in seconds."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_retried_push_waits_out_its_countdown_in_the_broker(
    workers: list[Process], factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    phone = factory.device(factory.driver())
    fake_apns.behave(phone, Behaviour(503, "ServiceUnavailable", times=1))
    factory.job(customer)
    wait_until(lambda: len(fake_apns.received(phone)) == 2, 30, "the push and its retry")
    assert [p.status for p in fake_apns.received(phone)] == [503, 200]

    log = workers[1].log().splitlines()
    [retry] = [line for line in log if "send_push[" in line and " retry: Retry in " in line]
    retried = re.search(r"send_push\[([0-9a-f-]+)\] retry: Retry in ([0-9.]+)s", retry)
    assert retried is not None
    task_id, countdown = retried.groups()

    def received() -> list[str]:
        lines = workers[1].log().splitlines()
        return [line for line in lines if f"send_push[{task_id}] received" in line]

    # The master logs a receipt; the pool process that sent the push may be read first.
    wait_until(lambda: len(received()) == 2, 10, "the log line of the retry's receipt")
    [_, again] = received()
    # Held by the broker for the countdown's whole seconds (Celery rounds it down; the worker
    # waits out the fraction): a worker holding it itself would have received it at once.
    assert _logged_at(again) - _logged_at(retry) >= int(float(countdown)) - 0.1 >= 0.9


def test_a_broker_that_stops_answering_fails_the_publish_within_about_a_second(
    tmp_path: Path,
) -> None:
    vhost = RabbitMQVhost(settings.broker_url)
    with TcpProxy(vhost.address) as proxy:
        web, port = start_web(tmp_path, {"CELERY_BROKER_URL": vhost.through(proxy.port)})
        http = HttpClient(f"http://127.0.0.1:{port}")
        try:
            factory = Factory(http)
            customer = factory.customer()
            factory.job(customer)  # published: the web holds a connection to the broker
            assert "could not enqueue" not in web.log()

            proxy.pause()  # as RabbitMQ in a memory alarm: it stops reading from publishers
            started = time.monotonic()
            created = http.post(
                "/api/v1/jobs",
                json={"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}},
                headers=customer.headers,
                timeout=10,
            )
            answered_after_s = time.monotonic() - started
            assert created.status_code == 201, created.json
            assert web.log().count("could not enqueue notify_nearby") == 1
            assert answered_after_s < 3

            proxy.resume()
            factory.job(customer)  # the stalled connection was dropped: a new one takes it
            assert web.log().count("could not enqueue") == 1
        finally:
            http.close()
            web.stop()
