"""The one error shape, built by `error_response` for every error the API answers."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from models.errors import DomainError, error_body

log = logging.getLogger(__name__)

STATUS_BY_CODE = {
    "bad_request": 400,
    "validation_error": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "job_not_available": 409,
    "conflict": 409,
    "payload_too_large": 413,
    "uri_too_long": 414,
    "unsupported_media_type": 415,
    "expectation_failed": 417,
    "rate_limited": 429,
    "headers_too_large": 431,
    "internal_error": 500,
    "not_implemented": 501,
    "service_unavailable": 503,
}

_CODE_BY_HTTP_STATUS = {status: code for code, status in STATUS_BY_CODE.items()}
# A 400 from inside the app (werkzeug's BadRequest: a body it could not parse) is about the
# request's content, hence a validation error; `bad_request` is for what the HTTP server
# cannot parse at all (api.server).
_CODE_BY_HTTP_STATUS[400] = "validation_error"


class RequestInvalid(Exception):
    """A request that fails validation: becomes a 422 with per-field reasons."""

    def __init__(self, fields: dict[str, str], message: str = "The request is not valid.") -> None:
        super().__init__(message)
        self.fields = fields
        self.message = message


class MalformedRequest(BadRequest):
    """A request the HTTP server could not read (a malformed chunk of its body): a 400
    `bad_request`, as the server itself answers what it cannot parse before the app
    (api.server), not the 422 of other BadRequests (content the app could not parse)."""


def error_response(code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    response = jsonify(error_body(code, message, fields))
    response.status_code = STATUS_BY_CODE[code]
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError) -> Response:
        return error_response(exc.code, exc.message)

    @app.errorhandler(RequestInvalid)
    def _request_invalid(exc: RequestInvalid) -> Response:
        return error_response("validation_error", exc.message, exc.fields)

    @app.errorhandler(MalformedRequest)
    def _malformed_request(exc: MalformedRequest) -> Response:
        return error_response("bad_request", "The request is not valid HTTP.")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return error_response("payload_too_large", "The request body is too large.")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = _CODE_BY_HTTP_STATUS.get(exc.code or 500, "internal_error")
        message = {
            "not_found": "No such resource.",
            "method_not_allowed": "This method is not allowed here.",
        }.get(code, exc.description or "The request could not be completed.")
        if code == "validation_error":
            answer = error_response(
                code, "The request is not valid.", {"body": exc.description or ""}
            )
        else:
            answer = error_response(code, message)
        # What the exception says beside its HTML page: `Allow` on a 405 (RFC 9110 requires
        # it), `Retry-After` on a 429, `WWW-Authenticate` on a 401.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                answer.headers[name] = value
        return answer

    @app.errorhandler(DatabaseUnavailable)
    @app.errorhandler(RedisError)
    def _backing_service(exc: Exception) -> Response:
        log.error("backing service unavailable: %s", exc)
        return error_response("service_unavailable", "A backing service is unavailable; retry.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response("internal_error", "Something went wrong on our side.")
