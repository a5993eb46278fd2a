"""The signed-in driver: availability, position, and the live offers feed."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from api.bearer import signed_in
from api.openapi import EndpointDoc, documented
from api.schemas import AvailabilityAnswer, AvailabilityBody, LocationBody, OffersAnswer
from api.validation import validated_body
from models.db import redis_connection, session_scope
from models.drivers import report_location, set_availability
from models.errors import ServiceUnavailable
from models.offers import driver_feed
from models.schemas import OfferView, as_json

bp = Blueprint("drivers", __name__, url_prefix="/drivers/me")


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
        "Report your position (same as the socket event driver:location)",
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
        report_location(redis_connection(), driver, body.lat, body.lng)
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
