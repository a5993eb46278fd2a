"""Reading a request's body: the raw bytes within the size limit, and the JSON object in
them, for flask-openapi3 to validate against each view's pydantic models (api.openapi)."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from flask import Request, Response, current_app, g, request
from flask_openapi3 import OpenAPI
from flask_openapi3.utils import parse_rule
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.bearer import current_user
from api.errors import MalformedRequest, RequestInvalid, error_response
from models.db import session_scope
from models.schemas import field_reasons

M = TypeVar("M", bound=BaseModel)
# The OpenAPI extension on each operation that names who may call it (`api.openapi`).
ROLES_EXTENSION = "x-roles"


def request_body() -> bytes:
    """The raw body, refused with a 413 past MAX_CONTENT_LENGTH however it is sent.

    Werkzeug refuses a Content-Length over the limit, but a chunked body (no length) is
    only cut at the limit and handed over short, which parsed as truncated JSON, a 422.
    A body that fills the limit is therefore checked for one byte more. A body the server
    cannot read (gunicorn raises its own parse errors from the stream) is a 400. The
    verdict is kept on the request: the stream can be read only once, and the throttle
    validates a body before its view does."""
    verdict = g.get("request_body")
    if verdict is None:
        try:
            verdict = _read_body()
        except HTTPException as exc:
            verdict = type(exc)
        g.request_body = verdict
    if isinstance(verdict, bytes):
        return verdict
    raise verdict()


def _read_body() -> bytes:
    try:
        raw = request.get_data(cache=True)
    except HTTPException:
        raise
    except Exception as exc:  # the WSGI server's reader: any failure is the request's
        raise MalformedRequest() from exc
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return raw


class JsonBodyRequest(Request):
    """The request, whose JSON body is read the contract's way: whatever its Content-Type,
    through `request_body` (so the 413s and 400s above hold), refused as a whole (the
    `body` field of a 422) when it is not JSON or not an object. A blank body is None, which
    only an optional body's model accepts (api.schemas.CancelBody). flask-openapi3 validates
    each view's `body` model against what this returns."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        raw = request_body()
        if not raw.strip():
            return None
        try:
            document = from_json(raw)
        except ValueError as exc:
            caller_may_call()
            raise RequestInvalid({"body": "not valid JSON"}) from exc
        if not isinstance(document, dict):
            caller_may_call()
            raise RequestInvalid({"body": "must be a JSON object"})
        return document


def validated_body(model: type[M]) -> M:
    """The body as `model`, as flask-openapi3 validates a view's `body` (for the throttle,
    which decides before the view); RequestInvalid or ValidationError when it is not."""
    return model.model_validate(request.get_json())


def validation_failed(exc: ValidationError) -> Response:
    """flask-openapi3's answer to a request its models refuse: the contract's 422, given
    only to a caller allowed to make the request. Who calls is checked before what they
    sent, as in v1: 401 without a valid token, 403 in the wrong role, whatever the body.
    Only failures pay for the check; a valid request is authenticated by its view."""
    caller_may_call()
    return error_response("validation_error", "The request is not valid.", field_reasons(exc))


def caller_may_call() -> None:
    """Before a 422: Unauthorized or Forbidden unless the caller is one of the roles the
    route's operation documents (`api.openapi.operation`); nothing for a public route."""
    roles = _operation_roles()
    if roles is not None:
        with session_scope() as session:
            current_user(session, *roles)


def _operation_roles() -> list[str] | None:
    """The roles `api.openapi.operation` documented for this request's route and method
    (None: anyone may call it)."""
    rule = request.url_rule
    app = cast(OpenAPI, current_app)
    path_item = app.paths.get(parse_rule(rule.rule)) if rule is not None else None
    operation = getattr(path_item, request.method.lower(), None)
    if operation is None:
        return None
    roles: list[str] | None = (operation.model_extra or {}).get(ROLES_EXTENSION)
    return roles
