"""The JSON answers that carry jobs, each with its driver's live position where it shows, and
the two lists of the caller's jobs (a customer's, a driver's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, jsonify
from sqlalchemy.orm import Session

from api.bearer import current_user
from api.openapi import operation
from api.schemas import JobsAnswer, JobsQuery
from models.accounts import User
from models.db import redis_connection, session_scope
from models.jobs import Job, JobStatus
from models.schemas import JobView, as_json, job_views

# The caller's jobs with one status (None: every status), newest first.
JobsOf = Callable[[Session, User, JobStatus | None], list[Job]]


def job_view(job: Job) -> JobView:
    """The job as its customer and driver see it, read after commit: no row lock is held
    while Redis answers."""
    [view] = job_views(redis_connection(), [job])
    return view


def job_answer(view: JobView, status: int = 200) -> tuple[Response, int]:
    return jsonify(as_json(view)), status


def jobs_answer(jobs: list[Job]) -> Response:
    return jsonify(as_json(JobsAnswer(jobs=job_views(redis_connection(), jobs))))


def jobs_list_operation(summary: str, role: str) -> dict[str, Any]:
    return operation(
        summary,
        answers={200: JobsAnswer},
        errors=("validation_error", "forbidden", "service_unavailable"),
        roles=(role,),
    )


def callers_jobs_answer(role: str, jobs_of: JobsOf, query: JobsQuery) -> Response:
    """The jobs of the caller, who must have `role`, filtered by `?status=`."""
    with session_scope() as session:
        user = current_user(session, role)
        return jobs_answer(jobs_of(session, user, query.status_filter()))
