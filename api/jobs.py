"""Jobs: create (idempotent), read, list, their event log, and every step of their life:
accept (race-safe), arrive, start, complete, release, decline, cancel."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from sqlalchemy.orm import Session

from api.bearer import signed_in
from api.openapi import EndpointDoc, documented
from api.schemas import CancelBody, JobCreateBody, JobEventsAnswer, JobsAnswer, JobsQuery
from api.validation import optional_body, validated_body, validated_header, validated_query
from models.accounts import User
from models.db import redis_connection, session_scope
from models.errors import NotFound
from models.job_events import job_history
from models.jobs import Job, JobStatus, customer_jobs
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
from models.schemas import JobEventView, JobView, as_json, job_views
from workers.enqueue import announce_after_commit

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

IDEMPOTENCY_HEADER = "Idempotency-Key"
STEP_ERRORS = ("forbidden", "not_found", "conflict")


def _view(job: Job) -> JobView:
    [view] = job_views(redis_connection(), [job])
    return view


def _job(view: JobView, status: int = 200) -> tuple[Response, int]:
    return jsonify(as_json(view)), status


def _step(job_id: int, role: str, step: Callable[[Session, User, int], Step]) -> Response:
    """One step by the signed-in user: applied and its events announced after commit, or,
    for a retry, the same job again with nothing announced."""
    with session_scope() as session:
        done = step(session, signed_in(session, role), job_id)
        announce_after_commit(session, done)
    return jsonify(as_json(_view(done.job)))  # after commit: no lock held for Redis


@bp.post("")
@documented(
    EndpointDoc(
        "Create a job; it is offered to the nearby drivers",
        body=JobCreateBody,
        answers={201: JobView, 200: JobView},
        errors=("forbidden",),
        roles=("customer",),
        headers={
            IDEMPOTENCY_HEADER: "Repeat-safe creation: the same key within 24 h returns "
            "the first job and dispatches nothing again"
        },
    )
)
def create() -> tuple[Response, int]:
    with session_scope() as session:
        customer = signed_in(session, "customer")
        body = validated_body(JobCreateBody)
        done = create_job(
            session,
            customer,
            body.pickup.to_place(),
            body.dropoff.to_place() if body.dropoff else None,
            body.notes,
            validated_header(IDEMPOTENCY_HEADER),
        )
        announce_after_commit(session, done)
        view = JobView.of(done.job) if done.events else _view(done.job)
    return _job(view, 201 if done.events else 200)


@bp.get("/<int:job_id>")
@documented(
    EndpointDoc(
        "One job: for its customer, its driver, or a driver it is offered to",
        answers={200: JobView},
        errors=("not_found", "service_unavailable"),
        roles=(),
    )
)
def read(job_id: int) -> tuple[Response, int]:
    with session_scope() as session:
        view = _view(job_for_user(session, signed_in(session), job_id))
    return _job(view)


@bp.get("")
@documented(
    EndpointDoc(
        "Your jobs, newest first",
        query=JobsQuery,
        answers={200: JobsAnswer},
        errors=("forbidden", "service_unavailable"),
        roles=("customer",),
    )
)
def list_jobs() -> Response:
    with session_scope() as session:
        customer = signed_in(session, "customer")
        query = validated_query(JobsQuery)
        status = JobStatus(query.status) if query.status else None
        jobs = customer_jobs(session, customer, status)
        answer = JobsAnswer(jobs=job_views(redis_connection(), jobs))
    return jsonify(as_json(answer))


@bp.get("/<int:job_id>/events")
@documented(
    EndpointDoc(
        "Every change of the job, oldest first: for its customer and its driver",
        answers={200: JobEventsAnswer},
        errors=("not_found",),
        roles=(),
    )
)
def events(job_id: int) -> Response:
    with session_scope() as session:
        user = signed_in(session)
        job = job_for_user(session, user, job_id)
        if user.id not in (job.customer_id, job.driver_id):
            raise NotFound("No such job.")
        answer = JobEventsAnswer(events=[JobEventView.of(e) for e in job_history(session, job_id)])
    return jsonify(as_json(answer))


@bp.post("/<int:job_id>/accept")
@documented(
    EndpointDoc(
        "Take a job offered to you: exactly one driver wins; the winner's retry answers 200",
        answers={200: JobView},
        errors=("forbidden", "not_found", "job_not_available", "conflict"),
        roles=("driver",),
    )
)
def accept(job_id: int) -> Response:
    return _step(job_id, "driver", accept_job)


@bp.post("/<int:job_id>/arrive")
@documented(
    EndpointDoc(
        "You are at the pickup (from accepted)",
        answers={200: JobView},
        errors=STEP_ERRORS,
        roles=("driver",),
    )
)
def arrive(job_id: int) -> Response:
    return _step(job_id, "driver", arrive_job)


@bp.post("/<int:job_id>/start")
@documented(
    EndpointDoc(
        "The work has started (from arrived)",
        answers={200: JobView},
        errors=STEP_ERRORS,
        roles=("driver",),
    )
)
def start(job_id: int) -> Response:
    return _step(job_id, "driver", start_job)


@bp.post("/<int:job_id>/complete")
@documented(
    EndpointDoc(
        "The job is done (from in_progress); you are free for the next one",
        answers={200: JobView},
        errors=STEP_ERRORS,
        roles=("driver",),
    )
)
def complete(job_id: int) -> Response:
    return _step(job_id, "driver", complete_job)


@bp.post("/<int:job_id>/release")
@documented(
    EndpointDoc(
        "Give the job back before starting it (from accepted or arrived): it is offered "
        "again to every eligible driver but you",
        answers={200: JobView},
        errors=STEP_ERRORS,
        roles=("driver",),
    )
)
def release(job_id: int) -> Response:
    return _step(job_id, "driver", release_job)


@bp.post("/<int:job_id>/decline")
@documented(
    EndpointDoc(
        "Decline a job offered to you (while pending): it leaves your feed for good",
        answers={204: None},
        errors=STEP_ERRORS,
        roles=("driver",),
    )
)
def decline(job_id: int) -> tuple[str, int]:
    with session_scope() as session:
        done = decline_job(session, signed_in(session, "driver"), job_id)
        announce_after_commit(session, done)
    return "", 204


@bp.post("/<int:job_id>/cancel")
@documented(
    EndpointDoc(
        "Cancel your job while pending, accepted or arrived; the body is optional",
        body=CancelBody,
        body_required=False,
        answers={200: JobView},
        errors=STEP_ERRORS,
        roles=("customer",),
    )
)
def cancel(job_id: int) -> Response:
    with session_scope() as session:
        customer = signed_in(session, "customer")
        body = optional_body(CancelBody)
        done = cancel_job(session, customer, job_id, body.reason)
        announce_after_commit(session, done)
    return jsonify(as_json(_view(done.job)))
