"""Every change of a job's life announced by the real workers: `job:status` to the people
concerned, exactly once, `job:removed` to the drivers who drop it, a new round of `job:new`
after a release, and the contract's pushes on the fake APNs; retried steps announce
nothing twice, and the job's event log ends announced.

A real dispatch worker and push worker (no relay: nothing here may rely on the sweep),
the Flask test client for requests, the Socket.IO emits read off Redis."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from fake_apns import FakeAPNs
from models.db import session_scope, utcnow
from models.job_events import JobEvent
from models.jobs import Job
from tests.contract import JOB_FIELDS
from tests.events import EventTap
from tests.factories import ORIGIN, Account, Factory, north_of
from tests.processes import Process, start_workers, wait_until
from workers.relay import expire_jobs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("workers")]

# Long enough for a duplicate announcement to show: a task takes a few milliseconds.
QUIET_S = 0.7

# A driver's step, the status it leads to, and the customer's push (title, type) if any.
JOURNEY = (
    ("accept", "accepted", ("Driver on the way", "job:accepted")),
    ("arrive", "arrived", ("Your driver is here", "job:arrived")),
    ("start", "in_progress", None),
    ("complete", "completed", ("Job complete", "job:completed")),
)
EVENT_OF_STEP = {
    "accept": "accepted",
    "arrive": "arrived",
    "start": "started",
    "complete": "completed",
    "release": "released",
    "decline": "declined",
    "cancel": "cancelled",
}


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[list[Process]]:
    """The dispatch worker and the push worker, as in the Procfile."""
    processes = start_workers(tmp_path_factory.mktemp("lifecycle-workers"), apns_env)
    yield processes
    for process in reversed(processes):
        process.stop()


@pytest.fixture
def tap() -> Iterator[EventTap]:
    with EventTap() as events:
        yield events


def customer_room(account: Account) -> str:
    return f"customer:{account.id}"


def driver_room(account: Account) -> str:
    return f"driver:{account.id}"


def _job_of(event: str, payload: dict[str, Any]) -> int:
    if event == "job:status":
        return int(payload["id"])
    if event == "job:new":
        return int(payload["job"]["id"])
    return int(payload["job_id"])


def told(tap: EventTap, event: str, job_id: int) -> dict[str, list[dict[str, Any]]]:
    """Each room's payloads of `event` about the job, in the order they were emitted."""
    by_room: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rooms, payload in tap.of(event):
        if _job_of(event, payload) == job_id:
            for room in [rooms] if isinstance(rooms, str) else rooms:
                by_room[room].append(payload)
    return dict(by_room)


def counts(tap: EventTap, event: str, job_id: int) -> dict[str, int]:
    return {room: len(payloads) for room, payloads in told(tap, event, job_id).items()}


def wait_told(
    tap: EventTap, event: str, job_id: int, expected: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """Wait until each room has had at least its count of `event` about the job."""

    def arrived() -> bool:
        seen = counts(tap, event, job_id)
        return all(seen.get(room, 0) >= n for room, n in expected.items())

    try:
        wait_until(arrived, 20, f"{event} for job {job_id} to {expected}")
    except TimeoutError:
        raise AssertionError(
            f"{event} for job {job_id}: wanted {expected}, saw {counts(tap, event, job_id)}"
        ) from None
    return told(tap, event, job_id)


def step(client: FlaskClient, account: Account, job_id: int, name: str, **kwargs: Any) -> Any:
    answer = client.post(f"/api/v1/jobs/{job_id}/{name}", headers=account.headers, **kwargs)
    assert answer.status_code == (204 if name == "decline" else 200), (name, answer.json)
    return answer.json


def alerts(fake_apns: FakeAPNs, token: str) -> list[tuple[str, str, int]]:
    """(title, type, job id) of every push the token got, each checked to be an alert."""
    pushes = fake_apns.received(token)
    assert all(p.headers["apns-push-type"] == "alert" for p in pushes)
    return [
        (p.payload["aps"]["alert"]["title"], p.payload["type"], p.payload["job_id"]) for p in pushes
    ]


def wait_pushes(fake_apns: FakeAPNs, token: str, count: int) -> list[tuple[str, str, int]]:
    try:
        wait_until(lambda: len(fake_apns.received(token)) >= count, 20, f"{count} pushes")
    except TimeoutError:
        raise AssertionError(
            f"wanted {count} pushes to {token[:8]}…, got {alerts(fake_apns, token)}"
        ) from None
    return alerts(fake_apns, token)


def offer_pushed(fake_apns: FakeAPNs, token: str, job_id: int, count: int) -> None:
    """Wait for the token's `count`-th "New job nearby" push for the job, so that a later
    step cannot make it moot before it is sent."""
    offer = ("New job nearby", "job:new", job_id)

    def pushed() -> bool:
        return alerts(fake_apns, token).count(offer) >= count

    wait_until(pushed, 20, f"offer push {count} for job {job_id}")


def event_rows(job_id: int) -> list[tuple[str, bool, bool]]:
    """(type, announced, push still owed) of each of the job's events, oldest first."""
    with session_scope() as session:
        rows = session.execute(
            select(JobEvent.type, JobEvent.announced_at, JobEvent.push_due_at)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        )
        return [
            (row.type, row.announced_at is not None, row.push_due_at is not None) for row in rows
        ]


def wait_settled(job_id: int, pushed: bool = True) -> list[tuple[str, bool, bool]]:
    """Every event of the job announced and (if `pushed`) none owing a push any more."""

    def settled() -> bool:
        rows = event_rows(job_id)
        return all(announced and not (pushed and owed) for _, announced, owed in rows)

    try:
        wait_until(settled, 20, f"job {job_id}'s events announced and pushed")
    except TimeoutError:
        raise AssertionError(f"job {job_id}'s events not settled: {event_rows(job_id)}") from None
    return event_rows(job_id)


def wait_announced(job_id: int, type_: str) -> tuple[str, bool, bool]:
    """The job's latest event of this type, once announced."""

    def latest() -> tuple[str, bool, bool] | None:
        rows = [row for row in event_rows(job_id) if row[0] == type_]
        return rows[-1] if rows and rows[-1][1] else None

    wait_until(latest, 20, f"job {job_id}'s {type_} event announced")
    row = latest()
    assert row is not None
    return row


def answered(client: FlaskClient, account: Account, path: str) -> Any:
    answer = client.get(f"/api/v1{path}", headers=account.headers)
    assert answer.status_code == 200 and answer.json is not None, answer.json
    return answer.json


def history(client: FlaskClient, account: Account, job_id: int) -> list[dict[str, Any]]:
    return answered(client, account, f"/jobs/{job_id}/events")["events"]


def offered_to_one(tap: EventTap, factory: Factory) -> tuple[Account, Account, str, int]:
    """A customer with a phone, and a job of theirs offered to the one driver there is: the
    customer, the driver, the customer's phone and the job's id."""
    customer = factory.customer()
    driver = factory.driver()
    customer_phone = factory.device(customer)
    job_id = factory.job(customer)["id"]
    wait_told(tap, "job:new", job_id, {driver_room(driver): 1})
    return customer, driver, customer_phone, job_id


def test_each_step_is_told_once_to_the_customer_and_the_driver(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver = factory.driver(name="Rui")
    customer_phone = factory.device(customer)
    job = factory.job(customer, dropoff={"lat": north_of(ORIGIN, 3)[0], "lng": ORIGIN[1]})
    job_id = job["id"]
    wait_told(tap, "job:new", job_id, {driver_room(driver): 1})
    rooms = [customer_room(customer), driver_room(driver)]
    expected_pushes: list[tuple[str, str, int]] = []

    for n, (name, status, push) in enumerate(JOURNEY, 1):
        answer = step(client, driver, job_id, name)
        assert answer["status"] == status
        statuses = wait_told(tap, "job:status", job_id, dict.fromkeys(rooms, n))
        for room in rooms:
            latest = statuses[room][-1]
            assert list(latest) == list(JOB_FIELDS)
            assert latest == answer  # the job as the step left it
        _, _, owed = wait_announced(job_id, EVENT_OF_STEP[name])
        if push is None:
            assert not owed  # nothing will ever be pushed for it
        else:
            expected_pushes.append((*push, job_id))
            pushes = wait_pushes(fake_apns, customer_phone, len(expected_pushes))
            assert pushes == expected_pushes

    time.sleep(QUIET_S)
    assert counts(tap, "job:status", job_id) == dict.fromkeys(rooms, 4)
    for room in rooms:
        assert [s["status"] for s in told(tap, "job:status", job_id)[room]] == [
            "accepted",
            "arrived",
            "in_progress",
            "completed",
        ]
    assert alerts(fake_apns, customer_phone) == expected_pushes
    [accepted_push] = fake_apns.received(customer_phone)[:1]
    assert accepted_push.payload["aps"]["alert"]["body"] == "Rui accepted your job."
    assert accepted_push.headers["apns-priority"] == "10"

    types = ["created", "offered", "accepted", "arrived", "started", "completed"]
    assert [row[0] for row in wait_settled(job_id)] == types
    for account in (customer, driver):
        events = history(client, account, job_id)
        assert [e["type"] for e in events] == types
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    events = history(client, customer, job_id)
    assert events[0]["actor"] == {"id": customer.id, "role": "customer"}
    assert events[1]["actor"] is None and events[1]["count"] == 1
    assert all(e["actor"] == {"id": driver.id, "role": "driver"} for e in events[2:])


@pytest.mark.parametrize("steps", [("accept",), ("accept", "arrive")], ids=["accepted", "arrived"])
def test_cancelling_a_taken_job_tells_its_driver(
    tap: EventTap,
    client: FlaskClient,
    factory: Factory,
    fake_apns: FakeAPNs,
    steps: tuple[str, ...],
) -> None:
    customer = factory.customer()
    driver, other = factory.driver(), factory.driver()
    customer_phone = factory.device(customer)
    driver_phone, other_phone = factory.device(driver), factory.device(other)
    job_id = factory.job(customer)["id"]
    wait_told(tap, "job:new", job_id, {driver_room(driver): 1, driver_room(other): 1})
    for phone in (driver_phone, other_phone):
        offer_pushed(fake_apns, phone, job_id, 1)
    rooms = [customer_room(customer), driver_room(driver)]
    for n, name in enumerate(steps, 1):
        step(client, driver, job_id, name)
        wait_told(tap, "job:status", job_id, dict.fromkeys(rooms, n))
    customer_pushes = wait_pushes(fake_apns, customer_phone, len(steps))

    cancelled = step(client, customer, job_id, "cancel", json={"reason": "plans changed"})
    assert (cancelled["status"], cancelled["cancelled_by"]) == ("cancelled", "customer")

    statuses = wait_told(tap, "job:status", job_id, dict.fromkeys(rooms, len(steps) + 1))
    for room in rooms:
        assert statuses[room][-1] == cancelled
    removed = wait_told(tap, "job:removed", job_id, {driver_room(driver): 1})
    assert removed[driver_room(driver)] == [{"job_id": job_id, "reason": "cancelled"}]
    assert wait_pushes(fake_apns, driver_phone, 2)[1] == ("Job cancelled", "job:cancelled", job_id)

    wait_settled(job_id)
    time.sleep(QUIET_S)
    assert counts(tap, "job:status", job_id) == dict.fromkeys(rooms, len(steps) + 1)
    assert counts(tap, "job:removed", job_id) == {driver_room(driver): 1, driver_room(other): 1}
    assert alerts(fake_apns, driver_phone) == [
        ("New job nearby", "job:new", job_id),
        ("Job cancelled", "job:cancelled", job_id),
    ]
    assert alerts(fake_apns, other_phone) == [("New job nearby", "job:new", job_id)]
    assert alerts(fake_apns, customer_phone) == customer_pushes  # nothing for the cancel
    assert history(client, customer, job_id)[-1]["reason"] == "plans changed"


def test_cancelling_a_pending_job_pushes_nobody(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    customer_phone, driver_phone = factory.device(customer), factory.device(driver)
    job_id = factory.job(customer)["id"]
    wait_told(tap, "job:new", job_id, {driver_room(driver): 1})
    offer_pushed(fake_apns, driver_phone, job_id, 1)

    cancelled = step(client, customer, job_id, "cancel")
    assert cancelled["status"] == "cancelled" and cancelled["driver"] is None

    statuses = wait_told(tap, "job:status", job_id, {customer_room(customer): 1})
    assert statuses[customer_room(customer)] == [cancelled]
    removed = wait_told(tap, "job:removed", job_id, {driver_room(driver): 1})
    assert removed[driver_room(driver)] == [{"job_id": job_id, "reason": "cancelled"}]
    assert wait_announced(job_id, "cancelled") == ("cancelled", True, False)  # no push owed
    time.sleep(QUIET_S)
    assert counts(tap, "job:status", job_id) == {customer_room(customer): 1}
    assert counts(tap, "job:removed", job_id) == {driver_room(driver): 1}
    assert alerts(fake_apns, driver_phone) == [("New job nearby", "job:new", job_id)]
    assert alerts(fake_apns, customer_phone) == []


def test_a_decline_is_told_to_the_decliner_only(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    decliner, other = factory.driver(), factory.driver()
    customer_phone = factory.device(customer)
    decliner_phone, other_phone = factory.device(decliner), factory.device(other)
    job_id = factory.job(customer)["id"]
    wait_told(tap, "job:new", job_id, {driver_room(decliner): 1, driver_room(other): 1})
    for phone in (decliner_phone, other_phone):
        offer_pushed(fake_apns, phone, job_id, 1)

    step(client, decliner, job_id, "decline")

    removed = wait_told(tap, "job:removed", job_id, {driver_room(decliner): 1})
    assert removed == {driver_room(decliner): [{"job_id": job_id, "reason": "declined"}]}
    assert wait_announced(job_id, "declined") == ("declined", True, False)
    time.sleep(QUIET_S)
    assert tap.of("job:removed") == [
        (driver_room(decliner), {"job_id": job_id, "reason": "declined"})
    ]
    assert tap.of("job:status") == [] and tap.of("job:accepted") == []
    assert counts(tap, "job:new", job_id) == {driver_room(decliner): 1, driver_room(other): 1}
    assert alerts(fake_apns, customer_phone) == []
    assert len(fake_apns.received(decliner_phone)) == len(fake_apns.received(other_phone)) == 1
    feeds = {d.id: answered(client, d, "/drivers/me/offers")["offers"] for d in (decliner, other)}
    assert feeds[decliner.id] == [] and [o["job"]["id"] for o in feeds[other.id]] == [job_id]


def _release(
    client: FlaskClient, driver: Account, job_id: int, before: dict[str, Any]
) -> dict[str, Any]:
    released = step(client, driver, job_id, "release")
    assert (released["status"], released["driver"], released["accepted_at"]) == (
        "pending",
        None,
        None,
    )
    assert released["expires_at"] > before["expires_at"]  # a fresh expiry from the release
    return released


def test_a_release_offers_a_new_round_to_all_but_the_releaser(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    first, second, third, decliner = (
        factory.driver(at=north_of(ORIGIN, km)) for km in (1, 2, 3, 4)
    )
    far = factory.driver(at=north_of(ORIGIN, 40))
    phones = {d.id: factory.device(d) for d in (first, second, third, decliner, far)}
    job = factory.job(customer)
    job_id = job["id"]
    round_1 = (first, second, third, decliner)
    wait_told(tap, "job:new", job_id, {driver_room(d): 1 for d in round_1})
    for d in round_1:
        offer_pushed(fake_apns, phones[d.id], job_id, 1)
    step(client, decliner, job_id, "decline")
    wait_told(tap, "job:removed", job_id, {driver_room(decliner): 1})
    late = factory.driver()  # comes online during round 1: offered from round 2 on
    phones[late.id] = factory.device(late)

    accepted = step(client, first, job_id, "accept")
    wait_told(tap, "job:status", job_id, {customer_room(customer): 1, driver_room(first): 1})
    released = _release(client, first, job_id, accepted)

    statuses = wait_told(
        tap, "job:status", job_id, {customer_room(customer): 2, driver_room(first): 2}
    )
    assert statuses[customer_room(customer)][-1] == released
    assert statuses[driver_room(first)][-1] == released
    round_2 = (second, third, late)
    offers = wait_told(
        tap,
        "job:new",
        job_id,
        {driver_room(second): 2, driver_room(third): 2, driver_room(late): 1},
    )
    for d in round_2:
        offer = offers[driver_room(d)][-1]
        assert offer["job"]["status"] == "pending"
        assert offer["job"]["expires_at"] == released["expires_at"]
        offer_pushed(fake_apns, phones[d.id], job_id, 2 if d is not late else 1)
    time.sleep(QUIET_S)
    assert counts(tap, "job:new", job_id) == {
        driver_room(first): 1,
        driver_room(second): 2,
        driver_room(third): 2,
        driver_room(decliner): 1,
        driver_room(late): 1,
    }
    assert counts(tap, "job:status", job_id) == {customer_room(customer): 2, driver_room(first): 2}
    assert len(fake_apns.received(phones[first.id])) == 1  # round 1's offer only
    assert len(fake_apns.received(phones[decliner.id])) == 1
    assert fake_apns.received(phones[far.id]) == []

    # Round 3: the second driver takes it, arrives, and releases it too.
    step(client, second, job_id, "accept")
    wait_told(tap, "job:status", job_id, {customer_room(customer): 3, driver_room(second): 1})
    arrived = step(client, second, job_id, "arrive")
    wait_told(tap, "job:status", job_id, {customer_room(customer): 4, driver_room(second): 2})
    released_again = _release(client, second, job_id, arrived)
    assert released_again["arrived_at"] is None
    assert released_again["expires_at"] > released["expires_at"]

    statuses = wait_told(
        tap, "job:status", job_id, {customer_room(customer): 5, driver_room(second): 3}
    )
    assert statuses[driver_room(second)][-1] == released_again
    offers = wait_told(tap, "job:new", job_id, {driver_room(third): 3, driver_room(late): 2})
    for d in (third, late):
        assert offers[driver_room(d)][-1]["job"]["expires_at"] == released_again["expires_at"]
        offer_pushed(fake_apns, phones[d.id], job_id, 3 if d is third else 2)
    time.sleep(QUIET_S)
    assert counts(tap, "job:new", job_id) == {
        driver_room(first): 1,
        driver_room(second): 2,
        driver_room(third): 3,
        driver_room(decliner): 1,
        driver_room(late): 2,
    }
    assert counts(tap, "job:status", job_id) == {
        customer_room(customer): 5,
        driver_room(first): 2,
        driver_room(second): 3,
    }
    assert len(fake_apns.received(phones[second.id])) == 2  # rounds 1 and 2, not 3
    assert fake_apns.received(phones[far.id]) == []

    offered, declined, released_ = "offered", "declined", "released"
    types = ["created", offered, declined, "accepted", released_, offered]
    types += ["accepted", "arrived", released_, offered]
    assert [e["type"] for e in history(client, customer, job_id)] == types
    # (The customer's "Finding you another driver" pushes: test_a_release_pushes_the_customer.)
    assert [row[0] for row in wait_settled(job_id, pushed=False)] == types
    assert [e["count"] for e in history(client, customer, job_id) if e["type"] == offered] == [
        4,
        3,
        2,
    ]


def test_a_release_pushes_the_customer(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer, driver, customer_phone, job_id = offered_to_one(tap, factory)
    step(client, driver, job_id, "accept")
    wait_pushes(fake_apns, customer_phone, 1)

    step(client, driver, job_id, "release")

    pushes = wait_pushes(fake_apns, customer_phone, 2)
    assert pushes == [
        ("Driver on the way", "job:accepted", job_id),
        ("Finding you another driver", "job:released", job_id),
    ]
    wait_settled(job_id)
    time.sleep(QUIET_S)
    assert len(fake_apns.received(customer_phone)) == 2


def test_retried_steps_announce_nothing_twice(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer = factory.customer()
    driver, decliner = factory.driver(), factory.driver()
    customer_phone, driver_phone = factory.device(customer), factory.device(driver)
    job_id = factory.job(customer)["id"]
    wait_told(tap, "job:new", job_id, {driver_room(driver): 1, driver_room(decliner): 1})
    offer_pushed(fake_apns, driver_phone, job_id, 1)
    step(client, decliner, job_id, "decline")
    step(client, decliner, job_id, "decline")
    rooms = [customer_room(customer), driver_room(driver)]
    for n, (name, *_) in enumerate(JOURNEY, 1):
        first = step(client, driver, job_id, name)
        assert step(client, driver, job_id, name) == first
        wait_told(tap, "job:status", job_id, dict.fromkeys(rooms, n))
    wait_pushes(fake_apns, customer_phone, 3)

    # A release and a cancel of an accepted job, each asked twice.
    released_job = factory.job(customer)["id"]
    wait_told(tap, "job:new", released_job, {driver_room(driver): 1})
    offer_pushed(fake_apns, driver_phone, released_job, 1)
    step(client, driver, released_job, "accept")
    released = step(client, driver, released_job, "release")
    assert step(client, driver, released_job, "release") == released
    cancelled_job = factory.job(customer)["id"]
    wait_told(tap, "job:new", cancelled_job, {driver_room(driver): 1})
    offer_pushed(fake_apns, driver_phone, cancelled_job, 1)
    step(client, driver, cancelled_job, "accept")
    cancelled = step(client, customer, cancelled_job, "cancel")
    assert step(client, customer, cancelled_job, "cancel") == cancelled
    for job in (released_job, cancelled_job):
        wait_told(tap, "job:status", job, dict.fromkeys(rooms, 2))
    wait_pushes(fake_apns, driver_phone, 4)  # three offers and "Job cancelled"

    once = ["created", "offered", "declined", "accepted", "arrived", "started", "completed"]
    assert [row[0] for row in event_rows(job_id)] == once
    assert [row[0] for row in event_rows(released_job)][2:4] == ["accepted", "released"]
    assert [row[0] for row in event_rows(cancelled_job)][2:] == ["accepted", "cancelled"]
    time.sleep(QUIET_S)
    assert counts(tap, "job:status", job_id) == dict.fromkeys(rooms, 4)
    assert counts(tap, "job:removed", job_id) == {driver_room(decliner): 1}
    assert set(counts(tap, "job:accepted", job_id).values()) == {1}
    for job in (released_job, cancelled_job):
        assert counts(tap, "job:status", job) == dict.fromkeys(rooms, 2)
        assert set(counts(tap, "job:accepted", job).values()) == {1}
    assert counts(tap, "job:removed", cancelled_job) == dict.fromkeys(
        [driver_room(driver), driver_room(decliner)], 1
    )
    customer_alerts = alerts(fake_apns, customer_phone)
    assert len(customer_alerts) == len(set(customer_alerts))  # nothing pushed twice
    assert [a for a in customer_alerts if a[2] == job_id] == [
        ("Driver on the way", "job:accepted", job_id),
        ("Your driver is here", "job:arrived", job_id),
        ("Job complete", "job:completed", job_id),
    ]
    assert (
        alerts(fake_apns, driver_phone).count(("Job cancelled", "job:cancelled", cancelled_job))
        == 1
    )


def test_an_expired_job_tells_the_customer_once(
    tap: EventTap, client: FlaskClient, factory: Factory, fake_apns: FakeAPNs
) -> None:
    customer, driver, customer_phone, job_id = offered_to_one(tap, factory)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    assert expire_jobs() == 1  # what the relay does every pass
    assert expire_jobs() == 0  # and again: nothing more to expire

    statuses = wait_told(tap, "job:status", job_id, {customer_room(customer): 1})
    [expired] = statuses[customer_room(customer)]
    assert list(expired) == list(JOB_FIELDS) and expired["status"] == "expired"
    removed = wait_told(tap, "job:removed", job_id, {driver_room(driver): 1})
    assert removed[driver_room(driver)] == [{"job_id": job_id, "reason": "expired"}]
    assert wait_pushes(fake_apns, customer_phone, 1) == [("No driver found", "job:expired", job_id)]
    assert [row[0] for row in wait_settled(job_id)] == ["created", "offered", "expired"]
    time.sleep(QUIET_S)
    assert counts(tap, "job:status", job_id) == {customer_room(customer): 1}
    assert counts(tap, "job:removed", job_id) == {driver_room(driver): 1}
    assert len(fake_apns.received(customer_phone)) == 1
    assert [e["type"] for e in history(client, customer, job_id)] == [
        "created",
        "offered",
        "expired",
    ]
