"""What the contract's answers look like: the API's root, its time format, its Job, its error
body. Tests check answers with these; the stores are checked with tests/stored.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from werkzeug.test import TestResponse

API = "/api/v1"
UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# The contract's Job fields, in the order the API answers them.
JOB_FIELDS = (
    "id",
    "status",
    "pickup",
    "dropoff",
    "notes",
    "customer",
    "driver",
    "created_at",
    "accepted_at",
    "expires_at",
    "arrived_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "cancelled_by",
    "driver_location",
)
OFFER_TTL = timedelta(minutes=10)  # the contract's default


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_time(value: str) -> datetime:
    """A contract time: UTC with milliseconds and a `Z`."""
    assert UTC_Z.match(value), value
    return datetime.fromisoformat(value)


def assert_job(job: dict[str, Any], **expected: Any) -> None:
    """The contract's Job: its keys in order, UTC `Z` times, and the `expected` values."""
    assert list(job) == list(JOB_FIELDS), job
    assert isinstance(job["id"], int)
    created, expires = parse_time(job["created_at"]), parse_time(job["expires_at"])
    assert expires - created == OFFER_TTL
    if job["accepted_at"] is not None:
        assert created <= parse_time(job["accepted_at"]) <= expires
    assert {key: job[key] for key in expected} == expected


def assert_error(
    answer: TestResponse, status: int, code: str, fields: str | set[str] | None = None
) -> dict[str, Any]:
    """The contract's error body and nothing else; `fields` (exactly these names, each with a
    reason) only on validation errors."""
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    body = answer.get_json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    if fields is None:
        assert list(error) == ["code", "message"], error
    else:
        expected = {fields} if isinstance(fields, str) else fields
        assert list(error) == ["code", "message", "fields"], error
        assert set(error["fields"]) == expected, error["fields"]
        assert all(isinstance(why, str) and why for why in error["fields"].values())
    return error
