"""APNs device tokens of the signed-in user."""

from __future__ import annotations

import re

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.bearer import current_user
from api.openapi import operation
from api.schemas import DEVICE_TOKEN_PATTERN, DeviceAnswer, DeviceBody, DeviceTokenPath
from models.db import session_scope
from models.devices import Environment, register_device, remove_device
from models.errors import NotFound
from models.schemas import as_json

bp = APIBlueprint("devices", __name__, url_prefix="/devices", abp_tags=[Tag(name="devices")])


@bp.post(
    "",
    **operation(
        "Register this device's APNs token (moves it from another user)",
        answers={201: DeviceAnswer, 200: DeviceAnswer},
        errors=("validation_error",),
        roles=(),
    ),
)
def register(body: DeviceBody) -> tuple[Response, int]:
    with session_scope() as session:
        user = current_user(session)
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


@bp.delete(
    "/<token>",
    **operation(
        "Forget one of your device tokens", answers={204: None}, errors=("not_found",), roles=()
    ),
)
def remove(path: DeviceTokenPath) -> tuple[str, int]:
    with session_scope() as session:
        user = current_user(session)
        if not re.fullmatch(DEVICE_TOKEN_PATTERN, path.token):  # never registered; NUL breaks SQL
            raise NotFound("No such device token on your account.")
        remove_device(session, user, path.token)
    return "", 204
