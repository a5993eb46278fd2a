"""The queue's wait as the workers see it, and the relay holding its re-drives for that long:
an announcement still waiting in a long queue is not overdue, so a backlog is not re-driven
onto its own tail (the round-3 soak: 15,772 re-drives in 4 minutes filled the queue)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from models.accounts import User
from models.db import redis_connection, session_scope
from models.job_events import JobEvent
from models.jobs import Place
from models.lifecycle import create_job
from settings import settings
from tests.factories import ORIGIN, Factory
from tests.processes import free_port, start_worker, wait_until
from workers.backlog import WAIT_KEPT_S, note_start, published_header, queue_waits
from workers.enqueue import announce
from workers.relay import overdue_announcements, overdue_pushes

FLOWER_AUTH = ("operator", "backlog-test-password")


def test_a_worker_stores_the_wait_it_saw_at_most_once_a_second() -> None:
    assert queue_waits(["dispatch", "push"]) == {"dispatch": 0.0, "push": 0.0}
    assert note_start("dispatch", time.time() - 12) == pytest.approx(12, abs=1)
    assert note_start("dispatch", time.time()) == pytest.approx(0, abs=1)  # not stored
    assert queue_waits(["dispatch", "push"])["dispatch"] == pytest.approx(12, abs=1)
    assert queue_waits(["dispatch", "push"])["push"] == 0.0
    assert (
        0
        < redis_connection().ttl(settings.redis_key("backlog", "dispatch", "wait"))
        <= (WAIT_KEPT_S)
    )


def test_a_message_without_its_publish_time_is_not_counted() -> None:
    assert note_start("push", None) is None
    assert note_start("push", "yesterday") is None
    assert queue_waits(["push"]) == {"push": 0.0}
    assert float(published_header()["published_at"]) == pytest.approx(time.time(), abs=5)


def _lost_created_event(factory: Factory, age_s: float) -> int:
    """A job whose enqueue was lost (made without its publish), its event `age_s` old."""
    customer = factory.customer()
    with session_scope() as session:
        customer_row = session.get(User, customer.id)
        assert customer_row is not None
        done = create_job(session, customer_row, Place(*ORIGIN, None), None, None)
        [event] = done.events
        session.execute(
            update(JobEvent)
            .where(JobEvent.id == event.id)
            .values(at=event.at - timedelta(seconds=age_s))
        )
        return event.id


def test_an_event_younger_than_the_queue_s_wait_is_not_overdue(factory: Factory) -> None:
    young = _lost_created_event(factory, settings.relay_after_s + 5)
    old = _lost_created_event(factory, settings.relay_after_s + 40)
    assert [event_id for event_id, _ in overdue_announcements(30)] == [old]
    assert [event_id for event_id, _ in overdue_announcements(0)] == [young]  # old: held


def test_a_push_due_within_the_push_queue_s_wait_is_not_overdue(factory: Factory) -> None:
    event_id = _lost_created_event(factory, 0)
    with session_scope() as session:
        due = session.get(JobEvent, event_id)
        assert due is not None
        due.announced_at = due.at
        due.push_due_at = due.at - timedelta(seconds=10)
    assert overdue_pushes(30) == []
    assert overdue_pushes(5) == [event_id]


@pytest.mark.slow
def test_the_worker_reports_how_long_its_tasks_waited_in_the_queue(
    factory: Factory, tmp_path: Path
) -> None:
    """A task published while no worker runs waits in the broker's queue; the worker that
    starts it stores that wait for the relay and counts it for operators."""
    factory.driver()
    event_id = _lost_created_event(factory, 0)
    announce([(event_id, "created")])
    time.sleep(4)  # the task's time in the queue, the quantity under test
    metrics_port = free_port()
    worker = start_worker(
        tmp_path,
        {
            "METRICS_PORT": str(metrics_port),
            "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),  # the pool's children
        },
    )
    try:
        wait_until(lambda: queue_waits(["dispatch"])["dispatch"] >= 4, 60, "the stored wait")
        assert queue_waits(["dispatch"])["dispatch"] < 60
        scrape = requests.get(
            f"http://127.0.0.1:{metrics_port}/metrics", auth=FLOWER_AUTH, timeout=10
        ).text
        counted = [
            line
            for line in scrape.splitlines()
            if line.startswith('dispatch_task_wait_seconds_count{queue="dispatch"}')
        ]
        assert counted == ['dispatch_task_wait_seconds_count{queue="dispatch"} 1.0'], scrape
        buckets = {
            line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in scrape.splitlines()
            if line.startswith("dispatch_task_wait_seconds_bucket")
        }
        assert buckets["2.0"] == 0 and buckets["+Inf"] == 1
    finally:
        worker.stop()
