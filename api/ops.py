"""Operators: every driver with their standing and last position, approve and suspend
(each change logged with the operator, and told to the driver's sockets), jobs by status
with their timelines, and live counts. Operators only; accounts from `dispatch
create-operator`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.bearer import current_user
from api.jobs import JOB_ID
from api.openapi import operation
from api.schemas import (
    DriverEventsAnswer,
    DriverPath,
    JobEventsAnswer,
    JobPath,
    OpsDriversAnswer,
    OpsJobsAnswer,
    OpsJobsQuery,
)
from models.accounts import User
from models.db import after_commit, redis_connection, session_scope, utcnow
from models.errors import NotFound
from models.job_events import job_history
from models.jobs import Job
from models.operations import (
    DriverStatus,
    StandingChange,
    approve_driver,
    driver_history,
    driver_statuses,
    jobs_by_status,
    live_counts,
    open_offer_counts,
    suspend_driver,
)
from models.rooms import OPERATORS_ROOM, driver_room
from models.schemas import (
    DriverEventView,
    DriverStandingView,
    JobEventView,
    LiveCountsView,
    OpsDriverView,
    as_json,
    ops_job_views,
)
from models.tracking import last_positions
from workers.events import emit

log = logging.getLogger(__name__)

bp = APIBlueprint("ops", __name__, url_prefix="/ops", abp_tags=[Tag(name="ops")])
OPERATOR = ("operator",)
# As JOB_ID: a user id past PostgreSQL's integer names nobody (404 from routing).
DRIVER_ID = "<int(max=2147483647):driver_id>"


def _ops_operation(summary: str, answer: type[BaseModel], *errors: str) -> dict[str, Any]:
    return operation(
        summary, {200: answer}, ("forbidden", *errors, "service_unavailable"), roles=OPERATOR
    )


def _answer(model: BaseModel) -> Response:
    return jsonify(as_json(model))


@bp.get(
    "/drivers", **_ops_operation("Every driver: standing, last position, job", OpsDriversAnswer)
)
def drivers() -> Response:
    with session_scope() as session:
        current_user(session, *OPERATOR)
        statuses = driver_statuses(session, redis_connection())
    now = utcnow()
    return _answer(OpsDriversAnswer(drivers=[OpsDriverView.of(s, now) for s in statuses]))


def tell_driver_after_commit(session: Session, change: StandingChange) -> None:
    """Once committed, the driver's open sockets hear of a change of their standing
    (`driver:suspended`, `driver:approved`), and the operators' room of it as `ops:driver`
    (the same payload); a repeat that changed nothing tells nobody. Like
    every socket event it may be lost, and that costs no safety: offers stop and accepts are
    refused by the database either way."""
    if change.event is None:
        return
    profile = change.driver.driver_profile
    assert profile is not None
    event = f"driver:{change.event.type}"
    payload = as_json(DriverStandingView.of(profile, change.event))

    def tell() -> None:
        try:
            emit(event, payload, [driver_room(profile.user_id)])
            emit("ops:driver", payload, [OPERATORS_ROOM])
        except RedisError as exc:
            log.warning("%s not emitted to driver %s: %s", event, profile.user_id, exc)

    after_commit(session, tell)


def _change_standing(
    driver_id: int, change: Callable[[Session, int, User], StandingChange]
) -> Response:
    with session_scope() as session:
        done = change(session, driver_id, current_user(session, *OPERATOR))
        tell_driver_after_commit(session, done)
    position = last_positions(redis_connection(), [driver_id]).get(driver_id)
    return _answer(OpsDriverView.of(DriverStatus(done.driver, position), utcnow()))


@bp.post(
    f"/drivers/{DRIVER_ID}/approve",
    **_ops_operation(
        "Approve a driver for work, or reinstate a suspended one (a repeat changes nothing)",
        OpsDriverView,
        "not_found",
    ),
)
def approve(path: DriverPath) -> Response:
    return _change_standing(path.driver_id, approve_driver)


@bp.post(
    f"/drivers/{DRIVER_ID}/suspend",
    **_ops_operation(
        "Suspend a driver: offered nothing, and refused every accept, until approved again; "
        "a job they are on stays theirs to finish (a repeat changes nothing)",
        OpsDriverView,
        "not_found",
    ),
)
def suspend(path: DriverPath) -> Response:
    return _change_standing(path.driver_id, suspend_driver)


@bp.get(
    f"/drivers/{DRIVER_ID}/events",
    **_ops_operation(
        "Every change of a driver's standing, oldest first, with the operator who made it",
        DriverEventsAnswer,
        "not_found",
    ),
)
def driver_events(path: DriverPath) -> Response:
    with session_scope() as session:
        current_user(session, *OPERATOR)
        history = [DriverEventView.of(e) for e in driver_history(session, path.driver_id)]
    return _answer(DriverEventsAnswer(events=history))


@bp.get(
    "/jobs",
    **_ops_operation(
        "Jobs of one status (or all), newest first, each with its age and open offers",
        OpsJobsAnswer,
        "validation_error",
    ),
)
def jobs(query: OpsJobsQuery) -> Response:
    with session_scope() as session:
        current_user(session, *OPERATOR)
        found = jobs_by_status(session, query.status_filter(), query.limit)
        offered_to = open_offer_counts(session, found)
    views = ops_job_views(redis_connection(), found, offered_to, utcnow())
    return _answer(OpsJobsAnswer(jobs=views))


@bp.get(
    f"/jobs/{JOB_ID}/events",
    **_ops_operation("Every change of a job, oldest first", JobEventsAnswer, "not_found"),
)
def job_events(path: JobPath) -> Response:
    with session_scope() as session:
        current_user(session, *OPERATOR)
        if session.get(Job, path.job_id) is None:
            raise NotFound("No such job.")
        history = [JobEventView.of(e) for e in job_history(session, path.job_id)]
    return _answer(JobEventsAnswer(events=history))


@bp.get(
    "/counts",
    **_ops_operation(
        "Live counts: drivers online, on a job, suspended, awaiting approval; live jobs",
        LiveCountsView,
    ),
)
def counts() -> Response:
    with session_scope() as session:
        current_user(session, *OPERATOR)
        found = live_counts(session)
    return _answer(LiveCountsView.of(found))
