"""APNs device tokens of the signed-in user."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify

from api.bearer import signed_in
from api.openapi import EndpointDoc, documented
from api.schemas import DEVICE_TOKEN_PATTERN, DeviceAnswer, DeviceBody
from api.validation import validated_body
from models.db import session_scope
from models.devices import Environment, register_device, remove_device
from models.errors import NotFound
from models.schemas import as_json

bp = Blueprint("devices", __name__, url_prefix="/devices")


@bp.post("")
@documented(
    EndpointDoc(
        "Register this device's APNs token (moves it from another user)",
        body=DeviceBody,
        answers={201: DeviceAnswer, 200: DeviceAnswer},
        roles=(),
    )
)
def register() -> tuple[Response, int]:
    with session_scope() as session:
        user = signed_in(session)
        body = validated_body(DeviceBody)
        device, created = register_device(
            session, user, body.token, body.platform, Environment(body.environment)
        )
        answer = DeviceAnswer(
            token=device.token,
            platform=device.platform,
            environment=device.environment,
            active=device.active,
        )
    return jsonify(as_json(answer)), 201 if created else 200


@bp.delete("/<token>")
@documented(
    EndpointDoc(
        "Forget one of your device tokens", answers={204: None}, errors=("not_found",), roles=()
    )
)
def remove(token: str) -> tuple[str, int]:
    with session_scope() as session:
        user = signed_in(session)
        if not re.fullmatch(DEVICE_TOKEN_PATTERN, token):  # never registered; and NUL breaks SQL
            raise NotFound("No such device token on your account.")
        remove_device(session, user, token)
    return "", 204
