"""Jobs: create (idempotent), read, list, accept (race-safe), cancel."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.bearer import signed_in
from api.errors import RequestInvalid
from api.openapi import EndpointDoc, documented
from api.schemas import JobCreateBody, JobsAnswer, JobsQuery
from api.validation import validated_body, validated_query
from models.db import session_scope
from models.jobs import JobStatus, accept_job, cancel_job, create_job, customer_jobs, job_for_user
from models.schemas import JobView, as_json
from workers.enqueue import enqueue_after_commit

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > 255 or not key.isprintable():
        raise RequestInvalid({IDEMPOTENCY_HEADER: "must be 1 to 255 printable characters"})
    return key


def _job(view: JobView, status: int = 200) -> tuple[Response, int]:
    return jsonify(as_json(view)), status


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
        job, created = create_job(
            session,
            customer,
            body.pickup.to_place(),
            body.dropoff.to_place() if body.dropoff else None,
            body.notes,
            _idempotency_key(),
        )
        if created:
            enqueue_after_commit(session, "notify_nearby", job.id)
        view = JobView.of(job)
    return _job(view, 201 if created else 200)


@bp.get("/<int:job_id>")
@documented(
    EndpointDoc(
        "One job: for its customer, its driver, or a driver it is offered to",
        answers={200: JobView},
        errors=("not_found",),
        roles=(),
    )
)
def read(job_id: int) -> tuple[Response, int]:
    with session_scope() as session:
        view = JobView.of(job_for_user(session, signed_in(session), job_id))
    return _job(view)


@bp.get("")
@documented(
    EndpointDoc(
        "Your jobs, newest first",
        query=JobsQuery,
        answers={200: JobsAnswer},
        errors=("forbidden",),
        roles=("customer",),
    )
)
def list_jobs() -> Response:
    with session_scope() as session:
        customer = signed_in(session, "customer")
        query = validated_query(JobsQuery)
        status = JobStatus(query.status) if query.status else None
        answer = JobsAnswer(jobs=[JobView.of(j) for j in customer_jobs(session, customer, status)])
    return jsonify(as_json(answer))


@bp.post("/<int:job_id>/accept")
@documented(
    EndpointDoc(
        "Take a job offered to you: exactly one driver wins",
        answers={200: JobView},
        errors=("forbidden", "not_found", "job_not_available", "conflict"),
        roles=("driver",),
    )
)
def accept(job_id: int) -> tuple[Response, int]:
    with session_scope() as session:
        job, won = accept_job(session, signed_in(session, "driver"), job_id)
        if won:
            enqueue_after_commit(session, "notify_accepted", job.id)
        view = JobView.of(job)
    return _job(view)


@bp.post("/<int:job_id>/cancel")
@documented(
    EndpointDoc(
        "Cancel your pending or accepted job",
        answers={200: JobView},
        errors=("forbidden", "not_found", "conflict"),
        roles=("customer",),
    )
)
def cancel(job_id: int) -> tuple[Response, int]:
    with session_scope() as session:
        job = cancel_job(session, signed_in(session, "customer"), job_id)
        enqueue_after_commit(session, "notify_removed", job.id)
        view = JobView.of(job)
    return _job(view)
