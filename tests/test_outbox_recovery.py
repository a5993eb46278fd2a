"""The job_events outbox survives a SIGKILLed process: whatever single process dies, each
change's socket announcement goes out within 15 s of its commit and its push within 2 min.

Real processes: a dispatch worker and a push worker (concurrency 1), the relay, the fake APNs,
the API in-process (or under gunicorn), read off the Socket.IO channel on Redis. A worker is
made to hold a task deterministically: the test takes the job's announcement lock (the
PostgreSQL advisory lock every notify_* task takes first), or the fake APNs holds the push
unanswered; once the worker's log shows the task received and the task waits, the whole
worker (master and pool child) is SIGKILLed. The Redis broker keeps a dead worker's unacked
tasks for its one-hour visibility timeout, so recovery can only come from the relay's
sweep (`workers.relay`), which a fresh worker then serves."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from fake_apns import Behaviour, FakeAPNs, ReceivedPush
from models.db import session_scope, utcnow
from models.job_events import JobEvent
from tests.events import EventTap
from tests.factories import ORIGIN, Account, Answer, Factory, HttpClient
from tests.held_tasks import announcement_waiting, announcements_held, next_job_id, tasks_received
from tests.processes import (
    Process,
    free_port,
    start_relay,
    start_web,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.slow

ANNOUNCED_WITHIN_S = 15.0  # the bound: a change's socket announcement after its commit
PUSHED_WITHIN_S = 120.0  # … and its push
RELAY_AFTER_S = "2"
QUEUES = {"worker": "dispatch", "pushworker": "push"}
ROLES = ("worker", "pushworker", "relay")


class Crew:
    """The processes on the outbox's path, each replaceable after a kill: the dispatch
    worker (`worker`), the push worker (`pushworker`) and the `relay`."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.processes: dict[str, Process] = {}
        self._serial = itertools.count(1)

    def start(self, role: str) -> Process:
        n = next(self._serial)
        if role == "relay":
            log_dir = self.root / f"relay-{n}"
            log_dir.mkdir()
            process = start_relay(log_dir, self.env)
        else:
            process = start_worker(self.root, self.env, f"{role}-{n}", 1, QUEUES[role])
        self.processes[role] = process
        return process

    def kill(self, role: str) -> None:
        """SIGKILL the whole process group (master and pool children), as `Process.stop`
        does when SIGTERM is not enough, but with no warm shutdown first."""
        process = self.processes[role]
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(10)
        process.stop()  # closes its log

    def ensure_running(self) -> None:
        for role in ROLES:
            process = self.processes.get(role)
            if process is None or not process.alive():
                self.start(role)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


@pytest.fixture(scope="module")
def crew_processes(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[Crew]:
    # PUSH_DUE_S at its least: a push worker killed mid-send leaves its push due that long.
    env = {**apns_env, "RELAY_AFTER_S": RELAY_AFTER_S, "PUSH_DUE_S": "16"}
    crew = Crew(tmp_path_factory.mktemp("outbox"), env)
    try:
        yield crew
    finally:
        crew.stop()


@pytest.fixture
def crew(crew_processes: Crew) -> Crew:
    """Every process up (a test that killed one and failed leaves it dead)."""
    crew_processes.ensure_running()
    return crew_processes


@pytest.fixture
def tap() -> Iterator[EventTap]:
    with EventTap() as events:
        yield events


@dataclass(frozen=True)
class EventRow:
    id: int
    type: str
    at: datetime
    announced_at: datetime | None
    push_due_at: datetime | None


def _event_rows(job_id: int) -> list[EventRow]:
    with session_scope() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
        return [EventRow(e.id, e.type, e.at, e.announced_at, e.push_due_at) for e in events]


def _event(job_id: int, type_: str) -> EventRow:
    [row] = [row for row in _event_rows(job_id) if row.type == type_]
    return row


def _settled(job_id: int) -> bool:
    """Every event of the job announced, and no push owed."""
    rows = _event_rows(job_id)
    return bool(rows) and all(
        row.announced_at is not None and row.push_due_at is None for row in rows
    )


def _wait_settled(job_id: int, timeout_s: float = 30) -> None:
    wait_until(lambda: _settled(job_id), timeout_s, f"job {job_id}'s events announced, no push due")


def _kill_dispatch_worker_holding(
    crew: Crew, task: str, job_id: int, change: Callable[[], Any]
) -> Process:
    """Make the change while the job's announcements are held, SIGKILL the dispatch worker
    once it has received `task` and waits inside it, and start a fresh one."""
    doomed = crew.processes["worker"]
    before = tasks_received(doomed, task)
    with announcements_held(job_id):
        answer = change()
        assert answer.status_code in (200, 201), answer.json
        wait_until(
            lambda: tasks_received(doomed, task) > before, 10, f"the worker to receive {task}"
        )
        wait_until(lambda: announcement_waiting(job_id), 10, f"{task} to wait on the job lock")
        crew.kill("worker")
    return crew.start("worker")


def _seen(tap: EventTap, event: str, match: Callable[[Any, Any], bool]) -> datetime:
    """Wait for an emit of `event` whose (room, payload) matches; returns when it was seen
    (a little after it arrived: an upper bound)."""
    wait_until(
        lambda: any(match(room, payload) for room, payload in tap.of(event)),
        ANNOUNCED_WITHIN_S + 15,
        f"{event} to be emitted",
    )
    return utcnow()


def _status(tap: EventTap, status: str) -> list[tuple[Any, Any]]:
    return [(room, job) for room, job in tap.of("job:status") if job["status"] == status]


def _seen_status(tap: EventTap, job_id: int, status: str) -> datetime:
    return _seen(tap, "job:status", lambda _, job: job["id"] == job_id and job["status"] == status)


def _after(change: EventRow, seen: datetime) -> float:
    return (seen - change.at).total_seconds()


def _pushed(fake_apns: FakeAPNs, token: str, timeout_s: float = 30) -> ReceivedPush:
    def delivered() -> list[ReceivedPush]:
        return [p for p in fake_apns.received(token) if p.status == 200]

    wait_until(delivered, timeout_s, f"a push to {token[:8]}…")
    [push] = delivered()
    return push


def _pushed_after(change: EventRow, push: ReceivedPush) -> float:
    return push.at - change.at.timestamp()


def _step(client: FlaskClient, job_id: int, step: str, account: Account) -> Any:
    return client.post(f"/api/v1/jobs/{job_id}/{step}", headers=account.headers)


def _accepted_job(
    client: FlaskClient, factory: Factory, tap: EventTap, customer: Account, driver: Account
) -> int:
    """A job the driver accepted, every announcement of it done."""
    job = factory.job(customer)
    wait_until(lambda: tap.of("job:new"), 20, "the job offered")
    assert _step(client, job["id"], "accept", driver).status_code == 200
    _wait_settled(job["id"])
    return job["id"]


def _quiet() -> None:
    time.sleep(1.5)  # past a sweep tick: nothing more arrives


# --- a dispatch worker killed holding each kind of announcement ---------------------------


def test_worker_killed_holding_notify_nearby(
    crew: Crew, tap: EventTap, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    phone = factory.device(driver)
    job_id = next_job_id()

    _kill_dispatch_worker_holding(
        crew,
        "notify_nearby",
        job_id,
        lambda: factory.client.post(
            "/api/v1/jobs",
            json={"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}},
            headers=customer.headers,
        ),
    )

    created = _event(job_id, "created")
    seen = _seen(tap, "job:new", lambda room, offer: offer["job"]["id"] == job_id)
    assert _after(created, seen) <= ANNOUNCED_WITHIN_S
    push = _pushed(fake_apns, phone)
    assert push.payload["type"] == "job:new" and push.payload["job_id"] == job_id
    assert _pushed_after(created, push) <= PUSHED_WITHIN_S
    _wait_settled(job_id)
    # The sweep, not a redelivery:
    assert "re-driving 1 announcements" in crew.processes["relay"].log()
    _quiet()
    [(room, _)] = tap.of("job:new")
    assert room == f"driver:{driver.id}"
    assert len(fake_apns.received(phone)) == 1


def test_worker_killed_holding_notify_accepted(
    crew: Crew, tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    winner, other = factory.driver(), factory.driver()
    phone = factory.device(customer)
    job = factory.job(customer)
    tap.wait_for("job:new", count=2)
    _wait_settled(job["id"])

    _kill_dispatch_worker_holding(
        crew, "notify_accepted", job["id"], lambda: _step(client, job["id"], "accept", winner)
    )

    accepted = _event(job["id"], "accepted")
    seen = _seen(tap, "job:accepted", lambda _, payload: payload["job_id"] == job["id"])
    assert _after(accepted, seen) <= ANNOUNCED_WITHIN_S
    assert _after(accepted, _seen_status(tap, job["id"], "accepted")) <= ANNOUNCED_WITHIN_S
    push = _pushed(fake_apns, phone)
    assert push.payload["type"] == "job:accepted"
    assert _pushed_after(accepted, push) <= PUSHED_WITHIN_S
    _wait_settled(job["id"])
    assert "re-driving 1 announcements" in crew.processes["relay"].log()
    _quiet()
    [(rooms, _)] = tap.of("job:accepted")
    assert sorted(rooms) == sorted([f"driver:{winner.id}", f"driver:{other.id}"])
    assert len(_status(tap, "accepted")) == 1
    assert len(fake_apns.received(phone)) == 1


@pytest.mark.parametrize(
    ("step", "event", "status", "push_title"),
    [
        ("arrive", "arrived", "arrived", "Your driver is here"),
        ("start", "started", "in_progress", None),
        ("complete", "completed", "completed", "Job complete"),
    ],
)
def test_worker_killed_holding_notify_status(
    crew: Crew,
    tap: EventTap,
    client: FlaskClient,
    factory: Factory,
    fake_apns: FakeAPNs,
    step: str,
    event: str,
    status: str,
    push_title: str | None,
) -> None:
    customer, driver = factory.customer(), factory.driver()
    phone = factory.device(customer)
    job_id = _accepted_job(client, factory, tap, customer, driver)
    for earlier in ("arrive", "start", "complete")[: ("arrive", "start", "complete").index(step)]:
        assert _step(client, job_id, earlier, driver).status_code == 200
        _wait_settled(job_id)
    pushes_before = len(fake_apns.received(phone))

    _kill_dispatch_worker_holding(
        crew, "notify_status", job_id, lambda: _step(client, job_id, step, driver)
    )

    change = _event(job_id, event)
    assert _after(change, _seen_status(tap, job_id, status)) <= ANNOUNCED_WITHIN_S
    if push_title is not None:
        wait_until(lambda: len(fake_apns.received(phone)) > pushes_before, 30, "the push")
        push = fake_apns.received(phone)[-1]
        assert push.payload["aps"]["alert"]["title"] == push_title and push.status == 200
        assert _pushed_after(change, push) <= PUSHED_WITHIN_S
    _wait_settled(job_id)
    assert "re-driving 1 announcements" in crew.processes["relay"].log()
    _quiet()
    [(rooms, _)] = _status(tap, status)
    assert sorted(rooms) == sorted([f"customer:{customer.id}", f"driver:{driver.id}"])
    assert len(fake_apns.received(phone)) == pushes_before + (push_title is not None)


def test_worker_killed_holding_notify_removed(
    crew: Crew, tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer, driver, other = factory.customer(), factory.driver(), factory.driver()
    driver_phone = factory.device(driver)
    job_id = _accepted_job(client, factory, tap, customer, driver)
    offer_pushes = len(fake_apns.received(driver_phone))

    _kill_dispatch_worker_holding(
        crew, "notify_removed", job_id, lambda: _step(client, job_id, "cancel", customer)
    )

    cancelled = _event(job_id, "cancelled")
    seen = _seen(tap, "job:removed", lambda _, payload: payload["job_id"] == job_id)
    assert _after(cancelled, seen) <= ANNOUNCED_WITHIN_S
    assert _after(cancelled, _seen_status(tap, job_id, "cancelled")) <= ANNOUNCED_WITHIN_S
    wait_until(lambda: len(fake_apns.received(driver_phone)) > offer_pushes, 30, "the push")
    push = fake_apns.received(driver_phone)[-1]
    assert (push.payload["type"], push.status) == ("job:cancelled", 200)
    assert _pushed_after(cancelled, push) <= PUSHED_WITHIN_S
    _wait_settled(job_id)
    assert "re-driving 1 announcements" in crew.processes["relay"].log()
    _quiet()
    [(rooms, removed)] = tap.of("job:removed")
    assert sorted(rooms) == sorted([f"driver:{driver.id}", f"driver:{other.id}"])
    assert removed == {"job_id": job_id, "reason": "cancelled"}
    assert len(_status(tap, "cancelled")) == 1
    assert len(fake_apns.received(driver_phone)) == offer_pushes + 1


# --- the push worker killed holding send_push ---------------------------------------------


def test_push_worker_killed_holding_send_push(
    crew: Crew, tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer, driver = factory.customer(), factory.driver()
    phone = factory.device(customer)
    job = factory.job(customer)
    tap.wait_for("job:new")
    _wait_settled(job["id"])
    fake_apns.behave(phone, Behaviour(200, None, times=1, delay_s=300))  # the first hangs
    pusher = crew.processes["pushworker"]
    before = tasks_received(pusher, "send_push")

    assert _step(client, job["id"], "accept", driver).status_code == 200
    accepted = _event(job["id"], "accepted")
    assert _after(accepted, _seen_status(tap, job["id"], "accepted")) <= ANNOUNCED_WITHIN_S
    wait_until(lambda: tasks_received(pusher, "send_push") > before, 10, "send_push received")
    wait_until(lambda: fake_apns.pending() == 1, 10, "the push to hang on APNs")
    crew.kill("pushworker")
    assert fake_apns.received(phone) == []  # never answered: the push is still owed
    assert _event(job["id"], "accepted").push_due_at is not None
    crew.start("pushworker")

    push = _pushed(fake_apns, phone, PUSHED_WITHIN_S + 15)
    assert push.payload["type"] == "job:accepted"
    assert _pushed_after(accepted, push) <= PUSHED_WITHIN_S
    _wait_settled(job["id"])
    assert "re-driving 0 announcements and 1 pushes" in crew.processes["relay"].log()
    _quiet()
    assert len(fake_apns.received(phone)) == 1
    assert len(tap.of("job:accepted")) == 1 and len(_status(tap, "accepted")) == 1


# --- a lost enqueue, and the relay killed ------------------------------------------------------


class PatientHttpClient(HttpClient):
    """Waits longer for an answer: a gunicorn worker's first one, on a loaded machine, can
    take more than HttpClient's 10 s (how fast the API answers is not the point here)."""

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        kwargs.setdefault("timeout", 60)
        return super().request(method, path, **kwargs)


def test_changes_whose_enqueue_was_lost_are_announced_by_the_sweep(
    crew: Crew, tap: EventTap, fake_apns: FakeAPNs, tmp_path: Path
) -> None:
    # A web process whose broker is unreachable: its changes commit, their publish fails.
    web, port = start_web(tmp_path, {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    http = PatientHttpClient(f"http://127.0.0.1:{port}")
    try:
        through_web = Factory(http)  # its requests also warm the web's workers up
        customer, driver = through_web.customer(), through_web.driver()
        phone = through_web.device(customer)
        job_id = through_web.job(customer)["id"]
        wait_until(lambda: "could not enqueue notify_nearby" in web.log(), 10, "the lost publish")
        seen = _seen(tap, "job:new", lambda _, offer: offer["job"]["id"] == job_id)
        assert _after(_event(job_id, "created"), seen) <= ANNOUNCED_WITHIN_S
        _wait_settled(job_id)

        took = http.post(f"/api/v1/jobs/{job_id}/accept", headers=driver.headers)
        assert took.status_code == 200, took.json
        wait_until(lambda: "could not enqueue notify_accepted" in web.log(), 10, "lost publish")
        accepted = _event(job_id, "accepted")
        seen = _seen(tap, "job:accepted", lambda _, payload: payload["job_id"] == job_id)
        assert _after(accepted, seen) <= ANNOUNCED_WITHIN_S
        assert _pushed_after(accepted, _pushed(fake_apns, phone)) <= PUSHED_WITHIN_S
        _wait_settled(job_id)
        _quiet()
        assert len(tap.of("job:new")) == 1 and len(tap.of("job:accepted")) == 1
        assert len(_status(tap, "accepted")) == 1
    finally:
        http.close()
        web.stop()


def test_relay_killed_does_not_stop_announcements_made_after_commit(
    crew: Crew, tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    crew.kill("relay")
    customer, driver = factory.customer(), factory.driver()
    customer_phone, driver_phone = factory.device(customer), factory.device(driver)

    job = factory.job(customer)
    seen = _seen(tap, "job:new", lambda _, offer: offer["job"]["id"] == job["id"])
    assert _after(_event(job["id"], "created"), seen) <= ANNOUNCED_WITHIN_S
    _pushed(fake_apns, driver_phone)
    assert _step(client, job["id"], "accept", driver).status_code == 200
    seen = _seen(tap, "job:accepted", lambda _, payload: payload["job_id"] == job["id"])
    assert _after(_event(job["id"], "accepted"), seen) <= ANNOUNCED_WITHIN_S
    _pushed(fake_apns, customer_phone)
    assert _step(client, job["id"], "cancel", customer).status_code == 200
    seen = _seen(tap, "job:removed", lambda _, payload: payload["job_id"] == job["id"])
    assert _after(_event(job["id"], "cancelled"), seen) <= ANNOUNCED_WITHIN_S
    _wait_settled(job["id"])

    assert not crew.processes["relay"].alive()  # no sweep played a part
    _quiet()
    assert [len(tap.of(e)) for e in ("job:new", "job:accepted", "job:removed")] == [1, 1, 1]
    assert len(fake_apns.received(driver_phone)) == 2  # the offer and the cancellation
    assert len(fake_apns.received(customer_phone)) == 1
