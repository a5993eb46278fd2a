"""Logins and registrations cannot tie up the API (issue 9, point 3), against a real gunicorn.

A client address is throttled however many emails it sprays, registration too, and a
throttled answer says when to retry (`Retry-After`); a spoofed `X-Forwarded-For` changes
nothing unless the deployment trusts its proxies. Password hashes run a bounded few at a time
per process, so a burst of logins that gets past every per-address limit (a distributed one)
leaves `GET /jobs` answering promptly. With the limiter's Redis down, logins still work and
are throttled per process; once Redis is back, the limiter uses it again.

Client addresses are real: every request is sent from a loopback source address of its own
choosing (127.0.0.0/8), which gunicorn sees as the peer."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from api.throttle import client_address
from models.accounts import HashingSlots, PasswordHashingBusy, User
from models.db import session_scope
from settings import settings
from tests.factories import PASSWORD
from tests.processes import PrivateRedis, Process, start_web, wait_until

pytestmark = pytest.mark.slow

API = "/api/v1"
LOGINS_PER_ADDRESS = 8  # per minute, for the throttled gunicorn below
REGISTRATIONS_PER_ADDRESS = 5
THROTTLED_ENV = {
    "LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE": str(LOGINS_PER_ADDRESS),
    "REGISTRATIONS_PER_ADDRESS_PER_MINUTE": str(REGISTRATIONS_PER_ADDRESS),
}
# Limits no single address reaches: only the bound on hashes stands, as when a burst
# comes from many addresses. The hashes cost what they cost in production (the tests'
# other processes hash cheaply), so that the burst fills every hashing slot.
SPRAYERS = 32  # logins in flight at once, each from addresses of its own
UNTHROTTLED_ENV = {
    "LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE": "1000000",
    "LOGIN_ATTEMPTS_PER_MINUTE": "1000000",
    "PASSWORD_HASH_PROFILE": "RFC_9106_LOW_MEMORY",
}


# --- real HTTP from a chosen client address ----------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: Any


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection from `source`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(
            method,
            API + path,
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return Answer(response.status, response.headers, json.loads(raw) if raw else None)


def login(port: int, email: str, password: str = PASSWORD, **kwargs: Any) -> Answer:
    return call(port, "POST", "/auth/login", {"email": email, "password": password}, **kwargs)


def register(port: int, email: str, source: str = "127.0.0.1") -> Answer:
    body = {"role": "customer", "email": email, "password": PASSWORD, "name": "Sam"}
    return call(port, "POST", "/auth/register", body, source=source)


def assert_error(answer: Answer, status: int, code: str) -> None:
    """The contract's error body and nothing else."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get_content_type() == "application/json"
    assert list(answer.body) == ["error"], answer.body
    assert list(answer.body["error"]) == ["code", "message"], answer.body
    assert answer.body["error"]["code"] == code, answer.body
    assert answer.body["error"]["message"].strip()


def retry_after(answer: Answer, at_most: int) -> int:
    """The answer's Retry-After: whole seconds, at least 1 and at most `at_most`."""
    value = answer.headers.get("Retry-After")
    assert value is not None and value.isdigit(), dict(answer.headers)
    assert 1 <= int(value) <= at_most, value
    return int(value)


def users() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(User)) or 0)


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a gunicorn with small per-address limits."""
    web, port = start_web(tmp_path_factory.mktemp("throttled"), THROTTLED_ENV)
    try:
        yield port
    finally:
        web.stop()


# --- per address -------------------------------------------------------------------------


def test_an_address_spraying_emails_is_throttled_with_retry_after(throttled: int) -> None:
    assert register(throttled, "sam@example.com").status == 201
    sprayer = "127.0.0.2"
    for n in range(LOGINS_PER_ADDRESS):
        # Each names another email and claims another origin: neither escapes the throttle.
        forged = {"X-Forwarded-For": f"198.51.100.{n}"}
        answer = login(throttled, f"ghost{n}@example.com", source=sprayer, headers=forged)
        assert_error(answer, 401, "unauthorized")

    over = login(throttled, "ghost-next@example.com", source=sprayer)
    assert_error(over, 429, "rate_limited")
    retry_after(over, 60)
    right = login(throttled, "sam@example.com", source=sprayer)  # even the right password
    assert_error(right, 429, "rate_limited")
    retry_after(right, 60)

    elsewhere = login(throttled, "sam@example.com", source="127.0.0.3")
    assert elsewhere.status == 200, elsewhere.body  # counted per address


def test_registration_is_throttled_per_address(throttled: int) -> None:
    signer = "127.0.0.4"
    for n in range(REGISTRATIONS_PER_ADDRESS):
        answer = register(throttled, f"new{n}@example.com", source=signer)
        assert answer.status == 201, answer.body
    over = register(throttled, "one-more@example.com", source=signer)
    assert_error(over, 429, "rate_limited")
    retry_after(over, 60)
    assert users() == REGISTRATIONS_PER_ADDRESS  # the throttled one wrote nothing

    assert register(throttled, "one-more@example.com", source="127.0.0.5").status == 201


# --- a burst of logins cannot starve the API ---------------------------------------------


def _list_jobs(port: int, token: str, count: int) -> list[Answer]:
    return [
        call(port, "GET", "/jobs", headers={"Authorization": f"Bearer {token}"})
        for _ in range(count)
    ]


def _spray_logins(port: int, sprayers: int, stop: Event, sent: Any, results: Queue) -> None:
    """Run in a process of its own, so that the sprayers never hold the sampler back on the
    GIL: `sprayers` threads log in with a new email each time, each try from a new
    address (the way a botnet would), until `stop`; then every answer goes to `results`."""
    answers: list[tuple[int, Any, str | None]] = []

    def spray(n: int) -> None:
        tries = 0
        while not stop.is_set():
            tries += 1
            source = f"127.0.{10 + n}.{tries % 250 + 1}"
            answer = login(port, f"spray{n}-{tries}@example.com", "wrong password", source=source)
            answers.append((answer.status, answer.body, answer.headers.get("Retry-After")))
            with sent.get_lock():
                sent.value += 1

    threads = [threading.Thread(target=spray, args=(n,)) for n in range(sprayers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(answers)


def test_a_burst_of_logins_leaves_the_api_answering(tmp_path: Path) -> None:
    web, port = start_web(tmp_path, UNTHROTTLED_ENV)
    processes = multiprocessing.get_context("spawn")
    stop, sent, results = processes.Event(), processes.Value("i", 0), processes.Queue()
    sprayer = processes.Process(target=_spray_logins, args=(port, SPRAYERS, stop, sent, results))
    try:
        signed_up = register(port, "carla@example.com")
        assert signed_up.status == 201
        token = signed_up.body["token"]

        sprayer.start()
        try:
            wait_until(lambda: sent.value >= SPRAYERS, 60, "the burst to be under way")
            sent_before = sent.value
            during = _list_jobs(port, token, 10)
            sent_during = sent.value - sent_before
        finally:
            stop.set()
            answers = results.get(timeout=60)
            sprayer.join(30)

        statuses = Counter(status for status, _, _ in answers)
        report = (
            f"{len(answers)} logins {dict(statuses)}, {sent_during} while GET /jobs was sampled"
        )
        # Every GET /jobs answered, in the contract's shape, while logins kept arriving (how
        # fast it answers is a benchmark's to measure, never a test's).
        assert [(a.status, a.body) for a in during] == [(200, {"jobs": []})] * len(during)
        assert sent_during > 0, report
        assert set(statuses) <= {401, 503}, report
        # Logins still get through, and those that find every hashing slot busy are told
        # to come back (in the error shape, with Retry-After), not queued behind the rest.
        assert statuses[401] > 0 and statuses[503] > 0, report
        for status, body, retry in answers:
            if status == 503:
                assert body["error"] == {
                    "code": "service_unavailable",
                    "message": body["error"]["message"],
                }
                assert retry is not None and 1 <= int(retry) <= 5, retry
    finally:
        if sprayer.is_alive():
            sprayer.kill()
        web.stop()


# --- the limiter's Redis down ------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


def _limiter_keys(server: PrivateRedis) -> list[str]:
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, decode_responses=True)
    try:
        return list(client.scan_iter(match=f"{settings.redis_prefix}:throttle:*"))
    except redis.RedisError:
        return []
    finally:
        client.close()


def test_with_redis_down_logins_work_and_are_throttled_per_process(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    limit = 4
    env = {"REDIS_URL": private_redis.url, "LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE": str(limit)}
    web: Process
    web, port = start_web(tmp_path, env)
    try:
        assert register(port, "rita@example.com").status == 201
        private_redis.stop()

        source = "127.0.0.6"
        first = login(port, "rita@example.com", source=source)
        assert first.status == 200, first.body  # fail open: logins do not need Redis
        outcomes = [first]
        # Each of the 2 processes counts on its own now, so no more than 2 × limit pass.
        while outcomes[-1].status != 429 and len(outcomes) <= 2 * limit:
            outcomes.append(login(port, f"x{len(outcomes)}@example.com", "nope", source=source))
        assert outcomes[-1].status == 429, [answer.status for answer in outcomes]
        assert_error(outcomes[-1], 429, "rate_limited")
        retry_after(outcomes[-1], 60)
        assert "falling back to in-memory storage" in web.log()

        private_redis.start()  # empty, as after a restart without persistence

        def limiter_uses_redis_again() -> bool:
            # Past the limit in a process's memory this is a 429 that hashes nothing.
            login(port, "rita@example.com", "nope", source=source)
            return bool(_limiter_keys(private_redis))

        wait_until(limiter_uses_redis_again, 90, "the limiter to use Redis again")
    finally:
        web.stop()


# --- unit tests: whom a request is counted against, and the hashing slots ----------------


@pytest.mark.parametrize(
    ("hops", "expected"),
    [(0, "10.0.0.1"), (1, "203.0.113.7"), (2, "198.51.100.9"), (3, "10.0.0.1")],
)
def test_the_client_address_is_read_from_forwarded_for_only_behind_trusted_proxies(
    app: Flask, monkeypatch: pytest.MonkeyPatch, hops: int, expected: str
) -> None:
    """`X-Forwarded-For` lists the client's own claim first and each proxy appends the peer
    it saw: with N trusted proxies, the N-th entry from the right is the truth; a shorter
    list did not come through them all, so the socket's peer it is."""
    monkeypatch.setattr(settings, "trusted_proxy_hops", hops)
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
    with app.test_request_context(headers=forwarded, environ_base={"REMOTE_ADDR": "10.0.0.1"}):
        assert client_address() == expected


def test_hashing_slots_queue_a_few_and_refuse_the_rest_at_once() -> None:
    slots = HashingSlots(slots=1, queue=1, wait_s=5)
    holding, release, waited = threading.Event(), threading.Event(), []

    def hold() -> None:
        with slots.slot():
            holding.set()
            release.wait(10)

    def wait_for_slot() -> None:
        started = time.monotonic()
        with slots.slot():
            waited.append(time.monotonic() - started)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    # Both admissions taken (CPython's semaphore count, read without taking one).
    wait_until(lambda: slots._admitted._value == 0, 10, "the waiter to queue")

    started = time.monotonic()
    with pytest.raises(PasswordHashingBusy), slots.slot():
        pytest.fail("a third caller got in")
    assert time.monotonic() - started < 2.5  # refused at once, not after the 5 s wait

    release.set()
    holder.join(10)
    waiter.join(10)
    assert len(waited) == 1  # the queued one got the slot when it was free


def test_a_slot_not_free_in_time_is_refused() -> None:
    slots = HashingSlots(slots=1, queue=1, wait_s=0.2)
    with slots.slot():
        started = time.monotonic()
        with pytest.raises(PasswordHashingBusy):
            with slots.slot():
                pass
        assert 0.2 <= time.monotonic() - started < 2
    with slots.slot():  # and both are free again
        pass
