"""APNs delivery over real HTTP/2 + TLS to the fake APNs server, and the answer rules."""

import importlib.metadata
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import jwt
import pytest
import redis
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from redis.backoff import NoBackoff
from redis.retry import Retry

from fake_apns import Behaviour, Credentials, FakeAPNs
from fake_apns import server as fake_apns_server
from models.db import redis_connection
from settings import PROJECT_ROOT, settings
from tests.processes import wait_until
from workers import apns
from workers.apns import Outcome, Push, PushResult, classify, provider_token, send_pushes
from workers.apns.aioapns_pool import AIOAPNS_VERSION, MAX_CONNECTIONS, READ_PAUSE_S
from workers.apns.push_connection import (
    Answered,
    ConcurrencyLimit,
    Event,
    PushConnection,
    Reset,
    Terminated,
)
from workers.apns.push_headers import (
    PER_PUSH_HEADERS,
    AnswerHeaderDecoder,
    PushHeaderEncoder,
    huffman_decoded,
    literal_without_indexing,
)
from workers.apns.sender import current_sender
from workers.notifications import push_backoff_s

pytestmark = pytest.mark.usefixtures("apns_settings")

EXPIRES_AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True, scope="module")
def close_the_sender() -> Iterator[None]:
    """This process's APNs loop and connections, closed cleanly after the module."""
    yield
    apns.shutdown()


def token(n: int) -> str:
    return f"{n:064x}"


def offer_push(n: int = 1, **overrides) -> Push:
    fields = {
        "token": token(n),
        "environment": "production",
        "title": "New job nearby",
        "body": "1.2 km from you",
        "data": {"type": "job:new", "job_id": 7},
        "priority": 10,
        "collapse_id": "job-7",
        "expiration": EXPIRES_AT,
    }
    return Push(**{**fields, **overrides})


def shared_token_key() -> str:
    return settings.redis_key("apns", "provider_token")


def sign(credentials: Credentials, issued_at: float) -> str:
    return jwt.encode(
        {"iss": credentials.team_id, "iat": int(issued_at)},
        credentials.signing_key_file.read_text(),
        algorithm="ES256",
        headers={"kid": credentials.key_id},
    )


def forget_local_token() -> None:
    """Make this process read the shared token again, as a newly started worker would."""
    current_sender().auth.issued_at = 0


# --- the answer rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (200, None, Outcome.delivered),
        (410, "Unregistered", Outcome.token_dead),
        (410, "ExpiredToken", Outcome.token_dead),
        (400, "BadDeviceToken", Outcome.token_dead),
        (400, "DeviceTokenNotForTopic", Outcome.token_dead),
        (400, "BadTopic", Outcome.dropped),
        (400, "BadCollapseId", Outcome.dropped),
        (404, "BadPath", Outcome.dropped),
        (413, "PayloadTooLarge", Outcome.dropped),
        (429, "TooManyRequests", Outcome.retry),
        (500, "InternalServerError", Outcome.retry),
        (502, None, Outcome.retry),
        (503, "ServiceUnavailable", Outcome.retry),
        (403, "ExpiredProviderToken", Outcome.retry),
        (403, "InvalidProviderToken", Outcome.dropped),
        (403, "TooManyProviderTokenUpdates", Outcome.dropped),
        (None, "timeout", Outcome.retry),
        (None, "connection: MaxAttemptsExceeded", Outcome.retry),
    ],
)
def test_classify(status, reason, outcome) -> None:
    assert classify(status, reason) is outcome


@pytest.mark.parametrize("field", [{"environment": "staging"}, {"push_type": "banner"}])
def test_a_push_with_an_unknown_environment_or_type_is_refused(field) -> None:
    with pytest.raises(ValueError):
        offer_push(**field)


def test_not_configured_sends_nothing(monkeypatch: pytest.MonkeyPatch, fake_apns) -> None:
    monkeypatch.setattr(settings, "apns_key_path", "")
    assert not apns.apns_enabled()
    [result] = send_pushes([offer_push()])
    assert (result.outcome, result.reason) == (Outcome.dropped, "apns_not_configured")
    assert fake_apns.received() == []


def test_aioapns_is_the_version_its_workarounds_were_written_against() -> None:
    installed = importlib.metadata.version("aioapns")
    assert installed == AIOAPNS_VERSION, (
        f"aioapns {installed} is installed, but workers/apns/aioapns_pool.py overrides the "
        f"internals of aioapns {AIOAPNS_VERSION} (conn, free_channels, data_received, close, "
        "connection_lost, _create_connection, discard_connection). Re-read each "
        "override there against the new version, then move AIOAPNS_VERSION and setup.cfg's pin "
        "together."
    )


# --- over HTTP/2 + TLS to the fake server -------------------------------------------------


def test_delivered_with_the_contract_headers_and_payload(fake_apns: FakeAPNs) -> None:
    [result] = send_pushes([offer_push()])
    assert (result.outcome, result.status, result.reason) == (Outcome.delivered, 200, None)
    [received] = fake_apns.received(token(1))
    assert received.payload == {
        "aps": {
            "alert": {"title": "New job nearby", "body": "1.2 km from you"},
            "sound": "default",
        },
        "type": "job:new",
        "job_id": 7,
    }
    headers = received.headers
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == "job-7"
    assert headers["apns-expiration"] == str(int(EXPIRES_AT.timestamp()))
    assert headers["apns-topic"] == settings.apns_topic
    assert headers["authorization"].startswith("bearer ")


def test_optional_headers_are_left_out(fake_apns: FakeAPNs) -> None:
    send_pushes([offer_push(priority=None, collapse_id=None, expiration=None, body=None)])
    [received] = fake_apns.received(token(1))
    assert {"apns-priority", "apns-collapse-id", "apns-expiration"}.isdisjoint(received.headers)
    assert received.payload["aps"]["alert"] == {"title": "New job nearby"}


def test_each_environment_pushes_through_the_configured_host(fake_apns: FakeAPNs) -> None:
    results = send_pushes([offer_push(1), offer_push(2, environment="sandbox")])
    assert [r.outcome for r in results] == [Outcome.delivered, Outcome.delivered]
    assert {p.token for p in fake_apns.received()} == {token(1), token(2)}


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (410, "Unregistered", Outcome.token_dead),
        (400, "BadDeviceToken", Outcome.token_dead),
        (400, "DeviceTokenNotForTopic", Outcome.token_dead),
        (429, "TooManyRequests", Outcome.retry),
        (500, "InternalServerError", Outcome.retry),
        (503, "ServiceUnavailable", Outcome.retry),
        (413, "PayloadTooLarge", Outcome.dropped),
    ],
)
def test_each_answer_is_classified(fake_apns: FakeAPNs, status, reason, outcome) -> None:
    fake_apns.behave(token(2), Behaviour(status, reason))
    results = send_pushes([offer_push(1), offer_push(2)])
    assert [(r.outcome, r.status, r.reason) for r in results] == [
        (Outcome.delivered, 200, None),
        (outcome, status, reason),
    ]


def test_a_wrong_topic_is_refused_by_the_server(
    fake_apns: FakeAPNs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "apns_topic", "com.example.other")
    [result] = send_pushes([offer_push()])
    assert (result.outcome, result.reason) == (Outcome.token_dead, "DeviceTokenNotForTopic")


def test_an_answer_only_the_first_times_then_delivered(fake_apns: FakeAPNs) -> None:
    fake_apns.behave(token(1), Behaviour(503, "ServiceUnavailable", times=1))
    [first] = send_pushes([offer_push(1)])
    [second] = send_pushes([offer_push(1)])
    assert (first.outcome, second.outcome) == (Outcome.retry, Outcome.delivered)
    assert [p.status for p in fake_apns.received(token(1))] == [503, 200]


def test_many_error_bodies_do_not_stall_the_connection(fake_apns: FakeAPNs) -> None:
    """aioapns never acknowledged received DATA: ~64 KiB of error bodies stalled it (the
    pushes after that would end as timeouts)."""
    send_pushes([offer_push(0)])
    connections_before = fake_apns.connections
    for n in range(3000):
        fake_apns.behave(token(n), Behaviour(410, "Unregistered"))
    results = send_pushes([offer_push(n) for n in range(3000)], timeout_s=20)
    assert {r.outcome for r in results} == {Outcome.token_dead}
    assert fake_apns.connections == connections_before


def test_fan_out_is_multiplexed_on_one_connection(fake_apns: FakeAPNs) -> None:
    send_pushes([offer_push(0)])  # the process's connection, open before the fan-out
    connections_before = fake_apns.connections
    results = send_pushes([offer_push(n) for n in range(500)])
    assert [r.push.token for r in results] == [token(n) for n in range(500)]
    assert {r.outcome for r in results} == {Outcome.delivered}
    assert len({p.connection for p in fake_apns.received()}) == 1
    assert len({p.headers["apns-id"] for p in fake_apns.received()}) == 501
    assert fake_apns.connections == connections_before


def test_after_a_fan_out_the_connection_reads_the_socket_again(fake_apns: FakeAPNs) -> None:
    """While answers wait to be read in a batch, the socket is not read either (a read buffer
    limit of one byte); the pause must not outlive the fan-out."""
    results = send_pushes([offer_push(n) for n in range(300)])
    assert {r.outcome for r in results} == {Outcome.delivered}
    time.sleep(READ_PAUSE_S * 3)
    [connection] = current_sender().pools["production"].connections
    assert connection.transport is not None
    assert connection.transport.get_read_buffer_limits()[1] > 1  # type: ignore[attr-defined]
    [result] = send_pushes([offer_push(300)], timeout_s=3)
    assert result.outcome is Outcome.delivered


def test_server_down_is_a_retry_within_the_timeout(fake_apns: FakeAPNs) -> None:
    send_pushes([offer_push(1)])
    fake_apns.down()
    started = time.monotonic()
    [result] = send_pushes([offer_push(2)], timeout_s=3)
    assert time.monotonic() - started < 3.5
    assert (result.outcome, result.status) == (Outcome.retry, None)
    fake_apns.up()
    [result] = send_pushes([offer_push(3)], timeout_s=5)
    assert result.outcome is Outcome.delivered


@pytest.mark.parametrize(
    ("status", "reason"), [(200, None), (410, "Unregistered")], ids=["delivered", "error"]
)
def test_a_late_answer_after_a_timeout_is_skipped_and_the_connection_survives(
    fake_apns: FakeAPNs, status: int, reason: str | None
) -> None:
    send_pushes([offer_push(0)])  # the process's connection, open before the slow send
    connections_before = fake_apns.connections
    fake_apns.behave(token(1), Behaviour(status, reason, delay_s=1.5))
    [result] = send_pushes([offer_push(1)], timeout_s=0.5)
    assert (result.outcome, result.reason) == (Outcome.retry, "timeout")
    assert fake_apns.wait_idle()  # the late answer to the abandoned send has gone out
    [result] = send_pushes([offer_push(2)], timeout_s=3)
    assert result.outcome is Outcome.delivered
    answered = [(p.token, p.status) for p in fake_apns.received()]
    assert answered == [(token(0), 200), (token(1), status), (token(2), 200)]
    assert len({p.connection for p in fake_apns.received()}) == 1
    assert fake_apns.connections == connections_before


def test_a_lost_connection_ends_its_sends_even_after_an_abandoned_one(
    fake_apns: FakeAPNs,
) -> None:
    """aioapns 4.0 raised InvalidStateError on the abandoned send, and the others hung."""
    fake_apns.behave(token(1), Behaviour(200, None, delay_s=5))
    fake_apns.behave(token(2), Behaviour(200, None, delay_s=5))
    [abandoned] = send_pushes([offer_push(1)], timeout_s=0.3)
    assert abandoned.reason == "timeout"
    results = []
    pending = threading.Thread(target=lambda: results.extend(send_pushes([offer_push(2)], 8)))
    pending.start()
    wait_until(lambda: fake_apns.pending() == 2, 5, "both sends at the server")
    fake_apns.down()
    pending.join(10)
    [result] = results  # not a timeout: the loss itself ended the send
    assert (result.outcome, result.status) == (Outcome.retry, None)
    assert result.reason is not None and result.reason.startswith("connection")


def test_the_call_is_bounded_even_with_more_pushes_than_slots(fake_apns: FakeAPNs) -> None:
    """Pushes still waiting for one of the in-flight slots at the deadline are retries too."""
    for n in range(apns.MAX_IN_FLIGHT + 20):
        fake_apns.behave(token(n), Behaviour(200, None, delay_s=1.5))
    started = time.monotonic()
    results = send_pushes([offer_push(n) for n in range(apns.MAX_IN_FLIGHT + 20)], timeout_s=1)
    assert time.monotonic() - started < 1.5
    assert {(r.outcome, r.reason) for r in results} == {(Outcome.retry, "timeout")}
    assert fake_apns.wait_idle()
    assert len(fake_apns.received()) == apns.MAX_IN_FLIGHT  # the others never left


def test_no_more_than_max_in_flight_pushes_wait_at_the_server(fake_apns: FakeAPNs) -> None:
    count = apns.MAX_IN_FLIGHT + 50
    for n in range(count):
        fake_apns.behave(token(n), Behaviour(200, None, delay_s=0.5))
    results: list[PushResult] = []
    fan_out = threading.Thread(
        target=lambda: results.extend(send_pushes([offer_push(n) for n in range(count)], 10))
    )
    fan_out.start()
    wait_until(lambda: fake_apns.pending() == apns.MAX_IN_FLIGHT, 5, "a full window in flight")
    time.sleep(0.2)
    assert fake_apns.pending() == apns.MAX_IN_FLIGHT
    fan_out.join(10)
    assert [r.outcome for r in results] == [Outcome.delivered] * count


@pytest.fixture
def streams_per_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The fake server allows 10 streams a connection; the process's sender starts afresh
    (so its connections learn the limit), and again after the test."""
    monkeypatch.setattr(fake_apns_server, "MAX_CONCURRENT_STREAMS", 10)
    apns.shutdown()
    yield 10
    apns.shutdown()


def test_the_pool_opens_another_connection_when_every_stream_is_busy(
    fake_apns: FakeAPNs, streams_per_connection: int
) -> None:
    count = streams_per_connection * 2 + 5
    for n in range(count):
        fake_apns.behave(token(n), Behaviour(200, None, delay_s=0.5))
    results = send_pushes([offer_push(n) for n in range(count)], timeout_s=10)
    assert [r.outcome for r in results] == [Outcome.delivered] * count
    per_connection = Counter(p.connection for p in fake_apns.received())
    assert sorted(per_connection.values()) == [5, streams_per_connection, streams_per_connection]


def test_the_pool_opens_no_more_than_max_connections(
    fake_apns: FakeAPNs, streams_per_connection: int
) -> None:
    """Pushes beyond every connection's streams wait for a stream to be free."""
    count = streams_per_connection * MAX_CONNECTIONS + 15
    for n in range(count):
        fake_apns.behave(token(n), Behaviour(200, None, delay_s=0.3))
    connections_before = fake_apns.connections
    started = time.monotonic()
    results = send_pushes([offer_push(n) for n in range(count)], timeout_s=10)
    assert [r.outcome for r in results] == [Outcome.delivered] * count
    assert time.monotonic() - started >= 0.6  # the last 15 waited for the first answers
    assert len({p.connection for p in fake_apns.received()}) == MAX_CONNECTIONS
    assert fake_apns.connections - connections_before == MAX_CONNECTIONS


def test_pushes_on_a_connection_lost_mid_fan_out_are_sent_again_on_a_new_one(
    fake_apns: FakeAPNs,
) -> None:
    send_pushes([offer_push(0)])  # the process's connection, open before the fan-out
    [first] = {p.connection for p in fake_apns.received()}
    for n in range(1, 31):
        fake_apns.behave(token(n), Behaviour(200, None, times=1, delay_s=5))
    results: list[PushResult] = []
    fan_out = threading.Thread(
        target=lambda: results.extend(send_pushes([offer_push(n) for n in range(1, 31)], 8))
    )
    fan_out.start()
    wait_until(lambda: fake_apns.pending() == 30, 5, "the fan-out at the server")
    sender = current_sender()
    [connection] = sender.pools["production"].connections
    assert connection.transport is not None
    sender.loop.call_soon_threadsafe(connection.transport.abort)
    fan_out.join(10)
    assert [r.outcome for r in results] == [Outcome.delivered] * 30
    answered = [p for p in fake_apns.received() if p.token != token(0)]
    assert sorted(p.token for p in answered) == [token(n) for n in range(1, 31)]
    [again] = {p.connection for p in answered}
    assert again != first


def test_a_forked_child_pushes_on_its_own_loop_and_connection(fake_apns: FakeAPNs) -> None:
    send_pushes([offer_push(1)])
    parent = current_sender()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            [result] = send_pushes([offer_push(2)], timeout_s=5)
            child_sender = current_sender()
            fresh = child_sender is not parent and child_sender.pid == os.getpid()
            os.write(write_end, f"{result.outcome} {fresh}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    report = os.read(read_end, 100).decode()
    os.close(read_end)
    assert (os.waitstatus_to_exitcode(status), report) == (0, "delivered True")
    first, second = fake_apns.received()
    assert first.connection != second.connection
    [result] = send_pushes([offer_push(3)])  # the parent's loop is untouched
    assert result.outcome is Outcome.delivered


# --- the provider token -------------------------------------------------------------------


def test_provider_token_is_shared_through_redis(fake_apns: FakeAPNs) -> None:
    forget_local_token()
    send_pushes([offer_push(1)])
    forget_local_token()  # as another worker process would
    send_pushes([offer_push(2)])
    first, second = fake_apns.received()
    assert first.headers["authorization"] == second.headers["authorization"]
    stored = redis_connection().get(shared_token_key())
    assert isinstance(stored, str)
    assert first.headers["authorization"] == f"bearer {stored.partition(':')[2]}"


def test_a_shared_token_older_than_40_minutes_is_resigned(
    fake_apns: FakeAPNs, apns_credentials: Credentials
) -> None:
    issued_at = int(time.time() - 41 * 60)
    old = sign(apns_credentials, issued_at)
    redis_connection().set(shared_token_key(), f"{issued_at}:{old}")
    forget_local_token()
    [result] = send_pushes([offer_push(1)])
    assert result.outcome is Outcome.delivered
    [received] = fake_apns.received()
    assert received.headers["authorization"] != f"bearer {old}"
    stored = redis_connection().get(shared_token_key())
    assert received.headers["authorization"] == f"bearer {str(stored).partition(':')[2]}"
    assert (
        jwt.decode(received.headers["authorization"][7:], options={"verify_signature": False})[
            "iat"
        ]
        >= int(time.time()) - 5
    )


def test_expired_provider_token_is_resigned_and_the_push_retried(
    fake_apns: FakeAPNs, apns_credentials: Credentials
) -> None:
    # A token Redis says is 25 minutes old, but whose iat Apple counts as over an hour.
    now = time.time()
    expired = sign(apns_credentials, now - 3700)
    shared = f"{int(now - 25 * 60)}:{expired}"
    redis_connection().set(shared_token_key(), shared)
    forget_local_token()

    [result] = send_pushes([offer_push(2)])

    assert (result.outcome, result.status) == (Outcome.delivered, 200)
    first, retried = fake_apns.received(token(2))
    assert (first.status, first.reason) == (403, "ExpiredProviderToken")
    assert first.headers["authorization"] == f"bearer {expired}"
    assert retried.status == 200
    assert retried.headers["authorization"] != f"bearer {expired}"
    assert redis_connection().get(shared_token_key()) != shared


def test_a_young_token_is_not_resigned_even_if_apple_calls_it_expired(
    fake_apns: FakeAPNs,
) -> None:
    """Apple refuses token updates more often than every 20 minutes."""
    fake_apns.behave(token(1), Behaviour(403, "ExpiredProviderToken"))
    forget_local_token()
    [result] = send_pushes([offer_push(1)])
    assert (result.outcome, result.reason) == (Outcome.retry, "ExpiredProviderToken")
    first, again = fake_apns.received(token(1))
    assert first.headers["authorization"] == again.headers["authorization"]


def resign_due(credentials: Credentials) -> str:
    """A shared token 41 minutes old, so that the next refresh re-signs."""
    issued_at = int(time.time() - 41 * 60)
    stored = f"{issued_at}:{sign(credentials, issued_at)}"
    redis_connection().set(shared_token_key(), stored)
    return stored


def hold_the_signing_lock() -> redis.lock.Lock:
    lock = redis_connection().lock(settings.redis_key("apns", "provider_token", "lock"), 10)
    assert lock.acquire(blocking=False)
    return lock


def test_one_process_signs_the_next_token_and_the_others_take_it(
    apns_credentials: Credentials,
) -> None:
    resign_due(apns_credentials)
    key = apns_credentials.signing_key_file.read_text()
    processes = [provider_token.SharedProviderToken(key) for _ in range(8)]
    together = threading.Barrier(len(processes))

    def refresh(process: provider_token.SharedProviderToken) -> None:
        together.wait()
        process.refresh()

    threads = [threading.Thread(target=refresh, args=(p,)) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # ES256 signatures are randomised: two signers would hold two different tokens.
    assert len({p.token for p in processes}) == 1
    stored = str(redis_connection().get(shared_token_key()))
    assert stored == f"{processes[0].issued_at}:{processes[0].token}"


def test_a_process_waits_for_the_signer_and_takes_its_token(
    apns_credentials: Credentials,
) -> None:
    resign_due(apns_credentials)
    signer = hold_the_signing_lock()
    waiting = provider_token.SharedProviderToken(apns_credentials.signing_key_file.read_text())
    refresh = threading.Thread(target=waiting.refresh)
    refresh.start()
    time.sleep(0.3)  # proves it waits: no token of its own while the lock is held
    assert waiting.token == ""
    issued_at = int(time.time())
    signed = sign(apns_credentials, issued_at)
    redis_connection().set(shared_token_key(), f"{issued_at}:{signed}")
    signer.release()
    refresh.join(provider_token.TOKEN_LOCK_WAIT_S + 5)
    assert (waiting.issued_at, waiting.token) == (issued_at, signed)


def test_a_lock_held_too_long_and_the_process_signs_its_own_token(
    apns_credentials: Credentials,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = resign_due(apns_credentials)
    monkeypatch.setattr(provider_token, "TOKEN_LOCK_WAIT_S", 0.3)
    signer = hold_the_signing_lock()
    try:
        process = provider_token.SharedProviderToken(apns_credentials.signing_key_file.read_text())
        with caplog.at_level(logging.WARNING, logger="workers.apns"):
            process.refresh()
    finally:
        signer.release()
    assert "lock held too long; signing locally" in caplog.text
    assert process.token and process.issued_at >= int(time.time()) - 5
    assert redis_connection().get(shared_token_key()) == stored  # the signer's to replace


def test_without_redis_the_process_signs_its_own_token(
    fake_apns: FakeAPNs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dead = redis.Redis(port=1, decode_responses=True, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(provider_token, "redis_connection", lambda: dead)
    forget_local_token()
    with caplog.at_level(logging.WARNING, logger="workers.apns"):
        [result] = send_pushes([offer_push(1)])
    dead.close()
    assert result.outcome is Outcome.delivered
    assert "signing locally" in caplog.text


# --- the development server ---------------------------------------------------------------


def test_python_m_fake_apns_prints_the_settings_to_use(tmp_path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "fake_apns", "--port", "0", "--dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(8)]
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:])
    assert set(exports) == {
        "APNS_HOST",
        "APNS_PORT",
        "APNS_CA_FILE",
        "APNS_KEY_PATH",
        "APNS_KEY_ID",
        "APNS_TEAM_ID",
        "APNS_TOPIC",
    }
    assert int(exports["APNS_PORT"]) > 0
    assert server.returncode == 0


def test_push_backoff_grows_with_jitter_and_a_floor() -> None:
    for attempt, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (30, 60)]):
        delays = [push_backoff_s(attempt) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert len(set(delays)) > 1


# --- h2 made cheap for pushes (workers.apns.push_connection) -------------------------------


def push_headers(n: int, provider_token: str = "bearer " + "t" * 180) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", f"/3/device/{token(n)}".encode()),
        (b"host", b"api.push.apple.com"),
        (b"apns-id", f"00000000-0000-4000-8000-{n:012x}".encode()),
        (b"apns-topic", b"com.example.dispatch"),
        (b"apns-collapse-id", b"job-7"),
        (b"authorization", provider_token.encode()),
    ]


def test_push_header_blocks_decode_to_the_headers_and_keep_the_table_for_the_constants() -> None:
    encoder, decoder = PushHeaderEncoder(), Decoder()
    blocks = [encoder.encode(push_headers(n)) for n in range(50)]
    blocks.append(encoder.encode(push_headers(50, "bearer " + "u" * 180)))  # a new token
    blocks.append(encoder.encode(push_headers(51, "bearer " + "u" * 180)))
    for n, block in enumerate(blocks):
        expected = push_headers(n, "bearer " + ("u" if n >= 50 else "t") * 180)
        assert decoder.decode(block, raw=True) == expected
    table = list(decoder.header_table.dynamic_entries)
    assert not {name for name, _ in table} & PER_PUSH_HEADERS
    # After the first push only the two per-push values are literals: each constant is one byte.
    sizes = [
        len(literal_without_indexing(name, value)) if name in PER_PUSH_HEADERS else 1
        for name, value in push_headers(1)
    ]
    assert len(blocks[1]) == sum(sizes)
    assert len(blocks[51]) == len(blocks[1])


# --- HTTP/2 for pushes (workers.apns.push_connection) against h2's server side -------------


def connected(**server_settings: int) -> tuple[PushConnection, H2Connection, list[Event]]:
    """A PushConnection and an h2 server, past the preface and both SETTINGS (and their acks);
    the client's events from the server's first flight."""
    client = PushConnection()
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    if server_settings:
        server.update_settings({SettingCodes[k.upper()]: v for k, v in server_settings.items()})
    server.receive_data(client.data_to_send())
    events = client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server, events


def exchange(client: PushConnection, server: H2Connection) -> tuple[list, list[Event]]:
    """What the client wrote, to the server; what the server wrote, to the client."""
    server_events = server.receive_data(client.data_to_send())
    return server_events, client.receive_data(server.data_to_send())


def test_pushes_are_sent_and_answered_on_a_push_connection() -> None:
    client, server, _ = connected()
    for n in range(1, 41, 2):
        client.send_request(n, push_headers(n), b'{"aps":{}}')
    requests = {}
    server_events, _ = exchange(client, server)
    for event in server_events:
        if isinstance(event, RequestReceived):
            requests[event.stream_id] = event.headers
        elif isinstance(event, DataReceived):
            assert event.data == b'{"aps":{}}'
            server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    assert requests == {n: push_headers(n) for n in range(1, 41, 2)}
    for n in range(1, 41, 2):
        if n % 3:
            server.send_headers(n, [(":status", "200"), ("apns-id", f"id-{n}")], end_stream=True)
        else:
            server.send_headers(n, [(":status", "410"), ("apns-id", f"id-{n}")])
            server.send_data(n, b'{"reason":"Unregistered"}', end_stream=True)
    _, answers = exchange(client, server)
    assert answers == [
        Answered(n, 200, b"") if n % 3 else Answered(n, 410, b'{"reason":"Unregistered"}')
        for n in range(1, 41, 2)
    ]
    assert client.streams == {}
    # The server was asked for no dynamic table: answers are never Huffman-decoded to fill one.
    assert list(client.decoder.header_table.dynamic_entries) == []


def test_the_servers_settings_are_applied_and_acknowledged() -> None:
    client, server, events = connected(max_concurrent_streams=7, max_frame_size=20_000)
    assert ConcurrencyLimit(7) in events
    assert client.max_frame_size == 20_000
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 9})
    server_events, events = exchange(client, server)
    assert events == [ConcurrencyLimit(9)]
    assert any(
        isinstance(e, SettingsAcknowledged) for e in server.receive_data(client.data_to_send())
    )


def test_a_ping_is_answered() -> None:
    client, server, _ = connected()
    server.ping(b"12345678")
    assert client.receive_data(server.data_to_send()) == []
    [pong] = server.receive_data(client.data_to_send())
    assert isinstance(pong, PingAckReceived) and pong.ping_data == b"12345678"


@pytest.mark.parametrize("stream_window", [10, 1_000_000], ids=["stream", "connection"])
def test_a_body_waits_for_the_windows_and_is_split_into_frames(stream_window: int) -> None:
    """The stream's window (10 bytes) or the connection's (65,535 bytes) holds the body back;
    each WINDOW_UPDATE lets more through, in frames no larger than the server's maximum."""
    client, server, _ = connected(initial_window_size=stream_window)
    body = bytes(range(256)) * 400  # 102,400 bytes
    client.send_request(1, push_headers(1), body)
    received = bytearray()
    ended = False
    for _ in range(20):
        server_events, _ = exchange(client, server)
        for event in server_events:
            if isinstance(event, DataReceived):
                assert len(event.data) <= 16_384
                received += event.data
                server.acknowledge_received_data(event.flow_controlled_length, 1)
            ended = ended or isinstance(event, StreamEnded)
        if ended:
            break
        if stream_window < len(body):
            server.increment_flow_control_window(30_000, stream_id=1)
        client.receive_data(server.data_to_send())
    assert ended and bytes(received) == body


def test_a_header_block_larger_than_a_frame_goes_in_continuation_frames() -> None:
    client, server, _ = connected()
    headers = [*push_headers(1), (b"x-large", b"v" * 40_000)]
    client.send_request(1, headers, b"{}")
    server_events, _ = exchange(client, server)
    [request] = [e for e in server_events if isinstance(e, RequestReceived)]
    assert request.headers == headers
    server.send_headers(1, [(":status", "200"), ("x-large", "w" * 40_000)], end_stream=True)
    _, answers = exchange(client, server)
    assert answers == [Answered(1, 200, b"")]


def test_error_bodies_are_acknowledged_so_the_server_can_keep_sending() -> None:
    """Padded DATA too: padding counts against the window, and is acknowledged."""
    client, server, _ = connected()
    body = b'{"reason":"' + b"x" * 9_000 + b'"}'
    for n in range(1, 61, 2):  # ~270 KB of bodies, four times the connection window
        client.send_request(n, push_headers(n), b"{}")
        exchange(client, server)
        server.send_headers(n, [(":status", "400")])
        server.send_data(n, body, end_stream=True, pad_length=100)  # raises with no window
        _, answers = exchange(client, server)
        assert answers == [Answered(n, 400, body)]


def test_a_reset_stream_ends_its_push_and_goaway_the_connection() -> None:
    client, server, _ = connected()
    client.send_request(1, push_headers(1), b"{}")
    client.send_request(3, push_headers(3), b"{}")
    exchange(client, server)
    server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    assert client.receive_data(server.data_to_send()) == [Reset(1, ErrorCodes.REFUSED_STREAM)]
    server.close_connection(ErrorCodes.NO_ERROR, b"Shutdown", last_stream_id=3)
    assert client.receive_data(server.data_to_send()) == [Terminated(0, 3, by_peer=True)]


def test_an_answer_before_the_whole_request_cancels_the_rest() -> None:
    client, server, _ = connected(initial_window_size=10)
    client.send_request(1, push_headers(1), b"x" * 100)
    exchange(client, server)
    server.send_headers(1, [(":status", "413")])
    server.send_data(1, b'{"reason":"PayloadTooLarge"}', end_stream=True)
    _, answers = exchange(client, server)
    assert answers == [Answered(1, 413, b'{"reason":"PayloadTooLarge"}')]
    [reset] = [e for e in server.receive_data(client.data_to_send()) if isinstance(e, StreamReset)]
    assert reset.error_code == ErrorCodes.CANCEL


def test_a_server_breaking_http2_is_answered_with_goaway() -> None:
    client, server, _ = connected()
    push_promise = b"\x00\x00\x04\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02"  # on stream 1
    assert client.receive_data(push_promise) == [
        Terminated(ErrorCodes.PROTOCOL_ERROR, 0, by_peer=False)
    ]
    [goaway] = server.receive_data(client.data_to_send())
    assert isinstance(goaway, ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert client.receive_data(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678") == []


def test_answer_statuses_are_read_as_hpack_decodes_them() -> None:
    """Against hpack's own Decoder: with a dynamic table (of any size, resized on the way) and
    without one, Huffman-coded or not, indexed or not."""
    chooser = random.Random(7)
    for table_size in (4096, 0):
        encoder, reference, decoder = Encoder(), Decoder(), AnswerHeaderDecoder(65_536)
        encoder.header_table_size = table_size
        for _ in range(2000):
            headers = [(":status", chooser.choice(["200", "410", "400", "503", "201"]))]
            headers.append(("apns-id", f"{chooser.getrandbits(128):032x}"))
            if chooser.random() < 0.3:
                headers.append(("content-type", "application/json"))
            if chooser.random() < 0.2:
                chooser.shuffle(headers)
            if table_size and chooser.random() < 0.01:
                encoder.header_table_size = chooser.choice([0, 100, 4096])
            block = encoder.encode(headers, huffman=chooser.random() < 0.8)
            assert decoder.status(block) == dict(reference.decode(block, raw=True))[b":status"]
            if table_size:
                assert (
                    decoder.header_table.dynamic_entries == reference.header_table.dynamic_entries
                )
    for _ in range(5000):
        coded = chooser.randbytes(chooser.randrange(0, 12))
        try:
            expected: bytes | type[Exception] = decode_huffman(coded)
        except HPACKDecodingError:
            expected = HPACKDecodingError
        try:
            decoded: bytes | type[Exception] = huffman_decoded(coded)
        except HPACKDecodingError:
            decoded = HPACKDecodingError
        assert decoded == expected


def test_a_push_block_reuses_the_shared_encoding_until_the_table_changes() -> None:
    """`encode_push` blocks decode to the push's headers; while the table holds, each shared
    header is a one-byte reference; when the peer resizes the table, a size update opens the
    next block."""
    encoder, decoder = PushHeaderEncoder(), Decoder()
    per_push = {b":path", b"apns-id"}
    shared = sorted(
        (header for header in push_headers(0) if header[0] not in per_push),
        key=lambda header: not header[0].startswith(b":"),  # pseudo-headers first
    )
    for n in range(1, 6):
        if n == 4:
            encoder.header_table_size = 100  # as the peer's SETTINGS_HEADER_TABLE_SIZE does
        path, apns_id = f"/3/device/{token(n)}".encode(), f"id-{n}".encode()
        block = encoder.encode_push(path, apns_id, shared)
        if n == 4:
            assert block[0] & 0xE0 == 0x20
            decoder.max_allowed_table_size = 100
        expected = [(b":path", path), *shared, (b"apns-id", apns_id)]
        assert decoder.decode(block, raw=True) == expected
        per_push_size = len(
            literal_without_indexing(b":path", path) + literal_without_indexing(b"apns-id", apns_id)
        )
        if n in (2, 3):
            assert len(block) == per_push_size + len(shared)
