"""Register and log in."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.openapi import operation
from api.schemas import AuthAnswer, LoginBody, RegisterBody
from api.throttle import limit_logins, limit_registrations, throttle_blueprint
from models.accounts import Role, authenticate, issue_token, register_user
from models.db import session_scope
from models.schemas import UserView, as_json

bp = APIBlueprint("auth", __name__, url_prefix="/auth", abp_tags=[Tag(name="auth")])
throttle_blueprint(bp)


def _signed_in_answer(user_view: UserView, token: str, status: int) -> tuple[Response, int]:
    return jsonify(as_json(AuthAnswer(user=user_view, token=token))), status


@bp.post(
    "/register",
    **operation(
        "Create a customer or driver account",
        answers={201: AuthAnswer},
        errors=("validation_error", "conflict", "rate_limited", "service_unavailable"),
    ),
)
@limit_registrations
def register(body: RegisterBody) -> tuple[Response, int]:
    with session_scope() as session:
        user = register_user(session, Role(body.role), body.email, body.password, body.name)
        view, token = UserView.of(user), issue_token(user)
    return _signed_in_answer(view, token, 201)


@bp.post(
    "/login",
    **operation(
        "Exchange email and password for a bearer token",
        answers={200: AuthAnswer},
        errors=("validation_error", "unauthorized", "rate_limited", "service_unavailable"),
    ),
)
@limit_logins
def login(body: LoginBody) -> tuple[Response, int]:
    with session_scope() as session:
        user = authenticate(session, body.email, body.password)
        view, token = UserView.of(user), issue_token(user)
    return _signed_in_answer(view, token, 200)
