"""Bad input on every endpoint: the contract's error body, the right status, nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from models.db import engine, redis_connection
from settings import settings
from tests.factories import Account, Factory

TABLES = ("users", "driver_profiles", "device_tokens", "jobs", "offers")
HEX_TOKEN = "ab" * 32
GOOD = {
    "register": {
        "role": "driver",
        "email": "new@example.com",
        "password": "long enough",
        "name": "N",
    },
    "login": {"email": "new@example.com", "password": "long enough"},
    "device": {"token": HEX_TOKEN, "platform": "ios", "environment": "production"},
    "availability": {"online": True},
    "location": {"lat": 38.7, "lng": -9.1},
    "job": {"pickup": {"lat": 38.7, "lng": -9.1}},
}
ENDPOINTS = {
    "register": ("POST", "/api/v1/auth/register", None),
    "login": ("POST", "/api/v1/auth/login", None),
    "device": ("POST", "/api/v1/devices", "customer"),
    "availability": ("PUT", "/api/v1/drivers/me/availability", "driver"),
    "location": ("PUT", "/api/v1/drivers/me/location", "driver"),
    "job": ("POST", "/api/v1/jobs", "customer"),
}


def _counts() -> dict[str, int]:
    with engine().connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def _positions() -> int:
    return int(redis_connection().zcard(settings.redis_key("drivers", "seen")))


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`base` with the dotted `path` set to `value` (or removed, for the `...` sentinel)."""
    body = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body


def _bad_bodies() -> list[tuple[str, Any, str]]:
    """(endpoint, raw body or JSON value, field expected in `fields`)."""
    cases: list[tuple[str, Any, str]] = []
    for name, good in GOOD.items():
        cases += [
            (name, b"{not json", "body"),
            (name, b"", "body"),
            (name, [good], "body"),
            (name, "a string", "body"),
            (name, {**good, "extra": 1}, "extra"),
        ]
        for field in good:
            cases.append((name, _with(good, field, ...), field))
    cases += [
        ("register", _with(GOOD["register"], "role", "admin"), "role"),
        ("register", _with(GOOD["register"], "email", "not-an-email"), "email"),
        ("register", _with(GOOD["register"], "password", "short"), "password"),
        ("register", _with(GOOD["register"], "name", 5), "name"),
        ("login", _with(GOOD["login"], "password", None), "password"),
        ("device", _with(GOOD["device"], "token", "zz" * 32), "token"),
        ("device", _with(GOOD["device"], "token", "abc"), "token"),
        ("device", _with(GOOD["device"], "platform", "android"), "platform"),
        ("device", _with(GOOD["device"], "environment", "staging"), "environment"),
        ("availability", {"online": "yes"}, "online"),
        ("availability", {"online": 1}, "online"),
        ("location", {"lat": 91, "lng": 0}, "lat"),
        ("location", {"lat": -91, "lng": 0}, "lat"),
        ("location", {"lat": 0, "lng": -181}, "lng"),
        ("location", {"lat": 0, "lng": 181}, "lng"),
        ("location", {"lat": "38.7", "lng": 0}, "lat"),
        ("location", {"lat": True, "lng": 0}, "lat"),
        ("location", b'{"lat": NaN, "lng": 0}', "lat"),
        ("location", b'{"lat": 0, "lng": Infinity}', "lng"),
        ("job", _with(GOOD["job"], "pickup.lat", 91), "pickup.lat"),
        ("job", _with(GOOD["job"], "pickup.lng", "x"), "pickup.lng"),
        ("job", _with(GOOD["job"], "pickup.extra", 1), "pickup.extra"),
        ("job", {**GOOD["job"], "dropoff": {"lat": 0}}, "dropoff.lng"),
        ("job", {**GOOD["job"], "notes": 7}, "notes"),
        ("job", {**GOOD["job"], "notes": "x" * 2001}, "notes"),
    ]
    return cases


@pytest.fixture
def callers(factory: Factory) -> dict[str, Account]:
    return {"customer": factory.customer(), "driver": factory.driver(at=None)}


def _send(
    client: FlaskClient, name: str, body: Any, callers: dict[str, Account], **headers: str
) -> TestResponse:
    method, path, role = ENDPOINTS[name]
    if role is not None:
        headers = {**callers[role].headers, **headers}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.open(
        path, method=method, data=raw, headers=headers, content_type="application/json"
    )


def _assert_error(answer: TestResponse, status: int, code: str, field: str | None = None) -> None:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.is_json
    body = answer.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    if field is None:
        assert set(error) == {"code", "message"}
    else:
        assert set(error) == {"code", "message", "fields"}
        assert field in error["fields"], error["fields"]


@pytest.mark.parametrize(("name", "body", "field"), _bad_bodies())
def test_bad_bodies_are_422_and_write_nothing(client, callers, name, body, field) -> None:
    before, positions = _counts(), _positions()
    _assert_error(_send(client, name, body, callers), 422, "validation_error", field)
    assert _counts() == before
    assert _positions() == positions


@pytest.mark.parametrize("name", list(GOOD))
def test_a_two_megabyte_body_is_413_and_writes_nothing(client, callers, name) -> None:
    before = _counts()
    body = {**GOOD[name], "padding": "x" * (2 * 1024 * 1024)}
    _assert_error(_send(client, name, body, callers), 413, "payload_too_large")
    assert _counts() == before


@pytest.mark.parametrize("key", ["", " ", "k" * 256, "tab\there"])
def test_a_bad_idempotency_key_is_422_and_writes_nothing(client, callers, key) -> None:
    before = _counts()
    answer = _send(client, "job", GOOD["job"], callers, **{"Idempotency-Key": key})
    _assert_error(answer, 422, "validation_error", "Idempotency-Key")
    assert _counts() == before


@pytest.mark.parametrize("status", ["done", "PENDING", "1"])
def test_an_unknown_status_filter_is_422(client, callers, status) -> None:
    answer = client.get(f"/api/v1/jobs?status={status}", headers=callers["customer"].headers)
    _assert_error(answer, 422, "validation_error", "status")


@pytest.mark.parametrize("name", [n for n, (_, _, role) in ENDPOINTS.items() if role])
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer forged.token.sig", "Basic dXNlcjpwYXNz"]
)
def test_without_a_valid_token_is_401(client, callers, name, authorization) -> None:
    method, path, _ = ENDPOINTS[name]
    headers = {} if authorization is None else {"Authorization": authorization}
    before = _counts()
    answer = client.open(path, method=method, json=GOOD[name], headers=headers)
    _assert_error(answer, 401, "unauthorized")
    assert _counts() == before


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("customer", "PUT", "/api/v1/drivers/me/availability"),
        ("customer", "PUT", "/api/v1/drivers/me/location"),
        ("customer", "GET", "/api/v1/drivers/me/offers"),
        ("driver", "POST", "/api/v1/jobs"),
        ("driver", "GET", "/api/v1/jobs"),
        ("customer", "POST", "/api/v1/jobs/1/accept"),
        ("driver", "POST", "/api/v1/jobs/1/cancel"),
    ],
)
def test_the_wrong_role_is_403(client, callers, role, method, path) -> None:
    body = {"online": True} if "availability" in path else GOOD["location"]
    answer = client.open(path, method=method, json=body, headers=callers[role].headers)
    _assert_error(answer, 403, "forbidden")


def test_someone_elses_job_and_device_are_404(client, factory: Factory) -> None:
    owner, stranger = factory.customer(), factory.customer()
    driver = factory.driver()
    job = factory.job(owner)
    token = factory.device(owner)
    for who in (stranger, driver):
        _assert_error(
            client.get(f"/api/v1/jobs/{job['id']}", headers=who.headers), 404, "not_found"
        )
    _assert_error(
        client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=stranger.headers), 404, "not_found"
    )
    _assert_error(
        client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers), 404, "not_found"
    )  # never offered to this driver
    _assert_error(
        client.delete(f"/api/v1/devices/{token}", headers=stranger.headers), 404, "not_found"
    )
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=owner.headers).status_code == 200


def test_unknown_routes_and_methods_answer_json(client, callers) -> None:
    _assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    _assert_error(
        client.get("/api/v1/jobs/not-a-number", headers=callers["customer"].headers),
        404,
        "not_found",
    )
    _assert_error(client.delete("/api/v1/jobs"), 405, "method_not_allowed")
