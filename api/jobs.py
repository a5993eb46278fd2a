"""Jobs: create (idempotent), read, list, their event log, and every step of their life:
accept (race-safe), arrive, start, complete, release, decline, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy.orm import Session

from api.answers import callers_jobs_answer, job_answer, job_view, jobs_list_operation
from api.bearer import current_user
from api.openapi import operation
from api.schemas import (
    CancelBody,
    IdempotencyHeader,
    JobCreateBody,
    JobEventsAnswer,
    JobPath,
    JobsQuery,
)
from models.accounts import User
from models.db import session_scope
from models.errors import NotFound
from models.job_events import job_history
from models.jobs import customer_jobs
from models.lifecycle import (
    Step,
    accept_job,
    arrive_job,
    cancel_job,
    complete_job,
    create_job,
    decline_job,
    release_job,
    start_job,
)
from models.offers import job_for_user
from models.schemas import JobEventView, JobView, as_json
from workers.enqueue import announce_after_commit

bp = APIBlueprint("jobs", __name__, url_prefix="/jobs", abp_tags=[Tag(name="jobs")])
# A job id is a PostgreSQL integer: a larger one names no job (404 from routing), and never
# reaches a database that could not bind it (SQLite's driver overflows past 2^63).
JOB_ID = "<int(max=2147483647):job_id>"

CUSTOMER, DRIVER = ("customer",), ("driver",)
STEP_ERRORS = ("forbidden", "not_found", "conflict")


def _take_step(job_id: int, step: Callable[[Session, User, int], Step]) -> Response:
    """One step by the signed-in driver: applied and its events announced after commit, or,
    for a retry, the same job again with nothing announced."""
    with session_scope() as session:
        done = step(session, current_user(session, *DRIVER), job_id)
        announce_after_commit(session, done)
    return jsonify(as_json(job_view(done.job)))  # after commit: no lock held for Redis


def _driver_step_operation(summary: str, errors: tuple[str, ...] = STEP_ERRORS) -> dict[str, Any]:
    return operation(summary, answers={200: JobView}, errors=errors, roles=DRIVER)


@bp.post(
    "",
    **operation(
        "Create a job; it is offered to the nearby drivers",
        answers={201: JobView, 200: JobView},
        errors=("validation_error", "forbidden"),
        roles=CUSTOMER,
    ),
)
def create(body: JobCreateBody, header: IdempotencyHeader) -> tuple[Response, int]:
    with session_scope() as session:
        customer = current_user(session, *CUSTOMER)
        done = create_job(
            session,
            customer,
            body.pickup.to_place(),
            body.dropoff.to_place() if body.dropoff else None,
            body.notes,
            header.key,
        )
        announce_after_commit(session, done)
        created = bool(done.events)  # else the first job of this Idempotency-Key
        view = JobView.of(done.job) if created else job_view(done.job)
    return job_answer(view, 201 if created else 200)


@bp.get(
    f"/{JOB_ID}",
    **operation(
        "One job: for its customer, its driver, or a driver it is offered to",
        answers={200: JobView},
        errors=("not_found", "service_unavailable"),
        roles=(),
    ),
)
def read(path: JobPath) -> tuple[Response, int]:
    with session_scope() as session:
        view = job_view(job_for_user(session, current_user(session), path.job_id))
    return job_answer(view)


@bp.get("", **jobs_list_operation("Your jobs, newest first", "customer"))
def list_jobs(query: JobsQuery) -> Response:
    return callers_jobs_answer("customer", customer_jobs, query)


@bp.get(
    f"/{JOB_ID}/events",
    **operation(
        "Every change of the job, oldest first: for its customer and its driver",
        answers={200: JobEventsAnswer},
        errors=("not_found",),
        roles=(),
    ),
)
def events(path: JobPath) -> Response:
    with session_scope() as session:
        user = current_user(session)
        job = job_for_user(session, user, path.job_id)
        if user.id not in (job.customer_id, job.driver_id):
            raise NotFound("No such job.")
        history = [JobEventView.of(e) for e in job_history(session, path.job_id)]
        answer = JobEventsAnswer(events=history)
    return jsonify(as_json(answer))


@bp.post(
    f"/{JOB_ID}/accept",
    **_driver_step_operation(
        "Take a job offered to you: exactly one driver wins; the winner's retry answers 200",
        errors=("forbidden", "not_found", "job_not_available", "conflict"),
    ),
)
def accept(path: JobPath) -> Response:
    return _take_step(path.job_id, accept_job)


@bp.post(f"/{JOB_ID}/arrive", **_driver_step_operation("You are at the pickup (from accepted)"))
def arrive(path: JobPath) -> Response:
    return _take_step(path.job_id, arrive_job)


@bp.post(f"/{JOB_ID}/start", **_driver_step_operation("The work has started (from arrived)"))
def start(path: JobPath) -> Response:
    return _take_step(path.job_id, start_job)


@bp.post(
    f"/{JOB_ID}/complete",
    **_driver_step_operation("The job is done (from in_progress); you are free for the next one"),
)
def complete(path: JobPath) -> Response:
    return _take_step(path.job_id, complete_job)


@bp.post(
    f"/{JOB_ID}/release",
    **_driver_step_operation(
        "Give the job back before starting it (from accepted or arrived): it is offered "
        "again to every eligible driver but you"
    ),
)
def release(path: JobPath) -> Response:
    return _take_step(path.job_id, release_job)


@bp.post(
    f"/{JOB_ID}/decline",
    **operation(
        "Decline a job offered to you (while pending): it leaves your feed for good",
        answers={204: None},
        errors=STEP_ERRORS,
        roles=DRIVER,
    ),
)
def decline(path: JobPath) -> tuple[str, int]:
    with session_scope() as session:
        done = decline_job(session, current_user(session, *DRIVER), path.job_id)
        announce_after_commit(session, done)
    return "", 204


@bp.post(
    f"/{JOB_ID}/cancel",
    **operation(
        "Cancel your job while pending, accepted or arrived; the body is optional",
        answers={200: JobView},
        errors=("validation_error", *STEP_ERRORS),
        roles=CUSTOMER,
    ),
)
def cancel(path: JobPath, body: CancelBody) -> Response:
    with session_scope() as session:
        customer = current_user(session, *CUSTOMER)
        done = cancel_job(session, customer, path.job_id, body.reason)
        announce_after_commit(session, done)
    return jsonify(as_json(job_view(done.job)))
