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
    """No bearer token, or one that is forged, expired or for a deleted user (401)."""

    code = "unauthorized"
    message = "A valid bearer token is required."


class Forbidden(DomainError):
    """Signed in, but not allowed: the wrong role, or not the job's own driver (403)."""

    code = "forbidden"
    message = "You are not allowed to do this."


class NotFound(DomainError):
    """No such thing, or one the caller may not see: the answer never tells which (404)."""

    code = "not_found"
    message = "Not found."


class Conflict(DomainError):
    """The state forbids it: a duplicate email, a driver already on a job, a step from the
    wrong status (409)."""

    code = "conflict"
    message = "This conflicts with the current state."


class JobNotAvailable(DomainError):
    """Accepting a job someone else took first, or that expired or was cancelled (409)."""

    code = "job_not_available"
    message = "This job is no longer available."


class RateLimited(DomainError):
    """Too many sign-in attempts; the answer says when to retry (429)."""

    code = "rate_limited"
    message = "Too many attempts; try again in a minute."


class ServiceUnavailable(DomainError):
    """PostgreSQL or Redis did not answer; nothing was changed and a retry is safe (503)."""

    code = "service_unavailable"
    message = "A backing service is unavailable; try again shortly."


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The contract's error object: REST answers it as the body, the gateway inside an
    acknowledgement (`{"ok": false, "error": …}`), the HTTP server for what it refuses."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}
