"""Register and log in."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.openapi import EndpointDoc, documented
from api.schemas import AuthAnswer, LoginBody, RegisterBody
from api.throttle import limit_logins, limit_registrations, throttle_blueprint
from api.validation import validated_body
from models.accounts import Role, authenticate, issue_token, register_user
from models.db import session_scope
from models.schemas import UserView, as_json

bp = Blueprint("auth", __name__, url_prefix="/auth")
throttle_blueprint(bp)


def _answer(user_view: UserView, token: str, status: int) -> tuple[Response, int]:
    return jsonify(as_json(AuthAnswer(user=user_view, token=token))), status


@bp.post("/register")
@documented(
    EndpointDoc(
        "Create a customer or driver account",
        body=RegisterBody,
        answers={201: AuthAnswer},
        errors=("conflict", "rate_limited", "service_unavailable"),
    )
)
@limit_registrations
def register() -> tuple[Response, int]:
    body = validated_body(RegisterBody)
    with session_scope() as session:
        user = register_user(session, Role(body.role), body.email, body.password, body.name)
        view, token = UserView.of(user), issue_token(user)
    return _answer(view, token, 201)


@bp.post("/login")
@documented(
    EndpointDoc(
        "Exchange email and password for a bearer token",
        body=LoginBody,
        answers={200: AuthAnswer},
        errors=("unauthorized", "rate_limited", "service_unavailable"),
    )
)
@limit_logins
def login() -> tuple[Response, int]:
    body = validated_body(LoginBody)
    with session_scope() as session:
        user = authenticate(session, body.email, body.password)
        view, token = UserView.of(user), issue_token(user)
    return _answer(view, token, 200)
