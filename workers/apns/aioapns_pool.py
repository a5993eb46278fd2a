"""Dispatch's seams in aioapns: where to connect, the contract's headers exactly, and fixes for
aioapns's bugs.

These subclasses copy and override aioapns internals (`conn`, both `send_notification`s,
`data_received`, `free_channels`, `connection_lost`, `_create_connection`, `discard_connection`),
so aioapns is pinned to exactly AIOAPNS_VERSION; tests/test_apns.py fails on any other. Before
moving the pin, re-read each override below against the new aioapns and drop those whose
upstream bug is fixed. Measured against a thin httpx client in bench/push.py
(bench/push_httpx.py): aioapns kept."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from functools import partial
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    NoAvailableStreamIDError,  # h2's, which aioapns's stream ids raise
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as NoConnection

from settings import settings
from workers.apns.provider_token import SharedProviderToken
from workers.apns.push_connection import (
    Answered,
    ConcurrencyLimit,
    PushConnection,
    Reset,
    Terminated,
)
from workers.apns.push_headers import SharedHeaders
from workers.apns.pushes import APPLE_HOSTS, Push

log = logging.getLogger(__name__)

AIOAPNS_VERSION = "4.0"
MAX_CONNECTIONS = 4  # per environment: one carries up to 1000 streams, more only under load
MAX_CONNECTION_ATTEMPTS = 2
READ_PAUSE_S = 0.010  # an answer waits at most this long to be read with the next ones


class PushRequest(NotificationRequest):
    """aioapns's request, with an absolute `apns-expiration` (aioapns 4.0 only sends
    `time_to_live` seconds from the moment of sending: a feature it lacks, no upstream issue),
    and its body already encoded: the pushes of a fan-out share one (`encoded_payload`)."""

    __slots__ = ("expiration", "body")

    def __init__(self, push: Push, body: bytes, notification_id: str) -> None:
        super().__init__(
            device_token=push.token,
            message=push.payload(),
            notification_id=notification_id,
            priority=push.priority,
            collapse_key=push.collapse_id,
            push_type=_PUSH_TYPES[push.push_type],
        )
        self.expiration = int(push.expiration.timestamp()) if push.expiration else None
        self.body = body


_PUSH_TYPES = {push_type.value: push_type for push_type in PushType}  # not an Enum call a push


def encoded_payload(push: Push) -> bytes:
    """The push's JSON body as sent: compact, UTF-8."""
    return json.dumps(push.payload(), ensure_ascii=False, separators=(",", ":")).encode()


class StreamReset(Exception):
    """APNs reset the push's stream (or broke HTTP/2 answering it): no answer came."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset with error code {error_code}")
        self.error_code = error_code


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


HeaderKey = tuple[str | None, PushType | None, int | None, str | None, int | None, str | None]
SHARED_HEADER_SETS = 16  # distinct (topic, type, priority, collapse id, expiry, token) kept


class DispatchProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol on a PushConnection (HTTP/2 for pushes, in place of h2's
    H2Connection: see workers/apns/push_connection.py) with the contract's headers exactly.

    Answers are matched to their sends by stream id (aioapns matched the `apns-id` echoed back,
    which made every answer's Huffman-coded `apns-id` be decoded), and that also fixes aioapns
    4.0's bugs: received DATA is acknowledged (it never was, so ~64 KiB of error bodies stalled
    a connection); an error answer is read when its stream ends, so a missing or non-JSON body
    cannot hang a send; answers and losses for sends already given up on (a caller's timeout)
    are skipped instead of raising InvalidStateError; a reset stream ends its send (aioapns
    logged it as an unknown event and waited); finished streams are forgotten.

    And cheaper per push: the headers every push of a fan-out shares are built and encoded
    once; answers are read in batches, and what the pushes of one loop iteration send goes out
    in one write; the idle timer is re-armed when it fires, not on every write."""

    conn: PushConnection  # type: ignore[assignment]  # aioapns declares h2's H2Connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = PushConnection()
        self.host = self.APNS_SERVER.encode()
        self.answers: dict[int, tuple[asyncio.Future[NotificationResult], str]] = {}
        self.shared_headers: dict[HeaderKey, SharedHeaders] = {}
        self.write_due = False
        self.reading_paused = False
        self.last_write = self.loop.time()

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """aioapns 4.0's own, on our connection: its future is made on `self.loop` (aioapns's
        `asyncio.Future()` binds whatever loop is current), and a send on a connection already
        closing fails at once instead of waiting for an answer that cannot come."""
        stream_id = await self.free_channels.acquire()
        if self.transport is None or self.transport.is_closing():
            self.free_channels.release()
            raise ConnectionClosed("the connection is closing")
        self.conn.send_push(
            stream_id,
            b"/3/device/" + request.device_token.encode(),
            request.notification_id.encode(),
            self._shared_headers(request),
            _body(request),
        )
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.answers[stream_id] = (answer, request.notification_id)
        return await answer

    def _shared_headers(self, request: NotificationRequest) -> SharedHeaders:
        """Every header but `:path` and `apns-id`: the same for the pushes of a fan-out, so
        built once, and the same list each time (its encoding is remembered by identity)."""
        authorization = self.auth_provider.get_header() if self.auth_provider else None
        expiration = getattr(request, "expiration", None)
        key = (
            request.apns_topic,
            request.push_type,
            request.priority,
            request.collapse_key,
            expiration,
            authorization,
        )
        shared = self.shared_headers.get(key)
        if shared is None:
            if len(self.shared_headers) >= SHARED_HEADER_SETS:
                self.shared_headers.clear()
            shared = self.shared_headers[key] = self._build_shared_headers(key)
        return shared

    def _build_shared_headers(self, key: HeaderKey) -> SharedHeaders:
        topic, push_type, priority, collapse_key, expiration, authorization = key
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b"host", self.host),
            (b"apns-topic", (topic or self.apns_topic).encode()),
        ]
        optional = {
            b"apns-push-type": push_type.value if push_type else None,
            b"apns-priority": priority,
            b"apns-collapse-id": collapse_key,
            b"apns-expiration": expiration,
            b"authorization": authorization,
        }
        headers += [(name, str(v).encode()) for name, v in optional.items() if v is not None]
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

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if type(event) is Answered:
                self._answered(event)
            elif type(event) is Reset:
                self._ended(event.stream_id, StreamReset(event.error_code))
            elif type(event) is ConcurrencyLimit:
                self.free_channels.bound = event.streams
            elif type(event) is Terminated:
                self._terminated(event)
        if self.conn.outbound:
            self.flush()
        if self.answers and not self.reading_paused:
            self._pause_reading()

    def _pause_reading(self) -> None:
        """Answers read in batches: while sends wait for answers, reading stops for
        READ_PAUSE_S after each read, so the next read takes the answers that came meanwhile
        at once, and the pushes they let through leave in one write. APNs answers each push
        on its own (a TLS record each): read as they come, every answer cost a wake-up of the
        loop, a decryption and a write of its own, the sender's largest cost per push."""
        if self.transport is None or self.transport.is_closing():
            return
        self.reading_paused = True
        self.transport.pause_reading()
        self.loop.call_later(READ_PAUSE_S, self._resume_reading)

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _answered(self, answer: Answered) -> None:
        self.free_channels.release()
        waiting = self.answers.pop(answer.stream_id, None)
        if waiting is None or waiting[0].done():
            return  # given up on by its caller
        future, notification_id = waiting
        if answer.status == 200:
            future.set_result(NotificationResult(notification_id, "200"))
        else:
            future.set_result(_error_result(notification_id, str(answer.status), answer.body))

    def _ended(self, stream_id: int, error: Exception) -> None:
        self.free_channels.release()
        waiting = self.answers.pop(stream_id, None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_exception(error)

    def _terminated(self, event: Terminated) -> None:
        """Closed at once, as aioapns 4.0 does (the sends still waiting end as
        ConnectionClosed, which aioapns's pool retries once on another connection)."""
        log.warning(
            "APNs connection %s ended: %s, error code %d, last stream %d",
            self,
            "GOAWAY from APNs" if event.by_peer else "APNs broke HTTP/2",
            event.error_code,
            event.last_stream_id,
        )
        self._write()  # our GOAWAY, if we sent one
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Every send still waiting ends (aioapns 4.0 failed cancelled ones too, and the first
        InvalidStateError left the rest waiting forever: Fatal1ty/aioapns#41, open)."""
        lost = ConnectionClosed(str(exc))
        waiting, self.answers = self.answers, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(lost)
        super().connection_lost(exc)


def _body(request: NotificationRequest) -> bytes:
    if isinstance(request, PushRequest):
        return request.body
    return json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()


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

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """aioapns 4.0's, without its two debug log records and its `acquire` coroutine for
        every push: a connection with a free stream is taken at once, and only when none has
        one does aioapns's `acquire` (new connection, or waiting) run. The same attempts: a
        closed connection is retried on another up to MAX_CONNECTION_ATTEMPTS times, a
        connection out of stream ids is closed (h2's FlowControlError, which aioapns also
        catches, cannot come from our PushConnection)."""
        for _ in range(self.max_connection_attempts):
            connection = next((c for c in self.connections if not c.is_busy), None)
            if connection is None:
                try:
                    connection = await self.acquire()
                except NoConnection:
                    log.warning("APNs push %s: no connection", request.notification_id)
                    await asyncio.sleep(1)
                    continue
            try:
                return await connection.send_notification(request)
            except NoAvailableStreamIDError:
                connection.close()
            except ConnectionClosed:
                log.warning("APNs push %s: connection closed", request.notification_id)
        log.error(
            "APNs push %s: no answer after %d attempts",
            request.notification_id,
            self.max_connection_attempts,
        )
        raise MaxAttemptsExceeded

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        """A connection lost before the pool added it: aioapns 4.0 raises ValueError from
        `list.remove` inside `connection_lost` (Fatal1ty/aioapns#55, open)."""
        if connection in self.connections:
            super().discard_connection(connection)
