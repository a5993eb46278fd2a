"""APNs delivery over real HTTP/2 + TLS to the fake APNs server, and the answer rules."""

import time
from datetime import UTC, datetime

import jwt
import pytest

from fake_apns import Behaviour, Credentials, FakeAPNs
from models.db import redis_connection
from settings import settings
from workers import apns
from workers.apns import Outcome, Push, classify, send_pushes
from workers.tasks import push_backoff_s

pytestmark = pytest.mark.usefixtures("apns_settings")


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
        "expiration": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    return Push(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (200, None, Outcome.delivered),
        (410, "Unregistered", Outcome.token_dead),
        (410, "ExpiredToken", Outcome.token_dead),
        (400, "BadDeviceToken", Outcome.token_dead),
        (400, "DeviceTokenNotForTopic", Outcome.token_dead),
        (400, "BadTopic", Outcome.dropped),
        (413, "PayloadTooLarge", Outcome.dropped),
        (429, "TooManyRequests", Outcome.retry),
        (500, "InternalServerError", Outcome.retry),
        (503, "ServiceUnavailable", Outcome.retry),
        (403, "ExpiredProviderToken", Outcome.retry),
        (403, "InvalidProviderToken", Outcome.dropped),
        (None, "timeout", Outcome.retry),
    ],
)
def test_classify(status, reason, outcome) -> None:
    assert classify(status, reason) is outcome


def test_delivered_with_the_contract_headers_and_payload(fake_apns: FakeAPNs) -> None:
    [result] = send_pushes([offer_push()])
    assert (result.outcome, result.status) == (Outcome.delivered, 200)
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
    assert headers["apns-expiration"] == str(
        int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    )
    assert headers["apns-topic"] == settings.apns_topic


def test_optional_headers_are_left_out(fake_apns: FakeAPNs) -> None:
    send_pushes([offer_push(priority=None, collapse_id=None, expiration=None, body=None)])
    [received] = fake_apns.received(token(1))
    assert {"apns-priority", "apns-collapse-id", "apns-expiration"}.isdisjoint(received.headers)
    assert received.payload["aps"]["alert"] == {"title": "New job nearby"}


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


def test_many_error_bodies_do_not_stall_the_connection(fake_apns: FakeAPNs) -> None:
    """aioapns never acknowledged received DATA: ~64 KiB of error bodies stalled it."""
    for n in range(3000):
        fake_apns.behave(token(n), Behaviour(410, "Unregistered"))
    results = send_pushes([offer_push(n) for n in range(3000)], timeout_s=20)
    assert {r.outcome for r in results} == {Outcome.token_dead}


def test_fan_out_is_multiplexed_on_one_connection(fake_apns: FakeAPNs) -> None:
    results = send_pushes([offer_push(n) for n in range(500)])
    assert {r.outcome for r in results} == {Outcome.delivered}
    connections = {p.connection for p in fake_apns.received()}
    assert len(connections) == 1


def test_server_down_is_a_retry(fake_apns: FakeAPNs) -> None:
    fake_apns.down()
    [result] = send_pushes([offer_push()], timeout_s=3)
    assert (result.outcome, result.status) == (Outcome.retry, None)
    fake_apns.up()
    [result] = send_pushes([offer_push()], timeout_s=3)
    assert result.outcome is Outcome.delivered


def test_slow_server_is_a_retry_and_the_connection_survives(fake_apns: FakeAPNs) -> None:
    fake_apns.behave(token(1), Behaviour(200, None, delay_s=3))
    [result] = send_pushes([offer_push(1)], timeout_s=1)
    assert (result.outcome, result.reason) == (Outcome.retry, "timeout")
    time.sleep(2.5)  # the late answer to the abandoned send arrives and is skipped
    [result] = send_pushes([offer_push(2)], timeout_s=3)
    assert result.outcome is Outcome.delivered


def test_provider_token_is_shared_through_redis(fake_apns: FakeAPNs) -> None:
    _forget_local_token()
    send_pushes([offer_push(1)])
    send_pushes([offer_push(2)])
    first, second = fake_apns.received()
    assert first.headers["authorization"] == second.headers["authorization"]
    stored = redis_connection().get(settings.redis_key("apns", "provider_token"))
    assert isinstance(stored, str)
    assert first.headers["authorization"] == f"bearer {stored.partition(':')[2]}"


def test_expired_provider_token_is_resigned_and_the_push_retried(
    fake_apns: FakeAPNs, apns_credentials: Credentials
) -> None:
    # A token Redis says is 25 minutes old, but whose iat Apple counts as over an hour.
    now = time.time()
    expired = jwt.encode(
        {"iss": apns_credentials.team_id, "iat": int(now - 3700)},
        apns_credentials.signing_key_file.read_text(),
        algorithm="ES256",
        headers={"kid": apns_credentials.key_id},
    )
    key = settings.redis_key("apns", "provider_token")
    redis_connection().set(key, f"{int(now - 25 * 60)}:{expired}")
    send_pushes([offer_push(1)])  # whichever token the process held, it must end delivered
    fake_apns.clear()
    redis_connection().set(key, f"{int(now - 25 * 60)}:{expired}")
    _forget_local_token()

    [result] = send_pushes([offer_push(2)])

    assert result.outcome is Outcome.delivered
    first, retried = fake_apns.received(token(2))
    assert (first.status, first.reason) == (403, "ExpiredProviderToken")
    assert retried.status == 200
    assert retried.headers["authorization"] != f"bearer {expired}"
    assert redis_connection().get(key) != f"{int(now - 25 * 60)}:{expired}"


def _forget_local_token() -> None:
    """Make this process read the shared token again, as a newly started worker would."""
    sender = apns._current_sender()
    sender.auth._issued_at = 0.0


def test_not_configured_sends_nothing(monkeypatch: pytest.MonkeyPatch, fake_apns) -> None:
    monkeypatch.setattr(settings, "apns_key_path", "")
    [result] = send_pushes([offer_push()])
    assert (result.outcome, result.reason) == (Outcome.dropped, "apns_not_configured")
    assert fake_apns.received() == []


def test_push_backoff_grows_with_jitter_and_a_floor() -> None:
    for attempt, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (30, 60)]):
        delays = [push_backoff_s(attempt) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert len(set(delays)) > 1
