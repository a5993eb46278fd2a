"""Dispatch's seams in aioapns: where to connect, the contract's headers exactly, and fixes for
aioapns's bugs.

These subclasses copy and override aioapns internals (`send_notification`, `free_channels`,
`request_streams`, `_create_connection`, `discard_connection`), so aioapns is pinned to exactly
AIOAPNS_VERSION; tests/test_apns.py fails on any other. Before moving the pin, re-read each
override below against the new aioapns and drop those whose upstream bug is fixed. Measured
against a thin httpx client in bench/push.py (bench/push_httpx.py): aioapns kept."""

from __future__ import annotations

import asyncio
import json
import ssl
from functools import partial
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
)

from settings import settings
from workers.apns.provider_token import SharedProviderToken
from workers.apns.push_connection import PushConnection
from workers.apns.pushes import APPLE_HOSTS, Push

AIOAPNS_VERSION = "4.0"
MAX_CONNECTIONS = 4  # per environment: one carries up to 1000 streams, more only under load
MAX_CONNECTION_ATTEMPTS = 2


class PushRequest(NotificationRequest):
    """aioapns's request, with an absolute `apns-expiration`: aioapns 4.0 only sends
    `time_to_live` seconds from the moment of sending (a feature it lacks, no upstream issue)."""

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
    are skipped instead of raising InvalidStateError; finished streams are forgotten.

    And cheaper per push than aioapns's (CPU is what limits a push worker): headers built as
    bytes, on a PushConnection (h2 made cheap for pushes); what the pushes of one loop
    iteration send goes out in one write; the idle timer is re-armed when it fires, not on
    every write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = PushConnection()
        self.host = self.APNS_SERVER.encode()
        self.bodies: dict[int, bytearray] = {}
        self.write_due = False
        self.last_write = self.loop.time()

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """aioapns 4.0's own, but with `_headers` and compact JSON; its future is made on
        `self.loop` (aioapns's `asyncio.Future()` binds whatever loop is current)."""
        stream_id = await self.free_channels.acquire()
        self.conn.send_headers(stream_id=stream_id, headers=self._headers(request))
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()
        self.conn.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = answer
        self.request_streams[stream_id] = request.notification_id
        return await answer

    def _headers(self, request: NotificationRequest) -> list[tuple[bytes, bytes]]:
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/3/device/" + request.device_token.encode()),
            (b"host", self.host),
            (b"apns-id", request.notification_id.encode()),
            (b"apns-topic", (request.apns_topic or self.apns_topic).encode()),
        ]
        optional = {
            b"apns-push-type": request.push_type.value if request.push_type else None,
            b"apns-priority": request.priority,
            b"apns-collapse-id": request.collapse_key,
            b"apns-expiration": getattr(request, "expiration", None),
        }
        headers += [(name, str(v).encode()) for name, v in optional.items() if v is not None]
        if self.auth_provider is not None:
            headers.append((b"authorization", self.auth_provider.get_header().encode()))
        return headers

    def flush(self) -> None:
        """Written once the loop has run what is ready now: the pushes a batch of answers
        lets through share one TLS record and one send, instead of one each."""
        if not self.write_due:
            self.write_due = True
            self.loop.call_soon(self._write)

    def _write(self) -> None:
        self.write_due = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self.last_write = self.loop.time()

    def refresh_inactivity_timer(self) -> None:
        """Closed after INACTIVITY_TIME without a write, as aioapns does, without a new timer
        for every write."""
        if self.inactivity_timer is None:
            self.inactivity_timer = self.loop.call_later(self.INACTIVITY_TIME, self._idle_check)

    def _idle_check(self) -> None:
        idle_s = self.loop.time() - self.last_write
        if idle_s >= self.INACTIVITY_TIME:
            self.inactivity_timer = None
            self.close()
        else:
            self.inactivity_timer = self.loop.call_later(
                self.INACTIVITY_TIME - idle_s, self._idle_check
            )

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        """aioapns 4.0 calls `set_result` on a future its caller already cancelled
        (InvalidStateError inside the protocol); the hang after a lost connection reported
        upstream as Fatal1ty/aioapns#41 (open) is the same kind."""
        notification_id = headers.get(b"apns-id", b"").decode()
        status = headers.get(b":status", b"").decode()
        if status != "200":
            self.request_statuses[notification_id] = status  # answered at the stream's end
            return
        request = self.requests.pop(notification_id, None)
        if request is not None and not request.done():
            request.set_result(NotificationResult(notification_id, status))

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        """Acknowledged, so the flow-control window reopens: upstream Fatal1ty/aioapns PR #75
        (open, unmerged). And kept until the stream ends: aioapns 4.0 parses each DATA frame
        as a whole JSON body and waits forever when it is split, not JSON or has no `reason`
        (no upstream issue found)."""
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        self.bodies.setdefault(stream_id, bytearray()).extend(raw_data)

    def on_stream_ended(self, stream_id: int) -> None:
        """Every stream forgotten at its end: aioapns 4.0 never forgets the stream of a 200
        answer, so `request_streams` grows for the connection's life (no upstream issue found)."""
        body = bytes(self.bodies.pop(stream_id, b""))
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            status = self.request_statuses.pop(notification_id, None)
            request = self.requests.pop(notification_id, None)
            if status is not None and request is not None and not request.done():
                request.set_result(_error_result(notification_id, status, body))
        super().on_stream_ended(stream_id)  # frees the stream's slot

    def connection_lost(self, exc: Exception | None) -> None:
        """aioapns 4.0 calls `set_exception` on every waiting future, cancelled ones too: the
        first InvalidStateError leaves the rest waiting forever (Fatal1ty/aioapns#41, open)."""
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
        """aioapns 4.0 gives every connection its own provider token (so many processes trip
        TooManyProviderTokenUpdates) and no host or port to connect to: our protocol class and
        the shared token, through its private `_create_connection` (no upstream issue)."""
        factory = partial(
            self.protocol_class,
            settings.apns_topic,
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns types it NoReturn
            self.auth,
        )
        return await self._create_connection(factory)

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        """A connection lost before the pool added it: aioapns 4.0 raises ValueError from
        `list.remove` inside `connection_lost` (Fatal1ty/aioapns#55, open)."""
        if connection in self.connections:
            super().discard_connection(connection)
