"""Reading a request's body: the raw bytes within the size limit, and the JSON object in
them, for flask-openapi3 to validate against each view's pydantic models (api.openapi)."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Request, Response, g, request
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.errors import MalformedRequest, RequestInvalid, error_response
from models.schemas import field_reasons

M = TypeVar("M", bound=BaseModel)


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
            raise RequestInvalid({"body": "not valid JSON"}) from exc
        if not isinstance(document, dict):
            raise RequestInvalid({"body": "must be a JSON object"})
        return document


def validated_body(model: type[M]) -> M:
    """The body as `model`, as flask-openapi3 validates a view's `body` (for the throttle,
    which decides before the view); RequestInvalid or ValidationError when it is not."""
    return model.model_validate(request.get_json())


def validation_failed(exc: ValidationError) -> Response:
    """flask-openapi3's answer to a request its models refuse: the contract's 422."""
    return error_response("validation_error", "The request is not valid.", field_reasons(exc))
