"""The relay process (the outbox sweep) as `make run` starts it, beside a dispatch worker and
Flower: idle for 30 s it sends no task and logs nothing, so Flower's task list stays empty;
a change whose enqueue was lost is still announced, and then the sweep shows in both."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from models.accounts import User
from models.db import redis_connection, session_scope
from models.jobs import Place
from models.lifecycle import create_job
from settings import PROJECT_ROOT, settings
from tests.events import EventTap
from tests.factories import ORIGIN, Factory
from tests.processes import (
    BIN,
    Process,
    free_port,
    port_open,
    start_relay,
    start_worker,
    wait_until,
)
from workers.relay import (
    ANNOUNCEMENT_QUEUE,
    PUSH_QUEUE,
    RELAY_HOLD_S,
    RELAY_MAX_HOLD_S,
    claim_relays,
)

pytestmark = pytest.mark.slow

IDLE_S = 30
FLOWER_AUTH = ("operator", "relay-test-password")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Process, Process, str, str]]:
    """A dispatch worker, the relay and Flower; yields the relay, the worker, Flower's URL
    and the relay's /metrics."""
    port, metrics_port = free_port(), free_port()
    env = {"FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH), "FLOWER_PORT": str(port)}
    flower = Process("flower", [str(BIN / "python"), "-m", "workers.flower"], tmp_path, env)
    worker = start_worker(tmp_path, env)
    relay = start_relay(tmp_path, {**env, "METRICS_PORT": str(metrics_port)})
    wait_until(lambda: port_open(port) or not flower.alive(), 30, "Flower to listen")
    try:
        yield relay, worker, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        for process in (relay, worker, flower):
            process.stop()


def _flower_tasks(url: str) -> dict[str, dict]:
    answer = requests.get(f"{url}/api/tasks", auth=FLOWER_AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    tasks: dict[str, dict] = answer.json()
    return tasks


def _info_lines(process: Process) -> list[str]:
    return [line for line in process.log().splitlines() if " INFO " in line]


def test_an_idle_sweep_is_silent_and_a_lost_enqueue_is_still_announced(
    stack: tuple[Process, Process, str, str], factory: Factory
) -> None:
    relay, worker, flower, metrics = stack
    customer, driver = factory.customer(), factory.driver()
    started = _info_lines(relay)  # its start: what it sweeps, where its metrics are
    assert all("sweeping the outbox" in line or "metrics for" in line for line in started)

    time.sleep(IDLE_S)  # proving that nothing happens: ~20 passes of the sweep

    assert _flower_tasks(flower) == {}
    assert _info_lines(relay) == started
    assert "received" not in worker.log()  # no task reached the worker
    assert relay.alive() and "re-driving" not in relay.log()

    # A web process that died between its commit and its publish: the change is in the
    # outbox, no task was sent.
    with EventTap() as tap:
        with session_scope() as session:
            customer_row = session.get(User, customer.id)
            assert customer_row is not None
            job = create_job(session, customer_row, Place(*ORIGIN, None), None, None).job
            job_id = job.id
        [(room, offer)] = tap.wait_for("job:new", timeout_s=30)
    assert (room, offer["job"]["id"]) == (f"driver:{driver.id}", job_id)
    assert "re-driving 1 announcements and 0 pushes" in relay.log()
    assert requests.get(metrics, timeout=10).status_code == 401
    scrape = requests.get(metrics, auth=FLOWER_AUTH, timeout=10).text
    assert 'dispatch_sweep_redriven_total{kind="announcement"} 1.0' in scrape.splitlines()
    wait_until(
        lambda: any(
            task.get("name") == "workers.tasks.notify_nearby"
            for task in _flower_tasks(flower).values()
        ),
        30,
        "Flower to list the re-driven notify_nearby",
    )


def test_each_re_drive_of_an_event_doubles_its_hold() -> None:
    """A backlog in a slow queue is not multiplied by every pass: the same overdue event is
    handed out again after 5, 10, 20 … s, at most RELAY_MAX_HOLD_S."""
    r = redis_connection()
    hold = settings.redis_key("relay", "announce", 7, "hold")
    holds = []
    for _ in range(6):
        assert claim_relays("announce", [7, 8]) == ([7, 8] if not holds else [7])
        assert claim_relays("announce", [7]) == []  # held
        holds.append(r.ttl(hold))
        r.delete(hold)  # as if the hold had passed
        r.set(settings.redis_key("relay", "announce", 8, "hold"), 1)
    assert holds == [RELAY_HOLD_S, 10, 20, 40, RELAY_MAX_HOLD_S, RELAY_MAX_HOLD_S]


def test_the_relay_watches_the_queues_the_procfile_s_workers_consume() -> None:
    """The queues come from Celery's routing (celeryconfig): the announcements' and the
    pushes', each consumed by one of the Procfile's workers."""
    consumed = re.findall(r"--queues (\S+)", (PROJECT_ROOT / "Procfile").read_text())
    assert (ANNOUNCEMENT_QUEUE, PUSH_QUEUE) == ("dispatch", "push")
    assert sorted(consumed) == sorted([ANNOUNCEMENT_QUEUE, PUSH_QUEUE])
