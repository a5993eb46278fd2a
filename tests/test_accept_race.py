"""Exactly one of many concurrent accepts wins, every time (real threads, real PostgreSQL)."""

import threading
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from sqlalchemy import func, select

from models.accounts import DriverProfile
from models.db import session_scope
from models.job_events import JobEvent
from models.jobs import Job
from tests.factories import Account, Factory
from tests.stored import queued_tasks

DRIVERS = 30
JOBS = 50


def _race(app: Flask, job_id: int, drivers: list[Account]) -> list[tuple[int, int, str | None]]:
    start = threading.Barrier(len(drivers))

    def accept(driver: Account) -> tuple[int, int, str | None]:
        client = app.test_client()
        start.wait(timeout=30)
        answer = client.post(f"/api/v1/jobs/{job_id}/accept", headers=driver.headers)
        code = answer.json.get("error", {}).get("code") if answer.status_code != 200 else None
        return driver.id, answer.status_code, code

    with ThreadPoolExecutor(max_workers=len(drivers)) as pool:
        return list(pool.map(accept, drivers))


def test_exactly_one_of_thirty_concurrent_accepts_wins_fifty_times(app, client, factory: Factory):
    customer = factory.customer()
    drivers = [factory.driver() for _ in range(DRIVERS)]
    for _ in range(JOBS):
        job = factory.job(customer)
        assert len(factory.offer(job["id"])) == DRIVERS

        results = _race(app, job["id"], drivers)

        winners = [driver_id for driver_id, status, _ in results if status == 200]
        losers = [(status, code) for _, status, code in results if status != 200]
        assert len(winners) == 1, results
        assert losers == [(409, "job_not_available")] * (DRIVERS - 1)
        with session_scope() as session:
            stored = session.get(Job, job["id"])
            assert stored is not None
            assert (stored.status, stored.driver_id) == ("accepted", winners[0])
            on_job = session.scalar(
                select(func.count()).where(DriverProfile.current_job_id == job["id"])
            )
            assert on_job == 1
        # Free the winner for the next round, the way a customer would.
        cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=customer.headers)
        assert cancelled.status_code == 200


def test_one_driver_racing_for_two_jobs_gets_at_most_one(app, factory: Factory):
    customer = factory.customer()
    driver = factory.driver()
    jobs = [factory.job(customer) for _ in range(10)]
    for job in jobs:
        factory.offer(job["id"])
    start = threading.Barrier(len(jobs))

    def accept(job_id: int) -> int:
        client = app.test_client()
        start.wait(timeout=30)
        return client.post(f"/api/v1/jobs/{job_id}/accept", headers=driver.headers).status_code

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        statuses = list(pool.map(accept, [job["id"] for job in jobs]))
    assert statuses.count(200) == 1
    assert statuses.count(409) == len(jobs) - 1


def test_concurrent_creates_with_one_idempotency_key_make_one_job(app, factory: Factory):
    customer = factory.customer()
    start = threading.Barrier(20)

    def create(_: int) -> tuple[int, int]:
        client = app.test_client()
        start.wait(timeout=30)
        answer = client.post(
            "/api/v1/jobs",
            json={"pickup": {"lat": 38.7, "lng": -9.1}},
            headers={**customer.headers, "Idempotency-Key": "tow-123"},
        )
        return answer.status_code, answer.json["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(create, range(20)))
    assert {job_id for _, job_id in results} == {results[0][1]}
    assert all(status in (200, 201) for status, _ in results)
    assert [status for status, _ in results].count(201) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    with session_scope() as session:
        [created] = session.scalars(select(JobEvent.id).where(JobEvent.job_id == results[0][1]))
    assert queued_tasks() == [{"task": "workers.tasks.notify_nearby", "args": [created]}]
