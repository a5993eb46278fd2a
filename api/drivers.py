"""The signed-in driver: profile and current job, availability, position, the live offers
feed, and the jobs they have held."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.answers import callers_jobs_answer, job_view, jobs_list_operation
from api.bearer import current_user
from api.openapi import operation
from api.schemas import (
    AvailabilityAnswer,
    AvailabilityBody,
    DriverAnswer,
    JobsQuery,
    LocationBody,
    OffersAnswer,
)
from models.db import redis_connection, session_scope
from models.drivers import driver_profile, report_location, set_availability
from models.errors import ServiceUnavailable
from models.jobs import current_job, driver_jobs
from models.offers import driver_feed
from models.rooms import OPERATORS_ROOM
from models.schemas import OfferView, as_json
from workers.events import emit, emit_each
from workers.metrics import LOCATION_REPORTS

log = logging.getLogger(__name__)

bp = APIBlueprint("drivers", __name__, url_prefix="/drivers/me", abp_tags=[Tag(name="drivers")])
DRIVER = ("driver",)


def _driver_only_operation(summary: str, answers: dict[int, Any], *errors: str) -> dict[str, Any]:
    return operation(summary, answers, ("forbidden", *errors), roles=DRIVER)


@bp.get(
    "",
    **_driver_only_operation(
        "You: online, approved, and the job you are on",
        {200: DriverAnswer},
        "service_unavailable",
    ),
)
def me() -> Response:
    with session_scope() as session:
        driver = current_user(session, *DRIVER)
        profile = driver_profile(driver)
        job = current_job(session, driver)
        answer = DriverAnswer(
            id=driver.id,
            name=driver.name,
            online=profile.online,
            approved=profile.approved,
            current_job=job_view(job) if job else None,
        )
    return jsonify(as_json(answer))


@bp.put(
    "/availability",
    **operation(
        "Go online or offline",
        answers={200: AvailabilityAnswer},
        errors=("validation_error", "forbidden"),
        roles=DRIVER,
    ),
)
def availability(body: AvailabilityBody) -> Response:
    with session_scope() as session:
        driver = current_user(session, *DRIVER)
        driver_id = driver.id
        online = set_availability(session, driver, body.online)
    try:  # the console's board, live; it reads the drivers again on every connect
        emit(
            "ops:driver_availability", {"driver_id": driver_id, "online": online}, [OPERATORS_ROOM]
        )
    except redis.RedisError as exc:
        log.warning("ops:driver_availability of driver %s not emitted: %s", driver_id, exc)
    return jsonify(as_json(AvailabilityAnswer(online=online)))


@bp.put(
    "/location",
    **operation(
        "Report your position (same as the socket event driver:location); on a job, your "
        "customer follows it (job:driver_location)",
        answers={204: None},
        errors=("validation_error", "forbidden", "service_unavailable"),
        roles=DRIVER,
    ),
)
def location(body: LocationBody) -> tuple[str, int]:
    with session_scope() as session:
        driver = current_user(session, *DRIVER)
    try:
        report = report_location(redis_connection(), driver.id, body.lat, body.lng)
        LOCATION_REPORTS.labels("rest").inc()
        emit_each(report.events())
    except redis.RedisError as exc:
        raise ServiceUnavailable("Your position could not be stored; send it again.") from exc
    return "", 204


@bp.get(
    "/offers",
    **_driver_only_operation(
        "Your live feed: pending jobs offered to you, newest first",
        {200: OffersAnswer},
    ),
)
def offers() -> Response:
    with session_scope() as session:
        driver = current_user(session, *DRIVER)
        answer = OffersAnswer(offers=[OfferView.of(o) for o in driver_feed(session, driver)])
    return jsonify(as_json(answer))


@bp.get("/jobs", **jobs_list_operation("The jobs you hold or have held, newest first", "driver"))
def jobs(query: JobsQuery) -> Response:
    return callers_jobs_answer("driver", driver_jobs, query)
