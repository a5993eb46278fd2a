"""The v1.1 job lifecycle through the API, in process: arrive, start, complete, release,
decline and cancel from the statuses the contract allows, by the people it allows; retries;
who is freed and offered what; GET /drivers/me, /drivers/me/jobs and /jobs/<id>/events.

No worker runs: `factory.offer` makes the offers the dispatch task would make, and the
tasks a request queued are read off the broker (`queued_tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from models.accounts import DriverProfile
from models.db import session_scope, utcnow
from models.jobs import Job
from models.lifecycle import expire_due_jobs
from settings import settings
from tests.contract import API, JOB_FIELDS, assert_error, parse_time
from tests.factories import ORIGIN, Account, Factory, north_of
from tests.stored import db_rows, queued_tasks

JOBS = f"{API}/jobs"
ME = f"{API}/drivers/me"
MS = timedelta(milliseconds=1)  # the API's times are truncated to milliseconds
DRIVER_STEPS = ("arrive", "start", "complete", "release")
# The driver's steps that bring a job from pending (offered) to each status.
WALK = {
    "pending": (),
    "accepted": ("accept",),
    "arrived": ("accept", "arrive"),
    "in_progress": ("accept", "arrive", "start"),
    "completed": ("accept", "arrive", "start", "complete"),
}
# Each step's status, and the field it stamps.
STEP_STATUS = {
    "accept": ("accepted", "accepted_at"),
    "arrive": ("arrived", "arrived_at"),
    "start": ("in_progress", "started_at"),
    "complete": ("completed", "completed_at"),
}
STAMPS = ("accepted_at", "arrived_at", "started_at", "completed_at", "cancelled_at")


@dataclass
class Trip:
    """A job, its customer and the driver it was offered to (and, past pending, holds)."""

    customer: Account
    driver: Account
    job_id: int


def _post(client: FlaskClient, who: Account, job_id: int, step: str, **kw: Any) -> TestResponse:
    return client.post(f"{JOBS}/{job_id}/{step}", headers=who.headers, **kw)


def _ok(client: FlaskClient, who: Account, job_id: int, step: str, **kw: Any) -> dict[str, Any]:
    answer = _post(client, who, job_id, step, **kw)
    assert answer.status_code == 200, (step, answer.get_json())
    body: dict[str, Any] = answer.get_json()
    return body


def _get(client: FlaskClient, who: Account, path: str) -> TestResponse:
    return client.get(API + path, headers=who.headers)


def _read(client: FlaskClient, who: Account, job_id: int) -> TestResponse:
    return _get(client, who, f"/jobs/{job_id}")


def _report(client: FlaskClient, driver: Account, at: tuple[float, float]) -> None:
    answer = client.put(f"{ME}/location", json={"lat": at[0], "lng": at[1]}, headers=driver.headers)
    assert answer.status_code == 204, answer.get_json()


def _walk(client: FlaskClient, trip: Trip, status: str) -> dict[str, Any]:
    """Bring an offered, pending job to `status` by its driver's steps (cancelled: by its
    customer, from accepted; expired: from pending); returns the job as answered last."""
    if status == "cancelled":
        _walk(client, trip, "accepted")
        return _ok(client, trip.customer, trip.job_id, "cancel")
    if status == "expired":
        return _expire(client, trip)
    job: dict[str, Any] = _read(client, trip.customer, trip.job_id).get_json()
    for step in WALK[status]:
        job = _ok(client, trip.driver, trip.job_id, step)
    return job


def _trip(client: FlaskClient, factory: Factory, status: str = "pending") -> Trip:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    assert factory.offer(job["id"]) == [driver.id]
    trip = Trip(customer, driver, job["id"])
    _walk(client, trip, status)
    return trip


def _expire(client: FlaskClient, trip: Trip) -> dict[str, Any]:
    """Let the job's offer time run out and expire it as the relay does."""
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == trip.job_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with session_scope() as session:
        assert [e.job_id for e in expire_due_jobs(session)] == [trip.job_id]
    job: dict[str, Any] = _read(client, trip.customer, trip.job_id).get_json()
    assert job["status"] == "expired"
    return job


def _current_job_id(driver: Account) -> int | None:
    with session_scope() as session:
        return session.scalar(
            select(DriverProfile.current_job_id).where(DriverProfile.user_id == driver.id)
        )


def _feed(client: FlaskClient, driver: Account) -> list[int]:
    answer = _get(client, driver, "/drivers/me/offers")
    assert answer.status_code == 200, answer.get_json()
    return [offer["job"]["id"] for offer in answer.get_json()["offers"]]


def _everything_stored() -> tuple[Any, ...]:
    """Every row, and every task queued for the workers: equal before and after a request
    means it wrote and announced nothing."""
    return db_rows(), queued_tasks(), queued_tasks("push")


def _tasks_since(before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks queued since `before` was read (the queue is newest first)."""
    now = queued_tasks()
    assert now[len(now) - len(before) :] == before
    return now[: len(now) - len(before)]


def _stored_events(job_id: int) -> list[tuple[int, str]]:
    """The job's events, oldest first: (id, type) of each."""
    return [(row[0], row[2]) for row in db_rows()["job_events"] if row[1] == job_id]


def _event_types(job_id: int) -> list[str]:
    return [type_ for _, type_ in _stored_events(job_id)]


def _between(value: str | None, earlier: datetime, later: datetime) -> datetime:
    assert value is not None
    moment = parse_time(value)
    assert earlier - MS <= moment <= later, (earlier, value, later)
    return moment


def _assert_driver_location(job: dict[str, Any], at: tuple[float, float], since: datetime) -> None:
    location = job["driver_location"]
    assert list(location) == ["lat", "lng", "at"], location
    assert (location["lat"], location["lng"]) == at
    _between(location["at"], since, utcnow())


# --- 1. every step from its allowed status -----------------------------------------------


def test_each_step_answers_200_with_the_job_and_its_time(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer(name="Ana")
    reported = utcnow()
    driver = factory.driver(name="Wes")  # reports ORIGIN
    created = factory.job(customer, dropoff={"lat": 38.75, "lng": -9.15}, notes="two boxes")
    assert created["driver_location"] is None
    assert factory.offer(created["id"]) == [driver.id]
    unchanged = {k: created[k] for k in ("id", "pickup", "dropoff", "notes", "customer")}
    unchanged |= {k: created[k] for k in ("created_at", "expires_at")}
    here = ORIGIN
    stamped: dict[str, str] = {}
    for step, (status, stamp) in STEP_STATUS.items():
        if step != "accept":  # the driver moves on; the job shows where they are now
            reported, here = utcnow(), north_of(here, 0.2)
            _report(client, driver, here)
        before = utcnow()
        answer = _post(client, driver, created["id"], step)
        assert (answer.status_code, answer.mimetype) == (200, "application/json"), step
        job = answer.get_json()
        assert list(job) == list(JOB_FIELDS)
        assert {k: job[k] for k in unchanged} == unchanged
        assert (job["status"], job["driver"]) == (status, {"id": driver.id, "name": "Wes"})
        stamped[stamp] = job[stamp]
        _between(job[stamp], before, utcnow())
        assert {k: job[k] for k in STAMPS if k in stamped} == stamped  # earlier ones kept
        assert {k: job[k] for k in STAMPS if k not in stamped} == dict.fromkeys(
            set(STAMPS) - set(stamped)
        )
        assert job["cancelled_by"] is None
        if status == "completed":
            assert job["driver_location"] is None
        else:
            _assert_driver_location(job, here, reported)
        assert _read(client, customer, created["id"]).get_json() == job
        assert _read(client, driver, created["id"]).get_json() == job
    times = [parse_time(stamped[s]) for s in ("accepted_at", "arrived_at", "started_at")]
    assert times == sorted(times) and times[-1] <= parse_time(stamped["completed_at"])


@pytest.mark.parametrize("status", ["pending", "cancelled", "expired"])
def test_a_job_no_driver_works_on_shows_no_driver_location(
    client: FlaskClient, factory: Factory, status: str
) -> None:
    """The driver's position is in Redis all along; the job shows it only while worked on."""
    trip = _trip(client, factory, status)
    readers = [trip.customer] if status == "expired" else [trip.customer, trip.driver]
    for who in readers:
        job = _read(client, who, trip.job_id).get_json()
        assert (job["status"], job["driver_location"]) == (status, None)


def test_cancel_answers_the_cancelled_job(client: FlaskClient, factory: Factory) -> None:
    trip = _trip(client, factory, "arrived")
    arrived = _read(client, trip.customer, trip.job_id).get_json()
    before = utcnow()
    cancelled = _ok(client, trip.customer, trip.job_id, "cancel")
    assert cancelled == {
        **arrived,
        "status": "cancelled",
        "cancelled_at": cancelled["cancelled_at"],
        "cancelled_by": "customer",
        "driver_location": None,
    }
    _between(cancelled["cancelled_at"], before, utcnow())
    assert _read(client, trip.driver, trip.job_id).get_json() == cancelled


# --- 2. the driver is free at once ----------------------------------------------------------

FREEING = [  # (status before, the step, who takes it)
    ("in_progress", "complete", "driver"),
    ("accepted", "cancel", "customer"),
    ("arrived", "cancel", "customer"),
    ("accepted", "release", "driver"),
    ("arrived", "release", "driver"),
]


@pytest.mark.parametrize(("status", "step", "by"), FREEING)
def test_the_step_frees_the_driver_for_the_next_job_at_once(
    client: FlaskClient, factory: Factory, status: str, step: str, by: str
) -> None:
    trip = _trip(client, factory, status)
    following = factory.job(trip.customer)
    assert factory.offer(following["id"]) == []  # on a job: offered nothing
    assert _current_job_id(trip.driver) == trip.job_id

    _ok(client, trip.driver if by == "driver" else trip.customer, trip.job_id, step)
    assert _current_job_id(trip.driver) is None
    assert _get(client, trip.driver, "/drivers/me").get_json()["current_job"] is None
    newest = factory.job(trip.customer)
    assert factory.offer(newest["id"]) == [trip.driver.id]
    taken = _ok(client, trip.driver, newest["id"], "accept")
    assert (taken["status"], taken["driver"]["id"]) == ("accepted", trip.driver.id)
    assert _current_job_id(trip.driver) == newest["id"]


# --- 3. forbidden steps ---------------------------------------------------------------------

WRONG_STATUS = [  # (the job's status, the step by its own driver or customer)
    ("accepted", "start"),
    ("accepted", "complete"),
    ("arrived", "complete"),
    ("in_progress", "arrive"),
    ("in_progress", "release"),
    ("in_progress", "cancel"),
    ("completed", "arrive"),
    ("completed", "start"),
    ("completed", "release"),
    ("completed", "cancel"),
    ("cancelled", "arrive"),
    ("cancelled", "start"),
    ("cancelled", "complete"),
    ("cancelled", "release"),
    ("expired", "cancel"),
    ("accepted", "decline"),
    ("in_progress", "decline"),
    ("expired", "decline"),
]


@pytest.mark.parametrize(("status", "step"), WRONG_STATUS)
def test_a_step_from_another_status_is_409_naming_it_and_changes_nothing(
    client: FlaskClient, factory: Factory, status: str, step: str
) -> None:
    trip = _trip(client, factory, status)
    job = _read(client, trip.customer, trip.job_id).get_json()
    who = trip.customer if step == "cancel" else trip.driver
    before = _everything_stored()
    error = assert_error(_post(client, who, trip.job_id, step), 409, "conflict")
    assert status in error["message"], error
    assert _everything_stored() == before
    assert _read(client, trip.customer, trip.job_id).get_json() == job


def test_declining_a_job_another_driver_took_is_409(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    winner, other = factory.driver(), factory.driver()
    job = factory.job(customer)
    assert sorted(factory.offer(job["id"])) == sorted([winner.id, other.id])
    _ok(client, winner, job["id"], "accept")
    before = _everything_stored()
    error = assert_error(_post(client, other, job["id"], "decline"), 409, "conflict")
    assert "accepted" in error["message"]
    assert _everything_stored() == before


@pytest.mark.parametrize("step", DRIVER_STEPS)
def test_a_driver_step_on_a_pending_job_is_403_to_a_driver_offered_it(
    client: FlaskClient, factory: Factory, step: str
) -> None:
    """They can see the job (it is in their feed), but it is nobody's to work on yet."""
    trip = _trip(client, factory, "pending")
    before = _everything_stored()
    assert_error(_post(client, trip.driver, trip.job_id, step), 403, "forbidden")
    assert _everything_stored() == before
    assert _feed(client, trip.driver) == [trip.job_id]


@pytest.mark.parametrize(
    ("status", "step"),
    [
        ("accepted", "arrive"),
        ("accepted", "release"),
        ("arrived", "start"),
        ("arrived", "release"),
        ("in_progress", "complete"),
        ("pending", "decline"),
    ],
)
def test_a_step_by_a_driver_who_cannot_see_the_job_is_404(
    client: FlaskClient, factory: Factory, status: str, step: str
) -> None:
    trip = _trip(client, factory, status)
    stranger = factory.driver()  # nearby and online, never offered it
    before = _everything_stored()
    assert_error(_post(client, stranger, trip.job_id, step), 404, "not_found")
    assert_error(_post(client, stranger, trip.job_id + 1000, step), 404, "not_found")
    assert _everything_stored() == before
    control = _post(client, trip.driver, trip.job_id, step)  # the same step by its driver
    assert control.status_code == (204 if step == "decline" else 200)


@pytest.mark.parametrize("step", DRIVER_STEPS)
def test_a_step_by_a_driver_who_lost_the_job_is_refused_and_changes_nothing(
    client: FlaskClient, factory: Factory, step: str
) -> None:
    """Offered it in the same round, but another driver took it: not theirs to work on."""
    customer = factory.customer()
    winner, loser = factory.driver(), factory.driver()
    job = factory.job(customer)
    assert sorted(factory.offer(job["id"])) == sorted([winner.id, loser.id])
    _ok(client, winner, job["id"], "accept")
    before = _everything_stored()
    answer = _post(client, loser, job["id"], step)
    codes = {403: "forbidden", 404: "not_found"}  # the contract allows either; never the data
    assert answer.status_code in codes, answer.get_json()
    assert_error(answer, answer.status_code, codes[answer.status_code])
    assert _everything_stored() == before


@pytest.mark.parametrize(
    ("status", "step"),
    [("accepted", "arrive"), ("arrived", "start"), ("in_progress", "complete")]
    + [("accepted", "release"), ("pending", "decline"), ("pending", "accept")],
)
def test_the_customer_taking_a_drivers_step_is_403(
    client: FlaskClient, factory: Factory, status: str, step: str
) -> None:
    trip = _trip(client, factory, status)
    before = _everything_stored()
    assert_error(_post(client, trip.customer, trip.job_id, step), 403, "forbidden")
    assert _everything_stored() == before


@pytest.mark.parametrize("status", ["pending", "accepted", "arrived"])
def test_a_driver_cancelling_is_403_even_their_own_job(
    client: FlaskClient, factory: Factory, status: str
) -> None:
    trip = _trip(client, factory, status)
    before = _everything_stored()
    assert_error(_post(client, trip.driver, trip.job_id, "cancel"), 403, "forbidden")
    assert _everything_stored() == before


@pytest.mark.parametrize("status", ["pending", "accepted", "arrived"])
def test_another_customer_cancelling_is_404(
    client: FlaskClient, factory: Factory, status: str
) -> None:
    trip = _trip(client, factory, status)
    stranger = factory.customer()
    before = _everything_stored()
    assert_error(_post(client, stranger, trip.job_id, "cancel"), 404, "not_found")
    assert _everything_stored() == before
    assert _ok(client, trip.customer, trip.job_id, "cancel")["status"] == "cancelled"


# --- 4. retries -----------------------------------------------------------------------------

# The task that announces each step's event, by the event's id.
ANNOUNCED_BY = {
    "accept": "notify_accepted",
    "arrive": "notify_status",
    "start": "notify_status",
    "complete": "notify_status",
    "release": "notify_nearby",
    "cancel": "notify_removed",
}
RETRIES = [  # (the status before, the step, who takes it)
    ("pending", "accept", "driver"),
    ("accepted", "arrive", "driver"),
    ("arrived", "start", "driver"),
    ("in_progress", "complete", "driver"),
    ("accepted", "release", "driver"),
    ("arrived", "release", "driver"),
    ("pending", "cancel", "customer"),
    ("accepted", "cancel", "customer"),
    ("arrived", "cancel", "customer"),
]


@pytest.mark.parametrize(("status", "step", "by"), RETRIES)
def test_a_retried_step_answers_the_same_job_and_writes_and_announces_nothing(
    client: FlaskClient, factory: Factory, status: str, step: str, by: str
) -> None:
    trip = _trip(client, factory, status)
    who = trip.driver if by == "driver" else trip.customer
    events, tasks = _stored_events(trip.job_id), queued_tasks()
    first = _ok(client, who, trip.job_id, step)
    [(made_id, made)] = _stored_events(trip.job_id)[len(events) :]  # the step wrote its event …
    assert _tasks_since(tasks) == [  # … and queued its announcement
        {"task": f"workers.tasks.{ANNOUNCED_BY[step]}", "args": [made_id]}
    ]
    before = _everything_stored()
    again = _post(client, who, trip.job_id, step)
    assert (again.status_code, again.get_json()) == (200, first)
    assert _everything_stored() == before
    assert _event_types(trip.job_id).count(made) == 1


def test_a_retried_decline_answers_204_and_writes_nothing(
    client: FlaskClient, factory: Factory
) -> None:
    trip = _trip(client, factory, "pending")
    tasks = queued_tasks()
    first = _post(client, trip.driver, trip.job_id, "decline")
    assert (first.status_code, first.get_data()) == (204, b"")
    assert _event_types(trip.job_id)[-1] == "declined"
    assert [t["task"] for t in _tasks_since(tasks)] == ["workers.tasks.notify_removed"]
    before = _everything_stored()
    again = _post(client, trip.driver, trip.job_id, "decline")
    assert (again.status_code, again.get_data()) == (204, b"")
    assert _everything_stored() == before


@pytest.mark.parametrize(
    ("status", "step", "code"),
    [
        ("in_progress", "arrive", "conflict"),
        ("completed", "start", "conflict"),
        ("completed", "arrive", "conflict"),
        ("arrived", "accept", "job_not_available"),
        ("completed", "accept", "job_not_available"),
    ],
)
def test_repeating_an_earlier_step_is_409(
    client: FlaskClient, factory: Factory, status: str, step: str, code: str
) -> None:
    trip = _trip(client, factory, status)
    before = _everything_stored()
    error = assert_error(_post(client, trip.driver, trip.job_id, step), 409, code)
    if code == "conflict":
        assert status in error["message"]
    assert _everything_stored() == before


def test_after_a_release_an_accept_of_the_releaser_is_no_retry(
    client: FlaskClient, factory: Factory
) -> None:
    """Their last step on the job is the release: accepting it again is refused, not
    answered as a retry of their earlier accept."""
    trip = _trip(client, factory, "accepted")
    _ok(client, trip.driver, trip.job_id, "release")
    before = _everything_stored()
    assert_error(_post(client, trip.driver, trip.job_id, "accept"), 409, "job_not_available")
    assert _everything_stored() == before


# --- 5. decline -----------------------------------------------------------------------------


def test_decline_takes_the_job_out_of_that_drivers_feed_for_good(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    decliner, taker, other = (factory.driver() for _ in range(3))
    job = factory.job(customer)
    assert sorted(factory.offer(job["id"])) == sorted([decliner.id, taker.id, other.id])
    assert _feed(client, decliner) == [job["id"]]

    answer = _post(client, decliner, job["id"], "decline")
    assert (answer.status_code, answer.get_data()) == (204, b"")
    assert _feed(client, decliner) == []
    assert _feed(client, taker) == [job["id"]] and _feed(client, other) == [job["id"]]
    assert_error(_read(client, decliner, job["id"]), 404, "not_found")
    before = _everything_stored()
    assert_error(_post(client, decliner, job["id"], "accept"), 409, "job_not_available")
    assert _everything_stored() == before
    assert _current_job_id(decliner) is None
    pending = _read(client, customer, job["id"]).get_json()
    assert (pending["status"], pending["driver"]) == ("pending", None)

    _ok(client, taker, job["id"], "accept")
    _ok(client, taker, job["id"], "release")
    latecomer = factory.driver()  # online after round 1
    offered = factory.offer(job["id"])
    assert sorted(offered) == sorted([other.id, latecomer.id])  # not the decliner, nor taker
    assert _feed(client, decliner) == []
    assert_error(_read(client, decliner, job["id"]), 404, "not_found")
    assert factory.offer(job["id"]) == []  # at most once per round


def test_a_decline_by_a_driver_not_offered_the_job_is_404(
    client: FlaskClient, factory: Factory
) -> None:
    trip = _trip(client, factory, "pending")
    latecomer = factory.driver()
    before = _everything_stored()
    assert_error(_post(client, latecomer, trip.job_id, "decline"), 404, "not_found")
    assert _everything_stored() == before


# --- 6. release -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["accepted", "arrived"])
def test_release_makes_the_job_pending_again_for_everyone_but_the_releaser(
    client: FlaskClient, factory: Factory, status: str
) -> None:
    customer = factory.customer()
    releaser, passed_over = factory.driver(), factory.driver()
    created = factory.job(customer)
    assert sorted(factory.offer(created["id"])) == sorted([releaser.id, passed_over.id])
    held = _walk(client, Trip(customer, releaser, created["id"]), status)
    assert held["status"] == status
    latecomer = factory.driver()
    tasks = queued_tasks()

    before = utcnow()
    released = _ok(client, releaser, created["id"], "release")
    after = utcnow()
    ttl = timedelta(seconds=settings.job_offer_ttl_s)
    _between(released["expires_at"], before + ttl, after + ttl)
    assert released == {
        **held,
        "status": "pending",
        "driver": None,
        "accepted_at": None,
        "arrived_at": None,
        "expires_at": released["expires_at"],
        "driver_location": None,
    }
    assert [t["task"] for t in _tasks_since(tasks)] == ["workers.tasks.notify_nearby"]
    assert _read(client, customer, created["id"]).get_json() == released
    assert _current_job_id(releaser) is None
    assert _get(client, releaser, "/drivers/me").get_json()["current_job"] is None

    offered = factory.offer(created["id"])
    assert sorted(offered) == sorted([passed_over.id, latecomer.id])
    for driver in (passed_over, latecomer):
        assert _feed(client, driver) == [created["id"]]
        assert _read(client, driver, created["id"]).get_json() == released
    assert _feed(client, releaser) == []
    assert_error(_read(client, releaser, created["id"]), 404, "not_found")
    before_accept = _everything_stored()
    assert_error(_post(client, releaser, created["id"], "accept"), 409, "job_not_available")
    assert _everything_stored() == before_accept
    taken = _ok(client, passed_over, created["id"], "accept")
    assert (taken["status"], taken["driver"]["id"]) == ("accepted", passed_over.id)


# --- 7. GET /drivers/me and /drivers/me/jobs ------------------------------------------------


def test_drivers_me_shows_the_job_they_are_on(client: FlaskClient, factory: Factory) -> None:
    trip = _trip(client, factory, "pending")
    me = _get(client, trip.driver, "/drivers/me")
    assert (me.status_code, me.mimetype) == (200, "application/json")
    assert list(me.get_json()) == ["id", "name", "online", "approved", "current_job"]
    name = trip.driver.name
    assert me.get_json() == {
        "id": trip.driver.id,
        "name": name,
        "online": True,
        "approved": True,
        "current_job": None,  # only offered it
    }
    for step in ("accept", "arrive", "start"):
        status = STEP_STATUS[step][0]
        _ok(client, trip.driver, trip.job_id, step)
        current = _get(client, trip.driver, "/drivers/me").get_json()["current_job"]
        assert current == _read(client, trip.driver, trip.job_id).get_json()
        assert current["status"] == status and current["driver_location"] is not None
    _ok(client, trip.driver, trip.job_id, "complete")
    assert _get(client, trip.driver, "/drivers/me").get_json()["current_job"] is None
    offline = client.put(f"{ME}/availability", json={"online": False}, headers=trip.driver.headers)
    assert offline.status_code == 200
    assert _get(client, trip.driver, "/drivers/me").get_json()["online"] is False


def test_drivers_me_is_403_for_a_customer(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    assert_error(_get(client, customer, "/drivers/me"), 403, "forbidden")
    assert_error(_get(client, customer, "/drivers/me/jobs"), 403, "forbidden")


def test_drivers_jobs_are_the_ones_they_held_newest_first(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    driver, colleague = factory.driver(), factory.driver()
    assert _get(client, driver, "/drivers/me/jobs").get_json() == {"jobs": []}
    ids: dict[str, int] = {}
    for name in ("completed", "cancelled", "released", "theirs", "offered", "accepted"):
        job = factory.job(customer)
        assert sorted(factory.offer(job["id"])) == sorted([driver.id, colleague.id]), name
        ids[name] = job["id"]
        taker = colleague if name == "theirs" else driver
        if name == "offered":
            continue
        _ok(client, taker, job["id"], "accept")
        if name == "completed":
            for step in ("arrive", "start", "complete"):
                _ok(client, driver, job["id"], step)
        elif name == "cancelled":
            _ok(client, customer, job["id"], "cancel")
        elif name == "released":
            _ok(client, driver, job["id"], "release")
        elif name == "theirs":
            _ok(client, colleague, job["id"], "arrive")
            _ok(client, colleague, job["id"], "start")
            _ok(client, colleague, job["id"], "complete")

    answer = _get(client, driver, "/drivers/me/jobs")
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    jobs = answer.get_json()["jobs"]
    assert [j["id"] for j in jobs] == [ids["accepted"], ids["cancelled"], ids["completed"]]
    assert jobs == [_read(client, driver, j["id"]).get_json() for j in jobs]
    assert [j["status"] for j in jobs] == ["accepted", "cancelled", "completed"]
    for status, expected in [
        ("completed", [ids["completed"]]),
        ("cancelled", [ids["cancelled"]]),
        ("accepted", [ids["accepted"]]),
        ("pending", []),
        ("in_progress", []),
    ]:
        filtered = _get(client, driver, f"/drivers/me/jobs?status={status}")
        assert filtered.status_code == 200
        assert [j["id"] for j in filtered.get_json()["jobs"]] == expected, status
    theirs = _get(client, colleague, "/drivers/me/jobs").get_json()["jobs"]
    assert [j["id"] for j in theirs] == [ids["theirs"]]


@pytest.mark.parametrize("query", ["status=done", "status=Completed", "status="])
def test_drivers_jobs_with_an_unknown_status_is_422(
    client: FlaskClient, factory: Factory, query: str
) -> None:
    driver = factory.driver()
    before = _everything_stored()
    answer = _get(client, driver, f"/drivers/me/jobs?{query}")
    assert_error(answer, 422, "validation_error", "status")
    assert _everything_stored() == before


# --- 8. GET /jobs/<id>/events ---------------------------------------------------------------


def _events(client: FlaskClient, who: Account, job_id: int) -> list[dict[str, Any]]:
    answer = _get(client, who, f"/jobs/{job_id}/events")
    assert (answer.status_code, answer.mimetype) == (200, "application/json"), answer.get_json()
    body = answer.get_json()
    assert list(body) == ["events"]
    for event in body["events"]:
        assert list(event) == ["type", "at", "actor", "count", "reason"], event
    times = [parse_time(e["at"]) for e in body["events"]]
    assert times == sorted(times)  # oldest first
    events: list[dict[str, Any]] = body["events"]
    return events


def _brief(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["type"], e["actor"] and (e["actor"]["id"], e["actor"]["role"]), e["count"], e["reason"])
        for e in events
    ]


def test_the_events_of_a_whole_job_oldest_first(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver, other = factory.driver(), factory.driver()
    job = factory.job(customer)
    assert _brief(_events(client, customer, job["id"])) == [
        ("created", (customer.id, "customer"), None, None)
    ]
    assert len(factory.offer(job["id"])) == 2
    for step in ("accept", "arrive", "start", "complete"):
        _ok(client, driver, job["id"], step)
    events = _events(client, customer, job["id"])
    by_driver = (driver.id, "driver")
    assert _brief(events) == [
        ("created", (customer.id, "customer"), None, None),
        ("offered", None, 2, None),
        ("accepted", by_driver, None, None),
        ("arrived", by_driver, None, None),
        ("started", by_driver, None, None),
        ("completed", by_driver, None, None),
    ]
    final = _read(client, customer, job["id"]).get_json()
    stamps = [final[k] for k in ("created_at", "accepted_at", "arrived_at", "started_at")]
    assert [events[i]["at"] for i in (0, 2, 3, 4)] == stamps
    assert events[5]["at"] == final["completed_at"]
    assert _events(client, driver, job["id"]) == events
    for stranger in (other, factory.customer(), factory.driver()):
        assert_error(_get(client, stranger, f"/jobs/{job['id']}/events"), 404, "not_found")


def test_the_events_of_declines_releases_and_a_cancel(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    decliner, releaser = factory.driver(), factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    path = f"/jobs/{job['id']}/events"
    assert_error(_get(client, releaser, path), 404, "not_found")  # offered: not theirs yet
    assert _post(client, decliner, job["id"], "decline").status_code == 204
    _ok(client, releaser, job["id"], "accept")
    assert _brief(_events(client, releaser, job["id"]))[-1][0] == "accepted"
    _ok(client, releaser, job["id"], "release")
    assert_error(_get(client, releaser, path), 404, "not_found")  # no longer theirs
    latecomer = factory.driver()
    assert factory.offer(job["id"]) == [latecomer.id]
    assert_error(_get(client, latecomer, path), 404, "not_found")
    _ok(client, customer, job["id"], "cancel", json={"reason": "found a lift"})

    assert _brief(_events(client, customer, job["id"])) == [
        ("created", (customer.id, "customer"), None, None),
        ("offered", None, 2, None),
        ("declined", (decliner.id, "driver"), None, None),
        ("accepted", (releaser.id, "driver"), None, None),
        ("released", (releaser.id, "driver"), None, None),
        ("offered", None, 1, None),
        ("cancelled", (customer.id, "customer"), None, "found a lift"),
    ]
    for outsider in (decliner, releaser, latecomer):
        assert_error(_get(client, outsider, path), 404, "not_found")


def test_a_cancel_of_a_held_job_shows_to_its_driver(client: FlaskClient, factory: Factory) -> None:
    trip = _trip(client, factory, "arrived")
    _ok(client, trip.customer, trip.job_id, "cancel")
    events = _events(client, trip.driver, trip.job_id)
    assert _brief(events)[-1] == ("cancelled", (trip.customer.id, "customer"), None, None)
    assert events == _events(client, trip.customer, trip.job_id)


def test_the_events_of_an_expired_job(client: FlaskClient, factory: Factory) -> None:
    trip = _trip(client, factory, "expired")
    assert _brief(_events(client, trip.customer, trip.job_id)) == [
        ("created", (trip.customer.id, "customer"), None, None),
        ("offered", None, 1, None),
        ("expired", None, None, None),
    ]
    assert_error(_get(client, trip.driver, f"/jobs/{trip.job_id}/events"), 404, "not_found")


def test_the_events_of_no_job_are_404(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    assert_error(_get(client, customer, "/jobs/1000/events"), 404, "not_found")


# --- 9. the cancel body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, None),
        ({}, None),
        ({"reason": None}, None),
        ({"reason": "changed my mind"}, "changed my mind"),
        ({"reason": "x" * 500}, "x" * 500),
    ],
    ids=["no body", "{}", "null reason", "a reason", "500 characters"],
)
def test_cancel_takes_an_optional_reason(
    client: FlaskClient, factory: Factory, body: dict[str, Any] | None, reason: str | None
) -> None:
    trip = _trip(client, factory, "accepted")
    kwargs = {} if body is None else {"json": body}
    cancelled = _ok(client, trip.customer, trip.job_id, "cancel", **kwargs)
    assert (cancelled["status"], cancelled["cancelled_by"]) == ("cancelled", "customer")
    assert _events(client, trip.customer, trip.job_id)[-1]["reason"] == reason


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": 5}, "reason"),
        ({"reason": True}, "reason"),
        ({"reason": ["late"]}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "late\x00"}, "reason"),
        ({"reason": "late", "refund": True}, "refund"),
        (["late"], "body"),
        ("late", "body"),
        (b'{"reason": ', "body"),
        (b"{'reason': 'late'}", "body"),
    ],
    ids=[
        "number",
        "bool",
        "array",
        "501 characters",
        "NUL",
        "unknown field",
        "JSON array",
        "JSON string",
        "truncated JSON",
        "single quotes",
    ],
)
def test_a_bad_cancel_body_is_422_naming_the_field_and_cancels_nothing(
    client: FlaskClient, factory: Factory, body: Any, field: str
) -> None:
    trip = _trip(client, factory, "accepted")
    job = _read(client, trip.customer, trip.job_id).get_json()
    kwargs: dict[str, Any] = (
        {"data": body, "content_type": "application/json"}
        if isinstance(body, bytes)
        else {"json": body}
    )
    before = _everything_stored()
    answer = _post(client, trip.customer, trip.job_id, "cancel", **kwargs)
    assert_error(answer, 422, "validation_error", field)
    assert _everything_stored() == before
    assert _read(client, trip.customer, trip.job_id).get_json() == job
