"""Request parsing: every body, query and shaped header goes through a pydantic model or
type, strictly."""

from __future__ import annotations

from typing import TypeVar

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.errors import MalformedRequest, RequestInvalid
from api.schemas import HEADERS
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


def validated_body(model: type[M]) -> M:
    """The JSON body parsed into `model`. Malformed JSON, a non-object, unknown or missing
    fields and wrong types are all 422s that name the field; nothing is coerced."""
    raw = request_body()
    if not raw.strip():
        raise RequestInvalid({"body": "a JSON object is required"})
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestInvalid(field_reasons(exc)) from exc


def validated_query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise RequestInvalid(field_reasons(exc)) from exc


def optional_body(model: type[M]) -> M:
    """Like `validated_body`, but an empty body stands for `{}` (every field optional)."""
    if not request_body().strip():
        return model()
    return validated_body(model)


def validated_header(name: str) -> str | None:
    """The request header `name` checked against its type in api.schemas.HEADERS (the one
    the OpenAPI document shows); None when the request has no such header."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return HEADERS[name].validate_python(value)
    except ValidationError as exc:
        raise RequestInvalid({name: next(iter(field_reasons(exc).values()))}) from exc
