"""Register, login, throttling, and who may call what: 401 without a valid token, 403 for the
wrong role."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select
from werkzeug.test import TestResponse

from models.accounts import DriverProfile, User, issue_token
from models.db import session_scope
from settings import settings
from tests.contract import API, assert_error, bearer
from tests.factories import ORIGIN, PASSWORD, Account, Factory
from tests.stored import db_rows, stored_state

TOKEN_SALT = "dispatch.auth.v1"  # models.accounts signs tokens with it
UNAUTHORIZED = (401, "unauthorized", ["code", "message"], True)


def error_outcome(answer: TestResponse) -> tuple[Any, ...]:
    """Status, code and keys of an error answer, to check many answers in one comparison."""
    body = answer.get_json(silent=True)
    if not (isinstance(body, dict) and list(body) == ["error"]):
        return answer.status_code, answer.get_data(as_text=True)
    error = body["error"]
    return answer.status_code, error.get("code"), list(error), bool(error.get("message"))


# --- register ----------------------------------------------------------------------------


def _register(client: FlaskClient, **fields: str) -> TestResponse:
    body = {"role": "customer", "email": "ana@example.com", "password": PASSWORD, "name": "Ana"}
    return client.post(f"{API}/auth/register", json={**body, **fields})


@pytest.mark.parametrize("role", ["customer", "driver"])
def test_register_answers_201_with_the_user_and_a_working_token(
    client: FlaskClient, role: str
) -> None:
    answer = _register(client, role=role, email="  Ana.Silva@Example.COM ", name=" Ana ")
    assert answer.status_code == 201 and answer.mimetype == "application/json"
    body = answer.get_json()
    assert list(body) == ["user", "token"] and list(body["user"]) == ["id", "role", "email", "name"]
    user_id = body["user"]["id"]
    assert body["user"] == {
        "id": user_id,
        "role": role,
        "email": "ana.silva@example.com",
        "name": "Ana",
    }
    assert isinstance(user_id, int) and isinstance(body["token"], str) and body["token"]

    own = f"{API}/jobs" if role == "customer" else f"{API}/drivers/me/offers"
    assert client.get(own, headers=bearer(body["token"])).status_code == 200
    with session_scope() as session:
        user = session.get(User, user_id)
        assert user is not None
        assert (user.role, user.email, user.name) == (role, "ana.silva@example.com", "Ana")
        assert user.password_hash != PASSWORD
        profile = session.get(DriverProfile, user_id)
        if role == "driver":
            assert profile is not None and (profile.online, profile.current_job_id) == (False, None)
        else:
            assert profile is None


@pytest.mark.parametrize(
    "email", ["ana@example.com", "ANA@EXAMPLE.COM", "Ana@Example.com", "  ana@example.com "]
)
def test_register_with_an_existing_email_is_409_whatever_its_case(
    client: FlaskClient, email: str
) -> None:
    assert _register(client).status_code == 201
    before = db_rows()
    assert_error(_register(client, email=email, role="driver", name="Other"), 409, "conflict")
    assert db_rows() == before


# --- login -------------------------------------------------------------------------------


def _login(client: FlaskClient, email: str, password: str = PASSWORD) -> TestResponse:
    return client.post(f"{API}/auth/login", json={"email": email, "password": password})


@pytest.mark.parametrize("typed", ["ana@example.com", "ANA@example.com", " Ana@Example.com "])
def test_login_answers_200_with_the_user_and_a_working_token(
    client: FlaskClient, typed: str
) -> None:
    registered = _register(client).get_json()
    answer = _login(client, typed)
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    body = answer.get_json()
    assert list(body) == ["user", "token"]
    assert body["user"] == registered["user"]
    assert client.get(f"{API}/jobs", headers=bearer(body["token"])).status_code == 200


def test_login_is_401_on_a_wrong_password_and_on_an_unknown_email(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    wrong = assert_error(_login(client, customer.email, PASSWORD + "!"), 401, "unauthorized")
    unknown = assert_error(_login(client, "nobody@example.com"), 401, "unauthorized")
    assert wrong["message"] == unknown["message"]  # nothing tells which emails exist


def test_login_is_429_after_too_many_attempts(client: FlaskClient, factory: Factory) -> None:
    customer, other = factory.customer(), factory.customer()
    limit = settings.login_attempts_per_minute
    for _ in range(limit):
        assert_error(_login(client, customer.email, "wrong password"), 401, "unauthorized")
    assert_error(_login(client, customer.email), 429, "rate_limited")  # even the right one
    assert_error(_login(client, customer.email.upper()), 429, "rate_limited")
    assert _login(client, other.email).status_code == 200  # counted per email


def test_login_is_throttled_for_unknown_emails_too(client: FlaskClient) -> None:
    for _ in range(settings.login_attempts_per_minute):
        assert_error(_login(client, "ghost@example.com"), 401, "unauthorized")
    assert_error(_login(client, "ghost@example.com"), 429, "rate_limited")


# --- 401: no valid token -----------------------------------------------------------------

PROTECTED = [
    ("POST", "/devices", {"token": "ab" * 32, "platform": "ios", "environment": "sandbox"}),
    ("DELETE", "/devices/" + "ab" * 32, None),
    ("PUT", "/drivers/me/availability", {"online": True}),
    ("PUT", "/drivers/me/location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}),
    ("GET", "/drivers/me/offers", None),
    ("POST", "/jobs", {"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}}),
    ("GET", "/jobs", None),
    ("GET", "/jobs/1", None),
    ("POST", "/jobs/1/accept", None),
    ("POST", "/jobs/1/cancel", None),
]


class _PastSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - settings.auth_token_ttl_s - 60


def _signed(secret: str, uid: int, signer: type[TimestampSigner] = TimestampSigner) -> str:
    serializer = URLSafeTimedSerializer(secret, salt=TOKEN_SALT, signer=signer)
    return str(serializer.dumps({"uid": uid, "role": "customer"}))


def _tampered(token: str) -> str:
    head, signature = token.rsplit(".", 1)
    return f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


# Each builds an Authorization header (None: no header) from a real user's token.
BAD_AUTHORIZATION: dict[str, Callable[[Account], str | None]] = {
    "missing": lambda user: None,
    "empty": lambda user: "",
    "scheme only": lambda user: "Bearer",
    "scheme and space": lambda user: "Bearer   ",
    "no scheme": lambda user: user.token,
    "another scheme": lambda user: f"Token {user.token}",
    "basic auth": lambda user: "Basic dXNlcjpwYXNzd29yZA==",
    "garbage": lambda user: "Bearer not-a-token",
    "tampered signature": lambda user: f"Bearer {_tampered(user.token)}",
    "signed with another key": lambda user: f"Bearer {_signed('another key', user.id)}",
    "expired": lambda user: f"Bearer {_signed(settings.secret_key, user.id, _PastSigner)}",
    "user gone": lambda user: f"Bearer {issue_token(User(id=user.id + 1000, role='driver'))}",
}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_without_a_valid_token_every_endpoint_is_401_and_writes_nothing(
    client: FlaskClient, factory: Factory, method: str, path: str, body: Any
) -> None:
    # A caller whose real token would get past the role check, so only the token can fail.
    user = factory.driver() if "drivers" in path or "accept" in path else factory.customer()
    before = stored_state()
    outcomes = {}
    for kind, authorization in BAD_AUTHORIZATION.items():
        header = authorization(user)
        headers = {} if header is None else {"Authorization": header}
        outcomes[kind] = error_outcome(
            client.open(API + path, method=method, json=body, headers=headers)
        )
    assert outcomes == {kind: UNAUTHORIZED for kind in BAD_AUTHORIZATION}
    assert stored_state() == before


def test_the_forged_tokens_are_refused_only_for_what_they_break(
    client: FlaskClient, factory: Factory
) -> None:
    """Control for the forgeries above: signed the same way, fresh, it is accepted."""
    customer = factory.customer()
    answer = client.get(f"{API}/jobs", headers=bearer(_signed(settings.secret_key, customer.id)))
    assert (answer.status_code, answer.get_json()) == (200, {"jobs": []})


def test_a_valid_token_is_accepted_with_any_case_of_scheme(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    for scheme in ("Bearer", "bearer", "BEARER"):
        answer = client.get(f"{API}/jobs", headers={"Authorization": f"{scheme} {customer.token}"})
        assert (answer.status_code, answer.get_json()) == (200, {"jobs": []})


# --- 403: the wrong role -----------------------------------------------------------------

WRONG_ROLE = [
    ("customer", "PUT", "/drivers/me/availability", {"online": True}),
    ("customer", "PUT", "/drivers/me/location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}),
    ("customer", "GET", "/drivers/me/offers", None),
    ("customer", "POST", "/jobs/{job}/accept", None),
    ("driver", "POST", "/jobs", {"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}}),
    ("driver", "GET", "/jobs", None),
    ("driver", "GET", "/jobs?status=pending", None),
    ("driver", "POST", "/jobs/{job}/cancel", None),
]


@pytest.mark.parametrize(("role", "method", "path", "body"), WRONG_ROLE)
def test_the_wrong_role_is_403_never_the_data_and_writes_nothing(
    client: FlaskClient, factory: Factory, role: str, method: str, path: str, body: Any
) -> None:
    customer, driver = factory.customer(), factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])  # the driver may accept it, the customer may cancel it
    caller = customer if role == "customer" else driver
    before = stored_state()
    answer = client.open(
        API + path.format(job=job["id"]), method=method, json=body, headers=caller.headers
    )
    assert_error(answer, 403, "forbidden")
    assert stored_state() == before
    with session_scope() as session:
        assert session.scalar(select(User.role).where(User.id == caller.id)) == role


# --- who before what: a refused caller never learns what was wrong with their request ------

# Requests invalid in each way the API validates: a malformed body, a body of the wrong
# shape, a wrong query value, a wrong header, on routes that need a token.
INVALID_REQUESTS = [
    ("POST", "/devices", "{not json", {}),
    ("PUT", "/drivers/me/availability", {"online": "maybe"}, {}),
    ("PUT", "/drivers/me/location", {"lat": 91, "lng": 0}, {}),
    ("POST", "/jobs", ["not", "an", "object"], {}),
    ("POST", "/jobs", {"pickup": {"lat": ORIGIN[0]}}, {"Idempotency-Key": "x" * 500}),
    ("GET", "/jobs?status=nonsense", None, {}),
    ("POST", "/jobs/{job}/cancel", {"reason": 7}, {}),
]


def _send(
    client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> TestResponse:
    """An INVALID_REQUESTS entry as sent: a string body as raw bytes, anything else as JSON."""
    return client.open(
        API + path,
        method=method,
        headers=headers,
        **({"data": body} if isinstance(body, str) else {"json": body}),
        content_type="application/json",
    )


@pytest.mark.parametrize(("method", "path", "body", "headers"), INVALID_REQUESTS)
def test_an_invalid_request_without_a_valid_token_is_401_not_422(
    client: FlaskClient, factory: Factory, method: str, path: str, body: Any, headers: dict
) -> None:
    job = factory.job(factory.customer())
    before = stored_state()
    for authorization in ({}, {"Authorization": "Bearer not-a-token"}):
        answer = _send(client, method, path.format(job=job["id"]), body, headers | authorization)
        assert_error(answer, 401, "unauthorized")
    assert stored_state() == before


@pytest.mark.parametrize(("method", "path", "body", "headers"), INVALID_REQUESTS)
def test_an_invalid_request_in_the_wrong_role_is_403_and_in_the_right_one_422(
    client: FlaskClient, factory: Factory, method: str, path: str, body: Any, headers: dict
) -> None:
    customer, driver = factory.customer(), factory.driver()
    job = factory.job(customer)
    wrong, right = (customer, driver) if "drivers" in path else (driver, customer)
    if path == "/devices":
        wrong = None  # any signed-in user may register a device
    before = stored_state()
    for caller, status, code in ((wrong, 403, "forbidden"), (right, 422, "validation_error")):
        if caller is None:
            continue
        answer = _send(client, method, path.format(job=job["id"]), body, headers | caller.headers)
        if code == "validation_error":
            assert answer.status_code == 422, answer.get_json()
        else:
            assert_error(answer, status, code)
    assert stored_state() == before
