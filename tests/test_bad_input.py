"""Bad input on every endpoint that takes a body or a query: the contract's error body with
the right status, the fields named, and nothing written anywhere. Unknown routes and wrong
methods answer JSON too, never an HTML page."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.contract import API, assert_error
from tests.factories import Account, Factory
from tests.stored import stored_state

GOOD: dict[str, dict[str, Any]] = {
    "register": {
        "role": "driver",
        "email": "nia@example.com",
        "password": "long enough",
        "name": "N",
    },
    "login": {"email": "nia@example.com", "password": "long enough"},
    "devices": {"token": "ab" * 32, "platform": "ios", "environment": "production"},
    "availability": {"online": False},
    "location": {"lat": 38.7, "lng": -9.1},
    "jobs": {
        "pickup": {"lat": 38.7, "lng": -9.1, "address": "Rua Augusta 1"},
        "dropoff": {"lat": 38.75, "lng": -9.15},
        "notes": "ring twice",
    },
    "cancel": {"reason": "found a lift"},
}
# The status each good body above is answered with (the contract's success answers).
ACCEPTED_WITH = {
    "register": 201,
    "devices": 201,
    "availability": 200,
    "location": 204,
    "jobs": 201,
    "cancel": 200,
}
REQUIRED = {
    "register": ["role", "email", "password", "name"],
    "login": ["email", "password"],
    "devices": ["token", "platform", "environment"],
    "availability": ["online"],
    "location": ["lat", "lng"],
    "jobs": ["pickup", "pickup.lat", "pickup.lng"],
    "cancel": [],
}
OPTIONAL_BODIES = {"cancel"}  # no body, or an empty one, stands for {}
ENDPOINTS = {  # name: (method, path, role of the caller or None)
    "register": ("POST", "/auth/register", None),
    "login": ("POST", "/auth/login", None),
    "devices": ("POST", "/devices", "customer"),
    "availability": ("PUT", "/drivers/me/availability", "driver"),
    "location": ("PUT", "/drivers/me/location", "driver"),
    "jobs": ("POST", "/jobs", "customer"),
    "cancel": ("POST", "/jobs/{job}/cancel", "customer"),
}
# The job steps with no body, and the other new endpoints that name a job.
JOB_ENDPOINTS = {
    "accept": ("POST", "/jobs/{job}/accept", "driver"),
    "arrive": ("POST", "/jobs/{job}/arrive", "driver"),
    "start": ("POST", "/jobs/{job}/start", "driver"),
    "complete": ("POST", "/jobs/{job}/complete", "driver"),
    "release": ("POST", "/jobs/{job}/release", "driver"),
    "decline": ("POST", "/jobs/{job}/decline", "driver"),
    "cancel": ENDPOINTS["cancel"],
    "events": ("GET", "/jobs/{job}/events", "customer"),
    "read": ("GET", "/jobs/{job}", "customer"),
}
MISSING = object()
TWO_MB = 2 * 1024 * 1024


def _with(name: str, path: str, value: Any) -> dict[str, Any]:
    """The endpoint's good body with the dotted `path` set to `value` (MISSING: removed)."""
    body = json.loads(json.dumps(GOOD[name]))
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is MISSING:
        del target[last]
    else:
        target[last] = value
    return body


def _raw(name: str, path: str, literal: str) -> bytes:
    """The good body with `path` set to a JSON-ish literal that json.dumps will not write."""
    return json.dumps(_with(name, path, "@@")).replace('"@@"', literal).encode()


def _generic(name: str) -> list[Any]:
    """What every body endpoint must refuse: (endpoint, body, fields named)."""
    good = json.dumps(GOOD[name])
    optional = name in OPTIONAL_BODIES
    cases = [
        pytest.param(name, b'{"lat": ', "body", id=f"{name}-truncated JSON"),
        pytest.param(name, good[:-1].encode() + b",}", "body", id=f"{name}-trailing comma"),
        pytest.param(name, good.replace('"', "'").encode(), "body", id=f"{name}-single quotes"),
        pytest.param(name, b'{"x": "\xff\xfe"}', "body", id=f"{name}-not UTF-8"),
        pytest.param(name, [GOOD[name]], "body", id=f"{name}-JSON array"),
        pytest.param(name, "a string", "body", id=f"{name}-JSON string"),
        pytest.param(name, 42, "body", id=f"{name}-JSON number"),
        pytest.param(name, None, "body", id=f"{name}-JSON null"),
        pytest.param(name, {**GOOD[name], "admin": True}, "admin", id=f"{name}-unknown field"),
    ]
    if not optional:
        cases += [
            pytest.param(name, b"", "body", id=f"{name}-empty body"),
            pytest.param(name, b" \r\n\t", "body", id=f"{name}-blank body"),
            pytest.param(name, {}, {f for f in REQUIRED[name] if "." not in f}, id=f"{name}-{{}}"),
        ]
    for field in REQUIRED[name]:
        cases.append(
            pytest.param(name, _with(name, field, MISSING), field, id=f"{name}-no {field}")
        )
        cases.append(pytest.param(name, _with(name, field, None), field, id=f"{name}-null {field}"))
    return cases


def _field(name: str, path: str, value: Any, why: str) -> Any:
    """One field of an otherwise good body set to a bad value; bytes are raw JSON literals."""
    body = (
        _raw(name, path, value.decode()) if isinstance(value, bytes) else _with(name, path, value)
    )
    return pytest.param(name, body, path, id=f"{name}-{path} {why}")


SPECIFIC = [
    _field("register", "role", "admin", "unknown enum value"),
    _field("register", "role", "Customer", "enum value in another case"),
    _field("register", "role", "", "empty"),
    _field("register", "role", 1, "number for string"),
    _field("register", "email", "not-an-email", "not an email"),
    _field("register", "email", "a b@example.com", "with a space"),
    _field("register", "email", "x" * 250 + "@example.com", "too long"),
    _field("register", "email", ["nia@example.com"], "array for string"),
    _field("register", "email", "nia\x00@example.com", "with NUL"),
    _field("register", "password", "7 chars", "too short"),
    _field("register", "password", "x" * 129, "too long"),
    _field("register", "password", 12345678, "number for string"),
    _field("register", "name", "", "empty"),
    _field("register", "name", "   ", "blank"),
    _field("register", "name", "x" * 121, "too long"),
    _field("register", "name", True, "bool for string"),
    _field("register", "name", {"first": "N"}, "object for string"),
    _field("register", "name", "N\x00", "with NUL"),
    _field("login", "email", "nope", "not an email"),
    _field("login", "email", 5, "number for string"),
    _field("login", "email", "nia\x00@example.com", "with NUL"),
    _field("login", "password", "", "empty"),
    _field("login", "password", "x" * 129, "too long"),
    _field("login", "password", True, "bool for string"),
    _field("devices", "token", "zz" * 32, "not hex"),
    _field("devices", "token", "ab" * 31 + "a", "odd length"),
    _field("devices", "token", "ab" * 7, "too short"),
    _field("devices", "token", "ab" * 101, "too long"),
    _field("devices", "token", "ab " * 32, "with spaces"),
    _field("devices", "token", "0x" + "ab" * 31, "with 0x"),
    _field("devices", "token", 1234, "number for string"),
    _field("devices", "platform", "android", "unknown enum value"),
    _field("devices", "platform", "iOS", "enum value in another case"),
    _field("devices", "environment", "development", "unknown enum value"),
    _field("devices", "environment", "Production", "enum value in another case"),
    _field("devices", "environment", True, "bool for string"),
    _field("availability", "online", "true", "string for bool"),
    _field("availability", "online", 1, "number for bool"),
    _field("availability", "online", 0, "zero for bool"),
    _field("availability", "online", [], "array for bool"),
    _field("location", "lat", 91, "91"),
    _field("location", "lat", -91, "-91"),
    _field("location", "lat", 90.000001, "just over 90"),
    _field("location", "lng", 181, "181"),
    _field("location", "lng", -181, "-181"),
    _field("location", "lng", -180.5, "just under -180"),
    _field("location", "lat", "38.7", "string for number"),
    _field("location", "lat", True, "bool for number"),
    _field("location", "lng", [-9.1], "array for number"),
    _field("location", "lat", b"NaN", "NaN"),
    _field("location", "lng", b"Infinity", "Infinity"),
    _field("location", "lat", b"-Infinity", "-Infinity"),
    _field("location", "lat", b"1e400", "overflowing"),
    _field("location", "lng", b"1" + b"0" * 400, "huge integer"),
    _field("jobs", "pickup", "Rua Augusta 1", "string for place"),
    _field("jobs", "pickup", [38.7, -9.1], "array for place"),
    _field("jobs", "pickup.lat", 91, "91"),
    _field("jobs", "pickup.lat", -91, "-91"),
    _field("jobs", "pickup.lng", 181, "181"),
    _field("jobs", "pickup.lng", -181, "-181"),
    _field("jobs", "pickup.lat", "38.7", "string for number"),
    _field("jobs", "pickup.lng", False, "bool for number"),
    _field("jobs", "pickup.lat", b"NaN", "NaN"),
    _field("jobs", "pickup.lng", b"Infinity", "Infinity"),
    _field("jobs", "pickup.address", 5, "number for string"),
    _field("jobs", "pickup.address", "x" * 501, "too long"),
    _field("jobs", "pickup.address", "Rua\x00", "with NUL"),
    _field("jobs", "pickup.floor", 3, "unknown field"),
    _field("jobs", "dropoff", "home", "string for place"),
    _field("jobs", "dropoff.lng", MISSING, "missing"),
    _field("jobs", "dropoff.lat", 100, "100"),
    _field("jobs", "dropoff.lng", b"-Infinity", "-Infinity"),
    _field("jobs", "notes", 7, "number for string"),
    _field("jobs", "notes", True, "bool for string"),
    _field("jobs", "notes", "x" * 2001, "too long"),
    _field("jobs", "notes", "ring\x00twice", "with NUL"),
    _field("cancel", "reason", 5, "number for string"),
    _field("cancel", "reason", False, "bool for string"),
    _field("cancel", "reason", ["late"], "array for string"),
    _field("cancel", "reason", {"text": "late"}, "object for string"),
    _field("cancel", "reason", "x" * 501, "too long"),
    _field("cancel", "reason", "late\x00", "with NUL"),
]
BAD_BODIES = [case for name in GOOD for case in _generic(name)] + SPECIFIC


class Caller:
    """The account to call an endpoint as, and the pending job it names (offered to the
    driver): made on first use, so their rows exist before the test takes its snapshot of
    what is stored."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.made: dict[str, Account] = {}
        self.job_id: int | None = None

    def account(self, role: str) -> Account:
        if role not in self.made:
            maker = self.factory.driver if role == "driver" else self.factory.customer
            self.made[role] = maker()
        return self.made[role]

    def __call__(self, name: str) -> dict[str, str]:
        """The headers to call the endpoint with (its job made too, if it names one)."""
        self.path(name)
        role = {**ENDPOINTS, **JOB_ENDPOINTS}[name][2]
        return {} if role is None else self.account(role).headers

    def path(self, name: str) -> str:
        """The endpoint's path, naming the caller's job if it takes one."""
        path = {**ENDPOINTS, **JOB_ENDPOINTS}[name][1]
        if "{job}" in path and self.job_id is None:
            driver = self.account("driver")
            self.job_id = self.factory.job(self.account("customer"))["id"]
            assert self.factory.offer(self.job_id) == [driver.id]
        return path.format(job=self.job_id)


@pytest.fixture
def caller(factory: Factory) -> Caller:
    return Caller(factory)


def _send(
    client: FlaskClient,
    caller: Caller,
    name: str,
    body: Any,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> TestResponse:
    """`body` (bytes as they are, anything else as JSON) to the endpoint, as its caller."""
    method, path = ENDPOINTS[name][0], caller.path(name)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.open(
        API + path,
        method=method,
        data=raw,
        headers=caller(name) if headers is None else headers,
        content_type=content_type,
    )


@pytest.mark.parametrize(("name", "body", "fields"), BAD_BODIES)
def test_a_bad_body_is_422_naming_the_field_and_writes_nothing(
    client: FlaskClient, caller: Caller, name: str, body: Any, fields: str | set[str]
) -> None:
    caller(name)
    before = stored_state()
    assert_error(_send(client, caller, name, body), 422, "validation_error", fields)
    assert stored_state() == before


@pytest.mark.parametrize("name", list(GOOD))
def test_the_good_bodies_above_are_good(client: FlaskClient, caller: Caller, name: str) -> None:
    """Control: each bad body above differs from one that is accepted."""
    answer = _send(client, caller, name, GOOD[name])
    if name == "login":
        assert_error(answer, 401, "unauthorized")  # well-formed; nobody has that email
    else:
        assert answer.status_code == ACCEPTED_WITH[name], answer.get_json()


@pytest.mark.parametrize("name", list(GOOD))
def test_a_form_encoded_body_is_422(client: FlaskClient, caller: Caller, name: str) -> None:
    caller(name)
    before = stored_state()
    form = "&".join(f"{key}={value}" for key, value in GOOD[name].items()).encode()
    answer = _send(client, caller, name, form, content_type="application/x-www-form-urlencoded")
    assert_error(answer, 422, "validation_error", "body")
    assert stored_state() == before


@pytest.mark.parametrize("json_body", [True, False], ids=["JSON", "not JSON"])
@pytest.mark.parametrize("name", list(GOOD))
def test_a_two_megabyte_body_is_413_and_writes_nothing(
    client: FlaskClient, caller: Caller, name: str, json_body: bool
) -> None:
    caller(name)
    before = stored_state()
    body = {**GOOD[name], "padding": "x" * TWO_MB} if json_body else b"x" * TWO_MB
    assert_error(_send(client, caller, name, body), 413, "payload_too_large")
    assert stored_state() == before


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "", "   ", "tab\there", "del\x7f"],
    ids=["256 chars", "empty", "blank", "tab", "DEL"],
)
def test_a_bad_idempotency_key_is_422_and_writes_nothing(
    client: FlaskClient, caller: Caller, key: str
) -> None:
    headers = {**caller("jobs"), "Idempotency-Key": key}
    before = stored_state()
    assert_error(
        _send(client, caller, "jobs", GOOD["jobs"], headers),
        422,
        "validation_error",
        "Idempotency-Key",
    )
    assert stored_state() == before


def test_an_idempotency_key_of_255_characters_is_fine(client: FlaskClient, caller: Caller) -> None:
    headers = {**caller("jobs"), "Idempotency-Key": "k" * 255}
    assert _send(client, caller, "jobs", GOOD["jobs"], headers).status_code == 201
    assert _send(client, caller, "jobs", GOOD["jobs"], headers).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "status=PENDING",
        "status=",
        "status=pending,accepted",
        "status=%00",
        "status=1",
    ],
)
@pytest.mark.parametrize(("path", "role"), [("/jobs", "customer"), ("/drivers/me/jobs", "driver")])
def test_an_unknown_status_filter_is_422(
    client: FlaskClient, caller: Caller, path: str, role: str, query: str
) -> None:
    headers = caller.account(role).headers
    before = stored_state()
    answer = client.get(f"{API}{path}?{query}", headers=headers)
    assert_error(answer, 422, "validation_error", "status")
    assert stored_state() == before


@pytest.mark.parametrize(
    "body",
    [None, b"", b" \r\n\t", {}, {"reason": None}],
    ids=["no body", "empty body", "blank body", "{}", "null field"],
)
@pytest.mark.parametrize("name", sorted(OPTIONAL_BODIES))
def test_an_optional_body_may_be_left_out(
    client: FlaskClient, caller: Caller, name: str, body: Any
) -> None:
    """Control for the bad bodies above: an optional body may be missing or empty."""
    method, path = ENDPOINTS[name][0], caller.path(name)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.open(
        API + path, method=method, data=data, headers=caller(name), content_type="application/json"
    )
    assert answer.status_code == 200, answer.get_json()


# --- job ids that name no job ------------------------------------------------------------

# A job that never existed; past PostgreSQL's integer; past a 64-bit integer; far past it.
ABSENT_JOB_IDS = ["1000", str(2**31), str(2**63), "9" * 30]
# What each endpoint answers its caller for the caller's own pending job, offered to the
# driver: the endpoint is reached, so a 404 below is about the id alone.
FOR_THE_CALLERS_JOB = {
    "accept": 200,
    "arrive": 403,
    "start": 403,
    "complete": 403,
    "release": 403,
    "decline": 204,
    "cancel": 200,
    "events": 200,
    "read": 200,
}


@pytest.mark.parametrize("job_id", ABSENT_JOB_IDS, ids=["1000", "2^31", "2^63", "30 digits"])
@pytest.mark.parametrize("name", list(JOB_ENDPOINTS))
def test_a_job_id_that_names_no_job_is_404_and_writes_nothing(
    client: FlaskClient, caller: Caller, name: str, job_id: str
) -> None:
    caller(name)  # a job exists, only not this one
    method, path, _ = JOB_ENDPOINTS[name]
    before = stored_state()
    answer = client.open(API + path.format(job=job_id), method=method, headers=caller(name))
    assert_error(answer, 404, "not_found")
    assert stored_state() == before


@pytest.mark.parametrize("name", list(JOB_ENDPOINTS))
def test_the_job_endpoints_above_reach_the_callers_own_job(
    client: FlaskClient, caller: Caller, name: str
) -> None:
    answer = client.open(
        API + caller.path(name), method=JOB_ENDPOINTS[name][0], headers=caller(name)
    )
    assert answer.status_code == FOR_THE_CALLERS_JOB[name], answer.get_json()


# --- routes and methods that do not exist ------------------------------------------------


def _assert_not_html(answer: TestResponse) -> None:
    text = answer.get_data(as_text=True).lower()
    assert "<html" not in text and "<!doctype" not in text and "traceback" not in text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/favicon.ico"),
        ("GET", "/static/app.js"),
        ("GET", "/api"),
        ("GET", "/api/v1"),
        ("GET", "/api/v1/"),
        ("GET", "/api/v2/jobs"),
        ("GET", "/api/v1/nothing-here"),
        ("GET", "/api/v1/jobs/"),
        ("GET", "/api/v1/jobs/abc"),
        ("GET", "/api/v1/jobs/-1"),
        ("GET", "/api/v1/jobs/1.5"),
        ("GET", "/api/v1/jobs/1/driver"),
        ("POST", "/api/v1/jobs/abc/accept"),
        ("POST", "/api/v1/jobs/abc/arrive"),
        ("POST", "/api/v1/jobs/-1/start"),
        ("POST", "/api/v1/jobs/1.5/complete"),
        ("POST", "/api/v1/jobs/1e3/release"),
        ("POST", "/api/v1/jobs/0x1/decline"),
        ("POST", "/api/v1/jobs/%20/cancel"),
        ("POST", "/api/v1/jobs//arrive"),
        ("POST", "/api/v1/jobs/1/depart"),
        ("GET", "/api/v1/jobs/abc/events"),
        ("GET", "/api/v1/jobs/1/events/1"),
        ("GET", "/api/v1/drivers/me/jobs/1"),
        ("GET", "/api/v1/drivers/7"),
        ("GET", "/api/v1/drivers/7/jobs"),
        ("DELETE", "/api/v1/devices/ab/cd"),
        ("GET", "/api/v1/drivers/7/offers"),
        ("POST", "/api/v1/auth/logout"),
    ],
)
def test_an_unknown_route_is_a_json_404(client: FlaskClient, method: str, path: str) -> None:
    answer = client.open(path, method=method)
    assert_error(answer, 404, "not_found")
    _assert_not_html(answer)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/register"),
        ("PUT", "/auth/register"),
        ("GET", "/auth/login"),
        ("GET", "/devices"),
        ("DELETE", "/devices"),
        ("POST", "/devices/" + "ab" * 32),
        ("GET", "/drivers/me/availability"),
        ("POST", "/drivers/me/location"),
        ("PATCH", "/drivers/me/location"),
        ("POST", "/drivers/me/offers"),
        ("DELETE", "/jobs"),
        ("PUT", "/jobs/1"),
        ("DELETE", "/jobs/1"),
        ("GET", "/jobs/1/accept"),
        ("PUT", "/jobs/1/cancel"),
        ("GET", "/jobs/1/arrive"),
        ("GET", "/jobs/1/start"),
        ("PUT", "/jobs/1/complete"),
        ("DELETE", "/jobs/1/release"),
        ("GET", "/jobs/1/decline"),
        ("POST", "/jobs/1/events"),
        ("DELETE", "/jobs/1/events"),
        ("POST", "/drivers/me"),
        ("PUT", "/drivers/me"),
        ("DELETE", "/drivers/me"),
        ("POST", "/drivers/me/jobs"),
        ("POST", "/health"),
        ("POST", "/openapi.json"),
        ("DELETE", "/docs"),
    ],
)
def test_a_wrong_method_is_a_json_405(client: FlaskClient, method: str, path: str) -> None:
    answer = client.open(API + path, method=method, json={})
    assert_error(answer, 405, "method_not_allowed")
    _assert_not_html(answer)
