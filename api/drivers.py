"""The signed-in driver: profile and current job, availability, position, the live offers
feed, and the jobs they have held."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from api.bearer import signed_in
from api.openapi import EndpointDoc, documented
from api.schemas import (
    AvailabilityAnswer,
    AvailabilityBody,
    DriverAnswer,
    JobsAnswer,
    JobsQuery,
    LocationBody,
    OffersAnswer,
)
from api.validation import validated_body, validated_query
from models.db import redis_connection, session_scope
from models.drivers import driver_profile, report_location, set_availability
from models.errors import ServiceUnavailable
from models.jobs import JobStatus, current_job, driver_jobs
from models.offers import driver_feed
from models.rooms import customer_room
from models.schemas import OfferView, as_json, job_views
from workers.events import emit

bp = Blueprint("drivers", __name__, url_prefix="/drivers/me")


@bp.get("")
@documented(
    EndpointDoc(
        "You: online, approved, and the job you are on",
        answers={200: DriverAnswer},
        errors=("forbidden", "service_unavailable"),
        roles=("driver",),
    )
)
def me() -> Response:
    with session_scope() as session:
        driver = signed_in(session, "driver")
        profile = driver_profile(driver)
        job = current_job(session, driver)
        on_job = job_views(redis_connection(), [job])[0] if job else None
        answer = DriverAnswer(
            id=driver.id,
            name=driver.name,
            online=profile.online,
            approved=profile.approved,
            current_job=on_job,
        )
    return jsonify(as_json(answer))


@bp.get("/jobs")
@documented(
    EndpointDoc(
        "The jobs you hold or have held, newest first",
        query=JobsQuery,
        answers={200: JobsAnswer},
        errors=("forbidden", "service_unavailable"),
        roles=("driver",),
    )
)
def jobs() -> Response:
    with session_scope() as session:
        driver = signed_in(session, "driver")
        query = validated_query(JobsQuery)
        status = JobStatus(query.status) if query.status else None
        held = driver_jobs(session, driver, status)
        answer = JobsAnswer(jobs=job_views(redis_connection(), held))
    return jsonify(as_json(answer))


@bp.put("/availability")
@documented(
    EndpointDoc(
        "Go online or offline",
        body=AvailabilityBody,
        answers={200: AvailabilityAnswer},
        errors=("forbidden",),
        roles=("driver",),
    )
)
def availability() -> Response:
    with session_scope() as session:
        driver = signed_in(session, "driver")
        body = validated_body(AvailabilityBody)
        online = set_availability(session, redis_connection(), driver, body.online)
    return jsonify(as_json(AvailabilityAnswer(online=online)))


@bp.put("/location")
@documented(
    EndpointDoc(
        "Report your position (same as the socket event driver:location); on a job, your "
        "customer follows it (job:driver_location)",
        body=LocationBody,
        answers={204: None},
        errors=("forbidden", "service_unavailable"),
        roles=("driver",),
    )
)
def location() -> tuple[str, int]:
    with session_scope() as session:
        driver = signed_in(session, "driver")
    body = validated_body(LocationBody)
    try:
        update = report_location(redis_connection(), driver.id, body.lat, body.lng)
        if update is not None:
            emit("job:driver_location", update.payload, [customer_room(update.customer_id)])
    except redis.RedisError as exc:
        raise ServiceUnavailable("Your position could not be stored; send it again.") from exc
    return "", 204


@bp.get("/offers")
@documented(
    EndpointDoc(
        "Your live feed: pending jobs offered to you, newest first",
        answers={200: OffersAnswer},
        errors=("forbidden",),
        roles=("driver",),
    )
)
def offers() -> Response:
    with session_scope() as session:
        driver = signed_in(session, "driver")
        answer = OffersAnswer(offers=[OfferView.of(o) for o in driver_feed(session, driver)])
    return jsonify(as_json(answer))
