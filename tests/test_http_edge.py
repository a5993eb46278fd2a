"""The web process at the edges of HTTP, through a real gunicorn and raw sockets: requests
gunicorn itself refuses (a malformed request line, control bytes, a 9 KB header, a
10,000-character path, a bad chunk), an oversize chunked body, a method a path does not
allow, and passwords too weak to register. Every error answer is the contract's JSON
body with the right status; never gunicorn's HTML page."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from api.schemas import common_passwords
from models.accounts import Role, register_user
from models.db import session_scope
from settings import settings
from tests.factories import PASSWORD
from tests.processes import start_web
from tests.stored import db_rows

pytestmark = pytest.mark.slow

API = "/api/v1"
# Registration is throttled per address; every request here comes from 127.0.0.1.
GENEROUS_THROTTLE = {
    "REGISTRATIONS_PER_ADDRESS_PER_MINUTE": "1000",
    "LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE": "1000",
    "LOGIN_ATTEMPTS_PER_MINUTE": "1000",
}


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: bytes) -> RawAnswer:
    """Send `request` as is and read one answer (up to its Content-Length, or the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in lines)
        }
        length = int(headers.get("content-length", "-1"))
        while len(body) < length or length < 0:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return RawAnswer(int(status_line.split(" ", 2)[1]), headers, body)


def http_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 4096) -> bytes:
    """`body` in the chunked transfer coding: no Content-Length tells its size up front."""
    parts = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def assert_json_error(
    answer: RawAnswer, status: int, code: str, fields: set[str] | None = None
) -> dict[str, Any]:
    """The contract's error body and nothing else, as JSON, with `status`."""
    assert answer.status == status, (answer.status, answer.headers, answer.body[:500])
    assert answer.headers.get("content-type", "").split(";")[0] == "application/json", answer
    error = answer.json()["error"]
    assert list(answer.json()) == ["error"] and error["code"] == code, answer.body
    assert isinstance(error["message"], str) and error["message"].strip()
    if fields is None:
        assert list(error) == ["code", "message"], error
    else:
        assert list(error) == ["code", "message", "fields"], error
        assert set(error["fields"]) == fields, error
    return error


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = start_web(tmp_path_factory.mktemp("http-edge"), GENEROUS_THROTTLE)
    try:
        yield port
    finally:
        process.stop()


# --- what gunicorn refuses before the app sees it ------------------------------------------

HEALTH = f"{API}/health"
REFUSED_BY_THE_SERVER = {
    "a malformed request line": (b"THIS IS NOT HTTP\r\n\r\n", 400, "bad_request"),
    "a control byte in the path": (
        http_request("GET", f"{HEALTH}\x01"),
        400,
        "bad_request",
    ),
    "a control byte in a header": (
        http_request("GET", HEALTH, {"X-Note": "a\x01b"}),
        400,
        "bad_request",
    ),
    "a header name that is not a token": (
        http_request("GET", HEALTH, {"X(Note)": "a"}),
        400,
        "bad_request",
    ),
    "a 9 KB header": (
        http_request("GET", HEALTH, {"X-Note": "a" * 9 * 1024}),
        431,
        "headers_too_large",
    ),
    "too many headers": (
        http_request("GET", HEALTH, {f"X-Note-{n}": "a" for n in range(120)}),
        431,
        "headers_too_large",
    ),
    "a 10,000-character path": (
        http_request("GET", f"{API}/" + "a" * 10_000),
        414,
        "uri_too_long",
    ),
    "a chunk size that is not hex": (  # raised to the app, as it reads the body
        http_request(
            "POST",
            f"{API}/auth/register",
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        "bad_request",
    ),
    "an unknown transfer coding": (
        http_request(
            "POST", f"{API}/auth/login", {"Transfer-Encoding": "br, chunked"}, chunked(b"{}")
        ),
        501,
        "not_implemented",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_BY_THE_SERVER))
def test_what_gunicorn_refuses_is_answered_in_the_json_error_shape(web: int, case: str) -> None:
    request, status, code = REFUSED_BY_THE_SERVER[case]
    answer = exchange(web, request)
    assert_json_error(answer, status, code)
    assert b"<html" not in answer.body.lower()


def test_a_good_request_after_a_refused_one_is_served(web: int) -> None:
    """The worker answering an error in JSON stays up and serves the next request."""
    for _ in range(3):
        assert_json_error(exchange(web, b"THIS IS NOT HTTP\r\n\r\n"), 400, "bad_request")
    answer = exchange(web, http_request("GET", HEALTH))
    assert (answer.status, answer.json()) == (200, {"ok": True})


# --- oversize bodies -----------------------------------------------------------------------


def _registration(email: str, size: int) -> bytes:
    """A valid registration body padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps(
        {"role": "customer", "email": email, "password": PASSWORD, "name": "Ana"}
    ).encode()
    return body + b" " * (size - len(body))


def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(web: int) -> None:
    before = db_rows()
    body = _registration("over@example.com", settings.max_body_bytes + 1)
    answer = exchange(
        web,
        http_request(
            "POST",
            f"{API}/auth/register",
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            chunked(body),
        ),
    )
    assert_json_error(answer, 413, "payload_too_large")
    assert db_rows() == before


@pytest.mark.parametrize("transfer", ["chunked", "content-length"])
def test_a_body_of_exactly_the_limit_is_accepted(web: int, transfer: str) -> None:
    body = _registration(f"{transfer}@example.com", settings.max_body_bytes)
    headers = {"Content-Type": "application/json"}
    if transfer == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(body)
    answer = exchange(web, http_request("POST", f"{API}/auth/register", headers, body))
    assert answer.status == 201, answer.body
    assert answer.json()["user"]["email"] == f"{transfer}@example.com"


def test_a_content_length_over_the_limit_is_413(web: int) -> None:
    body = _registration("long@example.com", settings.max_body_bytes + 1)
    answer = exchange(
        web,
        http_request("POST", f"{API}/auth/register", {"Content-Type": "application/json"}, body),
    )
    assert_json_error(answer, 413, "payload_too_large")


# --- 405 carries Allow (RFC 9110 §15.5.6) --------------------------------------------------

NOT_ALLOWED = {  # (method, path): the methods the path allows
    ("DELETE", f"{API}/jobs"): {"GET", "HEAD", "OPTIONS", "POST"},
    ("PUT", f"{API}/auth/login"): {"OPTIONS", "POST"},
    ("POST", HEALTH): {"GET", "HEAD", "OPTIONS"},
    ("GET", f"{API}/jobs/1/accept"): {"OPTIONS", "POST"},
    ("PATCH", f"{API}/drivers/me/location"): {"OPTIONS", "PUT"},
    ("TRACE", f"{API}/devices"): {"OPTIONS", "POST"},
}


@pytest.mark.parametrize(("method", "path"), list(NOT_ALLOWED))
def test_a_405_names_the_allowed_methods(web: int, method: str, path: str) -> None:
    answer = exchange(web, http_request(method, path))
    assert_json_error(answer, 405, "method_not_allowed")
    allowed = {name.strip() for name in answer.headers["allow"].split(",")}
    assert allowed == NOT_ALLOWED[(method, path)]


# --- the password policy -------------------------------------------------------------------

COMMON, BLANK = "is one of the most common passwords", "must not be blank"
WEAK_PASSWORDS = {  # case: (password, the reason given)
    "the commonest": ("password", COMMON),
    "common, capitalised": ("Password1", COMMON),
    "common, shouted": ("QWERTYUIOP", COMMON),
    "a digit run": ("12345678", COMMON),
    "a keyboard walk": ("1q2w3e4r5t", COMMON),
    "eight spaces": (" " * 8, BLANK),
    "tabs and spaces": ("\t \t \t \t ", BLANK),
    "ideographic spaces": ("\u3000" * 8, BLANK),
}


def _register(port: int, email: str, password: str) -> RawAnswer:
    body = json.dumps({"role": "driver", "email": email, "password": password, "name": "Nia"})
    return exchange(
        port,
        http_request(
            "POST", f"{API}/auth/register", {"Content-Type": "application/json"}, body.encode()
        ),
    )


@pytest.mark.parametrize("case", list(WEAK_PASSWORDS))
def test_registration_refuses_a_blank_or_common_password(web: int, case: str) -> None:
    password, reason = WEAK_PASSWORDS[case]
    before = db_rows()
    error = assert_json_error(
        _register(web, "nia@example.com", password), 422, "validation_error", {"password"}
    )
    assert reason in error["fields"]["password"]
    assert db_rows() == before


@pytest.mark.parametrize("password", [PASSWORD, "long enough", "Tr0ub4dor&3x", "  padded  ok "])
def test_registration_takes_an_uncommon_password(web: int, password: str) -> None:
    answer = _register(web, "nia@example.com", password)
    assert answer.status == 201, answer.body
    login = exchange(
        web,
        http_request(
            "POST",
            f"{API}/auth/login",
            {"Content-Type": "application/json"},
            json.dumps({"email": "nia@example.com", "password": password}).encode(),
        ),
    )
    assert login.status == 200, login.body


def test_login_still_takes_a_password_registered_before_the_policy(web: int) -> None:
    """Accounts made before the policy keep working: it applies to new passwords only."""
    with session_scope() as session:
        register_user(session, Role.customer, "old@example.com", "password", "Old Timer")
    answer = exchange(
        web,
        http_request(
            "POST",
            f"{API}/auth/login",
            {"Content-Type": "application/json"},
            json.dumps({"email": "old@example.com", "password": "password"}).encode(),
        ),
    )
    assert answer.status == 200, answer.body
    assert answer.json()["user"]["email"] == "old@example.com"


def test_the_document_says_what_a_password_must_be(web: int) -> None:
    document = exchange(web, http_request("GET", f"{API}/openapi.json")).json()
    password = document["components"]["schemas"]["RegisterBody"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (8, 128)
    assert "pattern" in password and "common" in password["description"]


def test_the_common_password_list_ships_with_the_package() -> None:
    """Read the way the app reads it (importlib.resources), with entries of 8+ characters."""
    words = common_passwords()
    assert len(words) > 10_000 and {"password", "12345678", "qwertyuiop"} <= words
    assert all(len(word) >= 8 and word == word.casefold() for word in words)
    assert PASSWORD not in words and "long enough" not in words
