"""Jobs: create (idempotent), read, list, accept, cancel, as the contract states them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from models.accounts import DriverProfile
from models.db import session_scope, utcnow
from models.jobs import Job
from tests.contract import API, assert_error, assert_job, parse_time
from tests.factories import ORIGIN, Account, Factory
from tests.stored import db_rows, queued_tasks

JOBS = f"{API}/jobs"


def _create(
    client: FlaskClient, customer: Account, key: str | None = None, at: tuple[float, float] = ORIGIN
) -> TestResponse:
    headers = customer.headers if key is None else {**customer.headers, "Idempotency-Key": key}
    return client.post(JOBS, json={"pickup": {"lat": at[0], "lng": at[1]}}, headers=headers)


def _accept(client: FlaskClient, driver: Account, job_id: int) -> TestResponse:
    return client.post(f"{JOBS}/{job_id}/accept", headers=driver.headers)


def _cancel(client: FlaskClient, customer: Account, job_id: int) -> TestResponse:
    return client.post(f"{JOBS}/{job_id}/cancel", headers=customer.headers)


def _read(client: FlaskClient, who: Account, job_id: int) -> TestResponse:
    return client.get(f"{JOBS}/{job_id}", headers=who.headers)


def _current_job(driver: Account) -> int | None:
    with session_scope() as session:
        return session.scalar(
            select(DriverProfile.current_job_id).where(DriverProfile.user_id == driver.id)
        )


def _set_job(job_id: int, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _dispatches() -> list[int]:
    """The jobs sent to dispatch: one `notify_nearby` task each (the queue is newest first)."""
    return [t["args"][0] for t in queued_tasks() if t["task"] == "workers.tasks.notify_nearby"]


# --- create ------------------------------------------------------------------------------


def test_create_answers_201_with_the_job(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer(name="Ana")
    body = {
        "pickup": {"lat": 38.7223, "lng": -9.1393, "address": "Rua Augusta 1"},
        "dropoff": {"lat": 38.75, "lng": -9.15, "address": "Alfama"},
        "notes": "two boxes, third floor",
    }
    before = utcnow()
    answer = client.post(JOBS, json=body, headers=customer.headers)
    assert (answer.status_code, answer.mimetype) == (201, "application/json")
    job = answer.get_json()
    assert_job(
        job,
        status="pending",
        pickup=body["pickup"],
        dropoff=body["dropoff"],
        notes="two boxes, third floor",
        customer={"id": customer.id, "name": "Ana"},
        driver=None,
        accepted_at=None,
    )
    assert before - timedelta(milliseconds=1) <= parse_time(job["created_at"]) <= utcnow()
    with session_scope() as session:
        [row] = session.scalars(select(Job))
        assert (row.id, row.customer_id, row.status) == (job["id"], customer.id, "pending")
    assert _dispatches() == [job["id"]]


@pytest.mark.parametrize("extra", [{}, {"dropoff": None, "notes": None}])
def test_only_the_pickup_is_required(
    client: FlaskClient, factory: Factory, extra: dict[str, Any]
) -> None:
    customer = factory.customer()
    body = {"pickup": {"lat": -33.8688, "lng": 151.2093}, **extra}
    answer = client.post(JOBS, json=body, headers=customer.headers)
    assert answer.status_code == 201
    assert_job(
        answer.get_json(),
        status="pending",
        pickup={"lat": -33.8688, "lng": 151.2093, "address": None},
        dropoff=None,
        notes=None,
    )


def test_the_same_idempotency_key_returns_the_first_job(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    first = _create(client, customer, key="order-42")
    assert first.status_code == 201
    again = _create(client, customer, key="order-42", at=(1.0, 2.0))  # a different body even
    assert again.status_code in (200, 201)
    assert again.get_json() == first.get_json()
    assert len(db_rows()["jobs"]) == 1
    assert _dispatches() == [first.get_json()["id"]]  # dispatched once


def test_an_idempotency_key_belongs_to_one_customer(client: FlaskClient, factory: Factory) -> None:
    ana, bea = factory.customer(), factory.customer()
    first, theirs = _create(client, ana, key="k"), _create(client, bea, key="k")
    assert (first.status_code, theirs.status_code) == (201, 201)
    assert theirs.get_json()["id"] != first.get_json()["id"]
    assert theirs.get_json()["customer"]["id"] == bea.id
    assert _create(client, ana, key="other").status_code == 201
    assert len(db_rows()["jobs"]) == 3


def test_without_an_idempotency_key_every_call_creates_a_job(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    ids = [_create(client, customer).get_json()["id"] for _ in range(2)]
    assert len(set(ids)) == 2 and sorted(_dispatches()) == ids


# --- read --------------------------------------------------------------------------------


def test_read_by_its_customer_and_by_the_drivers_it_is_offered_to(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    for who in (customer, driver):
        answer = _read(client, who, job["id"])
        assert (answer.status_code, answer.get_json()) == (200, job)


def test_read_is_404_for_anyone_else(client: FlaskClient, factory: Factory) -> None:
    customer, stranger = factory.customer(), factory.customer()
    not_offered = factory.driver(at=None)
    job = factory.job(customer, notes="secret code 1234", address="Rua Secreta 9")
    for who in (stranger, not_offered):
        error = assert_error(_read(client, who, job["id"]), 404, "not_found")
        assert "1234" not in error["message"] and "Secreta" not in error["message"]
    assert_error(_read(client, customer, job["id"] + 1000), 404, "not_found")


def test_after_acceptance_only_the_winner_and_the_customer_read_it(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    winner, loser = factory.driver(), factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    accepted = _accept(client, winner, job["id"]).get_json()
    assert _read(client, winner, job["id"]).get_json() == accepted
    assert _read(client, customer, job["id"]).get_json() == accepted
    assert_error(_read(client, loser, job["id"]), 404, "not_found")


# --- list --------------------------------------------------------------------------------


def test_list_is_the_customers_own_jobs_newest_first(client: FlaskClient, factory: Factory) -> None:
    ana, bea = factory.customer(), factory.customer()
    assert client.get(JOBS, headers=ana.headers).get_json() == {"jobs": []}
    anas = [factory.job(ana) for _ in range(3)]
    beas = [factory.job(bea)]
    answer = client.get(JOBS, headers=ana.headers)
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    assert answer.get_json() == {"jobs": anas[::-1]}
    assert client.get(JOBS, headers=bea.headers).get_json() == {"jobs": beas}


@pytest.mark.parametrize("status", ["pending", "accepted", "cancelled", "expired"])
def test_list_filters_by_status(client: FlaskClient, factory: Factory, status: str) -> None:
    customer, other = factory.customer(), factory.customer()
    driver = factory.driver()
    ids = {name: factory.job(customer)["id"] for name in ("pending", "accepted", "cancelled")}
    ids["expired"] = factory.job(customer)["id"]
    factory.job(other)  # in the same state as `pending`, but not theirs
    factory.offer(ids["accepted"])
    assert _accept(client, driver, ids["accepted"]).status_code == 200
    assert _cancel(client, customer, ids["cancelled"]).status_code == 200
    _set_job(ids["expired"], status="expired", ended_at=utcnow())

    answer = client.get(f"{JOBS}?status={status}", headers=customer.headers)
    assert answer.status_code == 200
    jobs = answer.get_json()["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(ids[status], status)]
    assert jobs[0] == _read(client, customer, ids[status]).get_json()


# --- accept ------------------------------------------------------------------------------


def test_accept_gives_the_job_to_the_driver(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver(name="Wes")
    job = factory.job(customer)
    factory.offer(job["id"])
    before = utcnow()
    answer = _accept(client, driver, job["id"])
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    accepted = answer.get_json()
    assert_job(accepted, status="accepted", driver={"id": driver.id, "name": "Wes"})
    assert before - timedelta(milliseconds=1) <= parse_time(accepted["accepted_at"]) <= utcnow()
    unchanged = ("id", "pickup", "dropoff", "notes", "customer", "created_at", "expires_at")
    assert {k: accepted[k] for k in unchanged} == {k: job[k] for k in unchanged}
    assert _read(client, customer, job["id"]).get_json() == accepted
    assert _current_job(driver) == job["id"]


def test_a_second_driver_gets_409_job_not_available(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    winner, late = factory.driver(), factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    accepted = _accept(client, winner, job["id"]).get_json()
    before = db_rows()
    assert_error(_accept(client, late, job["id"]), 409, "job_not_available")
    assert db_rows() == before
    assert _current_job(late) is None
    assert _read(client, customer, job["id"]).get_json() == accepted


def test_a_driver_not_offered_the_job_gets_404(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    offered = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    latecomer = factory.driver()  # online nearby, but after the offers went out
    before = db_rows()
    assert_error(_accept(client, latecomer, job["id"]), 404, "not_found")
    assert_error(_accept(client, latecomer, job["id"] + 1000), 404, "not_found")
    assert db_rows() == before
    assert _accept(client, offered, job["id"]).status_code == 200


def test_a_driver_on_an_accepted_job_gets_409_conflict(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    first, second = factory.job(customer), factory.job(customer)
    factory.offer(first["id"])
    factory.offer(second["id"])
    assert _accept(client, driver, first["id"]).status_code == 200
    before = db_rows()
    assert_error(_accept(client, driver, second["id"]), 409, "conflict")
    assert db_rows() == before
    assert _read(client, customer, second["id"]).get_json()["status"] == "pending"


def test_an_expired_job_cannot_be_accepted(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job, fresh = factory.job(customer), factory.job(customer)
    factory.offer(job["id"])
    factory.offer(fresh["id"])
    _set_job(job["id"], expires_at=utcnow() - timedelta(seconds=1))
    before = db_rows()
    assert_error(_accept(client, driver, job["id"]), 409, "job_not_available")
    assert db_rows() == before
    assert _current_job(driver) is None  # not left holding the expired job
    assert _accept(client, driver, fresh["id"]).status_code == 200


@pytest.mark.parametrize("how", ["cancelled", "expired"])
def test_a_job_that_ended_cannot_be_accepted(
    client: FlaskClient, factory: Factory, how: str
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    if how == "cancelled":
        _cancel(client, customer, job["id"])
    else:
        _set_job(job["id"], status="expired", ended_at=utcnow())
    assert_error(_accept(client, driver, job["id"]), 409, "job_not_available")
    assert _current_job(driver) is None


# --- cancel ------------------------------------------------------------------------------


def test_cancel_a_pending_job(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    answer = _cancel(client, customer, job["id"])
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    cancelled = answer.get_json()
    assert_job(cancelled, status="cancelled", driver=None, accepted_at=None)
    assert cancelled["cancelled_at"].endswith("Z") and cancelled["cancelled_by"] == "customer"
    changed = ("status", "cancelled_at", "cancelled_by")
    assert {k: v for k, v in cancelled.items() if k not in changed} == {
        k: v for k, v in job.items() if k not in changed
    }
    assert _read(client, customer, job["id"]).get_json() == cancelled
    assert client.get(f"{API}/drivers/me/offers", headers=driver.headers).get_json() == {
        "offers": []
    }


def test_cancel_an_accepted_job_frees_its_driver(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver(name="Wes")
    job = factory.job(customer)
    factory.offer(job["id"])
    accepted = _accept(client, driver, job["id"]).get_json()
    assert accepted["driver_location"]["lat"] == ORIGIN[0]  # shown while the driver works
    answer = _cancel(client, customer, job["id"])
    assert answer.status_code == 200
    cancelled = answer.get_json()
    assert cancelled == {
        **accepted,
        "status": "cancelled",
        "cancelled_at": cancelled["cancelled_at"],
        "cancelled_by": "customer",
        "driver_location": None,
    }
    assert _current_job(driver) is None

    following = factory.job(customer)
    assert factory.offer(following["id"]) == [driver.id]  # eligible again
    assert _accept(client, driver, following["id"]).status_code == 200


@pytest.mark.parametrize("ended", ["expired", "completed"])
def test_cancelling_a_job_that_ended_is_409_conflict(
    client: FlaskClient, factory: Factory, ended: str
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    if ended == "expired":
        _set_job(job["id"], status="expired", ended_at=utcnow())
    else:
        _accept(client, driver, job["id"])
        for step in ("arrive", "start", "complete"):
            answer = client.post(f"/api/v1/jobs/{job['id']}/{step}", headers=driver.headers)
            assert answer.status_code == 200, answer.get_json()
    before = db_rows()
    answer = _cancel(client, customer, job["id"])
    assert_error(answer, 409, "conflict")
    assert ended in answer.get_json()["error"]["message"]  # it names the job's status
    assert db_rows() == before


@pytest.mark.parametrize("when", ["pending", "accepted"])
def test_a_retried_cancel_answers_the_same_job_and_writes_nothing(
    client: FlaskClient, factory: Factory, when: str
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    if when == "accepted":
        _accept(client, driver, job["id"])
    first = _cancel(client, customer, job["id"])
    assert first.status_code == 200
    before = db_rows(), queued_tasks()
    again = _cancel(client, customer, job["id"])
    assert (again.status_code, again.get_json()) == (200, first.get_json())
    assert (db_rows(), queued_tasks()) == before


def test_cancelling_someone_elses_job_is_404(client: FlaskClient, factory: Factory) -> None:
    owner, stranger = factory.customer(), factory.customer()
    job = factory.job(owner)
    before = db_rows()
    assert_error(_cancel(client, stranger, job["id"]), 404, "not_found")
    assert_error(_cancel(client, stranger, job["id"] + 1000), 404, "not_found")
    assert db_rows() == before
    assert _read(client, owner, job["id"]).get_json() == job
