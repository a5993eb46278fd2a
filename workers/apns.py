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
MAX_IN_FLIGHT = 100
TOKEN_REUSE_S = 40 * 60  # shared token re-signed after 40 min: inside Apple's 20–60 min window
TOKEN_MIN_AGE_FOR_RESIGN_S = 20 * 60
DEAD_TOKEN_REASONS = {
    410: {"Unregistered", "ExpiredToken"},
    400: {"BadDeviceToken", "DeviceTokenNotForTopic"},
}
RETRY_STATUSES = {429, 500, 503}


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
    """What a token's answer means: delivered, retry later, token dead, or drop."""
    if status == 200:
        return Outcome.delivered
    if status is None or status in RETRY_STATUSES:
        return Outcome.retry
    if reason in DEAD_TOKEN_REASONS.get(status, set()):
        return Outcome.token_dead
    if status == 403 and reason == "ExpiredProviderToken":
        return Outcome.retry
    return Outcome.dropped


def apns_enabled() -> bool:
    return settings.apns_configured


# --- provider token, shared by every worker process through Redis ---------------------------


def _sign(key: str, now: float) -> str:
    return jwt.encode(
        {"iss": settings.apns_team_id, "iat": int(now)},
        key,
        algorithm="ES256",
        headers={"kid": settings.apns_key_id},
    )


class SharedProviderToken(AuthorizationHeaderProvider):
    """The `authorization` header for every connection of this process.

    The token lives in Redis as `iat:jwt`; a process reuses it while it is younger than
    TOKEN_REUSE_S, and one process (holding a short lock) signs the next. A forced re-sign
    (after ExpiredProviderToken) happens only if the token is at least 20 minutes old."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._issued_at = 0.0
        self._token = ""
        self._lock = threading.Lock()

    def get_header(self) -> str:
        with self._lock:
            if time.time() - self._issued_at >= TOKEN_REUSE_S:
                self._refresh(force=False)
            return f"bearer {self._token}"

    def force_refresh(self) -> None:
        with self._lock:
            self._refresh(force=True)

    def _refresh(self, force: bool) -> None:
        now = time.time()
        try:
            self._issued_at, self._token = self._shared(now, force)
        except redis.RedisError as exc:
            log.warning("provider token not shared (Redis unavailable), signing locally: %s", exc)
            if force or now - self._issued_at >= TOKEN_REUSE_S:
                self._issued_at, self._token = now, _sign(self.key, now)

    def _shared(self, now: float, force: bool) -> tuple[float, str]:
        r = redis_connection()
        key = settings.redis_key("apns", "provider_token")
        for _ in range(20):
            current = _parse(r.get(key))
            if current is not None:
                age = now - current[0]
                if age < TOKEN_REUSE_S and not (force and age >= TOKEN_MIN_AGE_FOR_RESIGN_S):
                    return current
            if r.set(f"{key}:lock", os.getpid(), nx=True, ex=10):
                try:
                    token = (now, _sign(self.key, now))
                    r.set(key, f"{int(now)}:{token[1]}", ex=60 * 60)
                    return float(int(now)), token[1]
                finally:
                    r.delete(f"{key}:lock")
            time.sleep(0.05)  # another process is signing: take its token
        raise redis.RedisError("provider token lock not released")


def _parse(raw: Any) -> tuple[float, str] | None:
    if not raw:
        return None
    issued_at, _, token = str(raw).partition(":")
    return float(issued_at), token


# --- the aioapns seams: where to connect, and two fixes -----------------------------------


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


class DispatchProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol, with the host chosen by configuration, the contract's headers
    exactly, and two fixes: received DATA is acknowledged (aioapns never does, so error
    bodies stall a connection after ~64 KiB), and answers or losses for sends already given
    up on are skipped instead of raising InvalidStateError."""

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        stream_id = await self.free_channels.acquire()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        expiration = getattr(request, "expiration", None)
        if expiration is not None:
            headers.append(("apns-expiration", str(expiration)))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        self.conn.send_headers(stream_id=stream_id, headers=headers)
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()
        self.conn.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = answer
        self.request_streams[stream_id] = request.notification_id
        return await answer

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        notification_id = self.request_streams.get(stream_id)
        if notification_id is not None and self._given_up(notification_id):
            self.request_streams.pop(stream_id, None)
            self.request_statuses.pop(notification_id, None)
            return
        super().on_data_received(raw_data, stream_id)

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode("utf8")
        if self._given_up(notification_id) and headers.get(b":status") == b"200":
            return
        super().on_response_received(headers)

    def on_stream_ended(self, stream_id: int) -> None:
        self.request_streams.pop(stream_id, None)  # aioapns keeps successful streams forever
        super().on_stream_ended(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        self.requests = {nid: fut for nid, fut in self.requests.items() if not fut.done()}
        super().connection_lost(exc)

    def _given_up(self, notification_id: str) -> bool:
        future = self.requests.get(notification_id)
        if future is not None and future.done():
            del self.requests[notification_id]
            return True
        return False


def _protocol_for(environment: str) -> type[APNsTLSClientProtocol]:
    host = settings.apns_host or APPLE_HOSTS[environment]
    return type(
        f"DispatchProtocol_{environment}",
        (DispatchProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": settings.apns_port},
    )


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.apns_ca_file or None)
    context.set_alpn_protocols(["h2"])
    return context


class DispatchPool(APNsKeyConnectionPool):
    """aioapns's key pool, with our protocol class and the shared provider token."""

    def __init__(self, environment: str, key: str, auth: SharedProviderToken) -> None:
        super().__init__(
            key=key,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            max_connections=4,
            max_connection_attempts=2,
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


# --- one event loop per process --------------------------------------------------------------


class _Sender:
    """The process's loop thread, its pools and the bound on pushes in flight."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="apns", daemon=True)
        self.thread.start()
        self.key = Path(settings.apns_key_path).read_text()
        self.auth = SharedProviderToken(self.key)
        self.pools: dict[str, DispatchPool] = {}
        self.in_flight: asyncio.Semaphore | None = None

    def pool(self, environment: str) -> DispatchPool:
        if environment not in self.pools:
            self.pools[environment] = DispatchPool(environment, self.key, self.auth)
        return self.pools[environment]

    async def send_all(self, pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        if self.in_flight is None:
            self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        return list(await asyncio.gather(*(self.send(p, timeout_s) for p in pushes)))

    async def send(self, push: Push, timeout_s: float) -> PushResult:
        assert self.in_flight is not None
        async with self.in_flight:
            status, reason = await self._attempt(push, timeout_s)
            if status == 403 and reason == "ExpiredProviderToken":
                await asyncio.to_thread(self.auth.force_refresh)
                status, reason = await self._attempt(push, timeout_s)
        outcome = classify(status, reason)
        if outcome is not Outcome.delivered:
            log.info("push to %s… answered %s %s: %s", push.token[:8], status, reason, outcome)
        return PushResult(push, outcome, status, reason)

    async def _attempt(self, push: Push, timeout_s: float) -> tuple[int | None, str | None]:
        try:
            result = await asyncio.wait_for(
                self.pool(push.environment).send_notification(PushRequest(push)), timeout_s
            )
        except TimeoutError:
            return None, "timeout"
        except (ConnectionError, ConnectionClosed, MaxAttemptsExceeded, OSError) as exc:
            return None, f"connection: {type(exc).__name__}"
        return int(result.status), result.description


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _current_sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is None or _sender.pid != os.getpid():
            _sender = _Sender()  # a forked child never reuses its parent's loop or sockets
        return _sender


def send_pushes(pushes: Sequence[Push], timeout_s: float = 15.0) -> list[PushResult]:
    """Send every push and wait for all answers (each bounded by `timeout_s`).
    One result per push, in order. With no APNs key configured nothing is sent."""
    if not pushes:
        return []
    if not apns_enabled():
        return [PushResult(p, Outcome.dropped, None, "apns_not_configured") for p in pushes]
    sender = _current_sender()
    future = asyncio.run_coroutine_threadsafe(sender.send_all(pushes, timeout_s), sender.loop)
    return future.result(timeout=timeout_s * 2 + 5)
