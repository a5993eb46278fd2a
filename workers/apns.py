"""APNs over HTTP/2 with token auth, through aioapns, callable from synchronous Celery tasks.

Each worker process runs one asyncio loop in a daemon thread (re-created after a fork) and
keeps one aioapns connection pool per APNs environment on it, so the pushes of a fan-out are
multiplexed on long-lived HTTP/2 connections. The provider token (ES256 JWT) is signed by one
process and shared through Redis, so many workers never trip TooManyProviderTokenUpdates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import redis
from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded

from models.db import redis_connection
from settings import settings

log = logging.getLogger(__name__)

APPLE_HOSTS = {"production": "api.push.apple.com", "sandbox": "api.sandbox.push.apple.com"}
MAX_IN_FLIGHT = 100  # aioapns is fastest with 50–200 in flight; more only makes it poll
MAX_CONNECTIONS = 4  # per environment: one carries up to 1000 streams, more only under load
MAX_CONNECTION_ATTEMPTS = 2
TOKEN_REUSE_S = 40 * 60  # a shared token is re-signed after 40 min: inside Apple's 20–60 min
TOKEN_MIN_AGE_FOR_RESIGN_S = 20 * 60  # Apple answers TooManyProviderTokenUpdates below this
TOKEN_LOCK_WAIT_S = 2.0
RESULT_GRACE_S = 5.0
DEAD_TOKEN_REASONS = {
    410: frozenset({"Unregistered", "ExpiredToken"}),
    400: frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"}),
}
EXPIRED_PROVIDER_TOKEN = (403, "ExpiredProviderToken")


class Outcome(StrEnum):
    delivered = "delivered"
    retry = "retry"
    token_dead = "token_dead"
    dropped = "dropped"


@dataclass(frozen=True)
class Push:
    token: str
    environment: str
    title: str
    body: str | None
    data: dict[str, Any] = field(default_factory=dict)
    push_type: str = "alert"
    priority: int | None = 10
    collapse_id: str | None = None
    expiration: datetime | None = None

    def __post_init__(self) -> None:
        """A bad environment or push type is a programming error: fail where it is made."""
        if self.environment not in APPLE_HOSTS:
            raise ValueError(f"unknown APNs environment {self.environment!r}")
        PushType(self.push_type)

    def payload(self) -> dict[str, Any]:
        alert: dict[str, str] = {"title": self.title}
        if self.body is not None:
            alert["body"] = self.body
        return {"aps": {"alert": alert, "sound": "default"}, **self.data}


@dataclass(frozen=True)
class PushResult:
    push: Push
    outcome: Outcome
    status: int | None
    reason: str | None


def classify(status: int | None, reason: str | None) -> Outcome:
    """What a token's answer means: delivered, retry later, token dead, or drop.
    `status` None is no answer at all (timeout, connection failure)."""
    if status == 200:
        return Outcome.delivered
    if status is None or status == 429 or status >= 500:
        return Outcome.retry
    if reason in DEAD_TOKEN_REASONS.get(status, frozenset()):
        return Outcome.token_dead
    if (status, reason) == EXPIRED_PROVIDER_TOKEN:
        return Outcome.retry  # send_pushes already re-signed and retried once
    return Outcome.dropped


def apns_enabled() -> bool:
    """Whether a key is configured; without one pushes are skipped (callers warn at start)."""
    return settings.apns_configured


# --- provider token, shared by every worker process through Redis ---------------------------


def _sign(key: str, issued_at: int) -> str:
    return jwt.encode(
        {"iss": settings.apns_team_id, "iat": issued_at},
        key,
        algorithm="ES256",
        headers={"kid": settings.apns_key_id},
    )


def _parse_shared(raw: Any) -> tuple[int, str] | None:
    """Redis holds the shared token as `<iat>:<jwt>`."""
    issued_at, _, token = str(raw or "").partition(":")
    if not issued_at.isdigit() or not token:
        return None
    return int(issued_at), token


class SharedProviderToken(AuthorizationHeaderProvider):
    """The `authorization` header for every connection of this process.

    aioapns asks for the header on the event loop for every request, so `get_header` only
    returns the token held; `refresh` (blocking, run in a thread) keeps it young enough. The
    token lives in Redis; a process reuses it while it is younger than TOKEN_REUSE_S, and one
    process (holding a short lock) signs the next. After ExpiredProviderToken (`rejected`) it
    is replaced, but only if at least 20 minutes old: Apple refuses faster updates."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.issued_at = 0
        self.token = ""
        self._lock = threading.Lock()

    def get_header(self) -> str:
        return f"bearer {self.token}"

    def refresh(self, rejected: bool = False) -> None:
        with self._lock:
            now = time.time()
            if not self._too_old(now - self.issued_at, rejected):
                return
            try:
                self.issued_at, self.token = self._shared(now, rejected)
            except redis.RedisError as exc:
                log.warning("APNs provider token not shared (Redis: %s); signing locally", exc)
                self.issued_at, self.token = self._signed(now)

    @staticmethod
    def _too_old(age_s: float, rejected: bool) -> bool:
        return age_s >= (TOKEN_MIN_AGE_FOR_RESIGN_S if rejected else TOKEN_REUSE_S)

    def _signed(self, now: float) -> tuple[int, str]:
        return int(now), _sign(self.key, int(now))

    def _shared(self, now: float, rejected: bool) -> tuple[int, str]:
        r = redis_connection()
        key = settings.redis_key("apns", "provider_token")
        lock = settings.redis_key("apns", "provider_token", "lock")
        give_up_at = time.monotonic() + TOKEN_LOCK_WAIT_S
        while time.monotonic() < give_up_at:
            shared = _parse_shared(r.get(key))
            if shared is not None and not self._too_old(now - shared[0], rejected):
                return shared
            if r.set(lock, os.getpid(), nx=True, ex=10):
                try:
                    signed = self._signed(now)
                    r.set(key, f"{signed[0]}:{signed[1]}", ex=60 * 60)
                    return signed
                finally:
                    r.delete(lock)
            time.sleep(0.05)  # another process is signing: take its token
        log.warning("APNs provider token lock held too long; signing locally")
        return self._signed(now)


# --- the aioapns seams: where to connect, the exact headers, and two fixes ------------------


class PushRequest(NotificationRequest):
    """aioapns's request, with an absolute `apns-expiration` (it only knows a relative TTL)."""

    __slots__ = ("expiration",)

    def __init__(self, push: Push) -> None:
        super().__init__(
            device_token=push.token,
            message=push.payload(),
            priority=push.priority,
            collapse_key=push.collapse_id,
            push_type=PushType(push.push_type),
        )
        self.expiration = int(push.expiration.timestamp()) if push.expiration else None


def _error_result(notification_id: str, status: str, body: bytes) -> NotificationResult:
    """An error answer; a body that is not Apple's JSON still ends the wait."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    return NotificationResult(
        notification_id, status, description=answer.get("reason"), timestamp=answer.get("timestamp")
    )


class DispatchProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol with the contract's headers exactly, and its 4.0 bugs fixed:
    received DATA is acknowledged (it never was, so ~64 KiB of error bodies stalled a
    connection); an error answer is read when its stream ends, so a missing or non-JSON body
    cannot hang a send; answers and losses for sends already given up on (a caller's timeout)
    are skipped instead of raising InvalidStateError; finished streams are forgotten."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: dict[int, bytearray] = {}

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        stream_id = await self.free_channels.acquire()
        self.conn.send_headers(stream_id=stream_id, headers=self._headers(request))
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()
        self.conn.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = answer
        self.request_streams[stream_id] = request.notification_id
        return await answer

    def _headers(self, request: NotificationRequest) -> list[tuple[str, str]]:
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        optional = {
            "apns-push-type": request.push_type.value if request.push_type else None,
            "apns-priority": request.priority,
            "apns-collapse-id": request.collapse_key,
            "apns-expiration": getattr(request, "expiration", None),
        }
        headers += [(name, str(value)) for name, value in optional.items() if value is not None]
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode()
        status = headers.get(b":status", b"").decode()
        if status != "200":
            self.request_statuses[notification_id] = status  # answered at the stream's end
            return
        request = self.requests.pop(notification_id, None)
        if request is not None and not request.done():
            request.set_result(NotificationResult(notification_id, status))

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        self.bodies.setdefault(stream_id, bytearray()).extend(raw_data)

    def on_stream_ended(self, stream_id: int) -> None:
        body = bytes(self.bodies.pop(stream_id, b""))
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            status = self.request_statuses.pop(notification_id, None)
            request = self.requests.pop(notification_id, None)
            if status is not None and request is not None and not request.done():
                request.set_result(_error_result(notification_id, status, body))
        super().on_stream_ended(stream_id)  # frees the stream's slot

    def connection_lost(self, exc: Exception | None) -> None:
        self.requests = {nid: fut for nid, fut in self.requests.items() if not fut.done()}
        self.bodies.clear()
        super().connection_lost(exc)


def _protocol_for(environment: str) -> type[APNsTLSClientProtocol]:
    host = settings.apns_host or APPLE_HOSTS[environment]
    return type(
        f"DispatchProtocol_{environment}",
        (DispatchProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": settings.apns_port},
    )


def _ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus APNS_CA_FILE (a test server's CA) when set."""
    context = ssl.create_default_context()
    if settings.apns_ca_file:
        context.load_verify_locations(cafile=settings.apns_ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class DispatchPool(APNsKeyConnectionPool):
    """aioapns's key pool, with our protocol class and the process's shared provider token.
    Create it on the running loop (aioapns binds the loop it finds)."""

    def __init__(self, environment: str, key: str, auth: SharedProviderToken) -> None:
        super().__init__(
            key=key,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            max_connections=MAX_CONNECTIONS,
            max_connection_attempts=MAX_CONNECTION_ATTEMPTS,
            use_sandbox=environment == "sandbox",
            ssl_context=_ssl_context(),
        )
        self.protocol_class = _protocol_for(environment)
        self.auth = auth

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self.protocol_class,
            settings.apns_topic,
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns types it NoReturn
            self.auth,
        )
        return await self._create_connection(factory)

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        if connection in self.connections:  # lost before the pool had added it
            super().discard_connection(connection)


# --- one event loop per process --------------------------------------------------------------


def _apns_config() -> tuple[str | int, ...]:
    return (
        settings.apns_key_path,
        settings.apns_key_id,
        settings.apns_team_id,
        settings.apns_topic,
        settings.apns_host,
        settings.apns_port,
        settings.apns_ca_file,
    )


class _Sender:
    """The process's loop thread, its pools and the bound on pushes in flight."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.config = _apns_config()
        self.key = Path(settings.apns_key_path).read_text()
        self.auth = SharedProviderToken(self.key)
        self.pools: dict[str, DispatchPool] = {}
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="apns", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def pool(self, environment: str) -> DispatchPool:
        if environment not in self.pools:
            self.pools[environment] = DispatchPool(environment, self.key, self.auth)
        return self.pools[environment]

    async def send_all(self, pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        """Every push answered, or given up on, by `timeout_s` from now."""
        deadline = self.loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.to_thread(self.auth.refresh)
        except TimeoutError:
            return [_result(push, None, "timeout") for push in pushes]
        return list(await asyncio.gather(*(self.send(push, deadline) for push in pushes)))

    async def send(self, push: Push, deadline: float) -> PushResult:
        try:
            async with asyncio.timeout_at(deadline), self.in_flight:
                status, reason = await self._deliver(push)
        except TimeoutError:
            status, reason = None, "timeout"
        return _result(push, status, reason)

    async def _deliver(self, push: Push) -> tuple[int | None, str | None]:
        """One send; after ExpiredProviderToken, one more with a freshly signed token."""
        status, reason = await self._attempt(push)
        if (status, reason) == EXPIRED_PROVIDER_TOKEN:
            await asyncio.to_thread(self.auth.refresh, True)
            status, reason = await self._attempt(push)
        return status, reason

    async def _attempt(self, push: Push) -> tuple[int | None, str | None]:
        try:
            result = await self.pool(push.environment).send_notification(PushRequest(push))
        except (ConnectionClosed, MaxAttemptsExceeded, OSError) as exc:
            return None, f"connection: {type(exc).__name__}"
        except Exception:
            # Not a known failure: logged in full, and retried rather than losing the batch.
            log.exception("APNs push to %s… failed unexpectedly", push.token[:8])
            return None, "error"
        return int(result.status), result.description

    def close(self) -> None:
        """Close the connections and the loop (at process shutdown, or new settings)."""
        asyncio.run_coroutine_threadsafe(self._close_pools(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _close_pools(self) -> None:
        for pool in self.pools.values():
            pool.close()
        give_up_at = self.loop.time() + 5
        while any(pool.connections for pool in self.pools.values()):
            if self.loop.time() > give_up_at:
                break
            await asyncio.sleep(0.01)  # let each connection_lost run
        await self.loop.shutdown_default_executor()


def _result(push: Push, status: int | None, reason: str | None) -> PushResult:
    outcome = classify(status, reason)
    if outcome is Outcome.dropped:
        log.warning("APNs push to %s… dropped: %s %s", push.token[:8], status, reason)
    elif outcome is not Outcome.delivered:
        log.info("APNs push to %s… answered %s %s: %s", push.token[:8], status, reason, outcome)
    return PushResult(push, outcome, status, reason)


_sender: _Sender | None = None
_sender_lock = threading.Lock()
_inherited: list[_Sender] = []  # a parent's sender seen after fork: never used, never closed


def _current_sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.pid != os.getpid():
            _inherited.append(_sender)  # its loop thread did not survive the fork
            _sender = None
        if _sender is not None and _sender.config != _apns_config():
            _sender.close()
            _sender = None
        if _sender is None:
            _sender = _Sender()
        return _sender


def _after_fork_in_child() -> None:
    global _sender_lock
    _sender_lock = threading.Lock()  # it may have been held by a thread that is gone


os.register_at_fork(after_in_child=_after_fork_in_child)


def send_pushes(pushes: Sequence[Push], timeout_s: float = 15.0) -> list[PushResult]:
    """Send every push and wait for all answers, for at most `timeout_s` in all (a push not
    answered by then is a retry). One result per push, in order. Blocking; thread-safe.
    With no APNs key configured nothing is sent."""
    if not pushes:
        return []
    if not apns_enabled():
        return [PushResult(p, Outcome.dropped, None, "apns_not_configured") for p in pushes]
    sender = _current_sender()
    future = asyncio.run_coroutine_threadsafe(sender.send_all(pushes, timeout_s), sender.loop)
    try:
        return future.result(timeout=timeout_s + RESULT_GRACE_S)
    except TimeoutError:
        future.cancel()
        log.error("APNs loop did not answer %d pushes within %.0f s", len(pushes), timeout_s)
        raise


def shutdown() -> None:
    """Close this process's APNs connections cleanly (worker shutdown, end of tests)."""
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.pid == os.getpid():
            _sender.close()
        _sender = None
