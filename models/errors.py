"""Domain errors. Each has a stable snake_case code; the API maps codes to HTTP statuses."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"
    message = "The request could not be completed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class Unauthorized(DomainError):
    code = "unauthorized"
    message = "A valid bearer token is required."


class Forbidden(DomainError):
    code = "forbidden"
    message = "You are not allowed to do this."


class NotFound(DomainError):
    code = "not_found"
    message = "Not found."


class Conflict(DomainError):
    code = "conflict"
    message = "This conflicts with the current state."


class JobNotAvailable(DomainError):
    code = "job_not_available"
    message = "This job is no longer available."


class RateLimited(DomainError):
    code = "rate_limited"
    message = "Too many attempts; try again in a minute."


class ServiceUnavailable(DomainError):
    code = "service_unavailable"
    message = "A backing service is unavailable; try again shortly."


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The contract's error object: REST answers it as the body, the gateway inside an
    acknowledgement (`{"ok": false, "error": …}`), the HTTP server for what it refuses."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}
