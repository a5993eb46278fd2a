"""Dispatch's seams in aioapns: where to connect, the contract's headers exactly, and fixes for
aioapns's bugs.

These subclasses copy and override aioapns internals (`conn`, `free_channels`, `data_received`,
`close`, `connection_lost`, `_create_connection`, `discard_connection`; a push no longer goes
through either `send_notification` or the pool's `acquire`), so aioapns is pinned to exactly
AIOAPNS_VERSION; tests/test_apns.py fails on any other. Before moving the pin, re-read each
override below against the new aioapns and drop those whose upstream bug is fixed. Measured
against a thin httpx client in bench/push.py (bench/push_httpx.py): aioapns kept."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    NoAvailableStreamIDError,  # h2's, which aioapns's stream ids raise
)
from aioapns.exceptions import ConnectionClosed

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
CONNECT_RETRY_S = 1.0  # after a failed connection, the next attempt waits this long
CONNECT_TIMEOUT_S = 10.0  # to connect, and to have the server's first SETTINGS
READ_PAUSE_S = 0.010  # an answer waits at most this long to be read with the next ones
HIGHEST_STREAM_ID = 2**31 - 1
DEFAULT_STREAM_BOUND = 1000  # aioapns's, until the server says otherwise

PushFields = tuple[str, int | None, str | None, int | None]  # type, priority, collapse id, expiry


def push_fields(push: Push) -> PushFields:
    """The headers a push has in common with the rest of its fan-out, as sent. Its
    `apns-expiration` is absolute (aioapns 4.0 only sends `time_to_live` seconds from the
    moment of sending: a feature it lacks, no upstream issue)."""
    expiration = int(push.expiration.timestamp()) if push.expiration else None
    return push.push_type, push.priority, push.collapse_id, expiration


def encoded_payload(push: Push) -> bytes:
    """The push's JSON body as sent: compact, UTF-8."""
    return json.dumps(push.payload(), ensure_ascii=False, separators=(",", ":")).encode()


class Waiting(Protocol):
    """What waits for the answer to a push sent on a connection."""

    def answered(self, status: int, reason: str | None) -> None: ...

    def failed(self, error: Exception) -> None:
        """No answer will come: the stream was reset (StreamReset) or the connection lost
        (ConnectionClosed)."""


class StreamReset(Exception):
    """APNs reset the push's stream (or broke HTTP/2 answering it): no answer came."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset with error code {error_code}")
        self.error_code = error_code


def _reason(body: bytes) -> str | None:
    """An error answer's reason; a body that is not Apple's JSON still ends the wait."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("reason") if isinstance(answer, dict) else None


class StreamIds:
    """A connection's stream ids, and how many of its streams may be open at once (the peer's
    SETTINGS_MAX_CONCURRENT_STREAMS): aioapns's ChannelPool, a semaphore that every push
    awaited, as a count. A push takes a stream at once, or waits in the sender's queue."""

    __slots__ = ("bound", "open", "last_id")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.open = 0
        self.last_id = -1

    @property
    def is_busy(self) -> bool:
        return self.open >= self.bound

    def take(self) -> int:
        if self.last_id + 2 > HIGHEST_STREAM_ID:
            raise NoAvailableStreamIDError
        self.last_id += 2
        self.open += 1
        return self.last_id

    def release(self) -> None:
        if self.open:
            self.open -= 1

    def destroy(self, exc: Exception | None = None) -> None:
        """No stream is taken any more: the connection is closing (aioapns's
        `connection_lost` calls this with its error)."""
        self.bound = 0


HeaderKey = tuple[PushFields, str | None]
SHARED_HEADER_SETS = 16  # distinct (type, priority, collapse id, expiry, token) kept


class DispatchProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol on a PushConnection (HTTP/2 for pushes, in place of h2's
    H2Connection: see workers/apns/push_connection.py) with the contract's headers exactly.

    Answers are matched to their sends by stream id (aioapns matched the `apns-id` echoed back,
    which made every answer's Huffman-coded `apns-id` be decoded), and that also fixes aioapns
    4.0's bugs: received DATA is acknowledged (it never was, so ~64 KiB of error bodies stalled
    a connection); an error answer is read when its stream ends, so a missing or non-JSON body
    cannot hang a send; a reset stream ends its send (aioapns logged it as an unknown event and
    waited); finished streams are forgotten; a connection is used once the server's SETTINGS
    came (`ready`), so its concurrency limit holds from the first push.

    And cheaper per push: a push is framed at once on a free stream, with no coroutine, future
    or semaphore (`send_push`; its answer is a call of its `Waiting`); the headers every push
    of a fan-out shares are built and encoded once; answers are read in batches, and what the
    pushes of one loop iteration send goes out in one write; the idle timer is re-armed when
    it fires, not on every write."""

    conn: PushConnection  # type: ignore[assignment]  # aioapns declares h2's H2Connection
    free_channels: StreamIds  # type: ignore[assignment]  # aioapns's is a semaphore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = PushConnection()
        self.free_channels = StreamIds(DEFAULT_STREAM_BOUND)
        self.host = self.APNS_SERVER.encode()
        self.answers: dict[int, Waiting] = {}
        self.shared_headers: dict[HeaderKey, SharedHeaders] = {}
        self.write_due = False
        self.reading_paused = False
        self.last_write = self.loop.time()
        self.ready: asyncio.Future[None] = self.loop.create_future()

    def send_push(
        self, waiting: Waiting, token: str, apns_id: bytes, body: bytes, fields: PushFields
    ) -> None:
        """The push framed on a free stream at once (the caller saw `is_busy` false), written
        with the rest of this loop iteration's; `waiting` is told its answer. A connection
        already closing raises ConnectionClosed instead of taking a push it cannot answer."""
        if self.transport is None or self.transport.is_closing():
            self.free_channels.destroy()
            raise ConnectionClosed("the connection is closing")
        stream_id = self.free_channels.take()
        path = b"/3/device/" + token.encode()
        self.conn.send_push(stream_id, path, apns_id, self._shared_headers(fields), body)
        self.answers[stream_id] = waiting
        self.flush()

    def _shared_headers(self, fields: PushFields) -> SharedHeaders:
        """Every header but `:path` and `apns-id`: the same for the pushes of a fan-out, so
        built once, and the same list each time (its encoding is remembered by identity)."""
        key = (fields, self.auth_provider.get_header() if self.auth_provider else None)
        shared = self.shared_headers.get(key)
        if shared is None:
            if len(self.shared_headers) >= SHARED_HEADER_SETS:
                self.shared_headers.clear()
            shared = self.shared_headers[key] = self._build_shared_headers(key)
        return shared

    def _build_shared_headers(self, key: HeaderKey) -> SharedHeaders:
        (push_type, priority, collapse_id, expiration), authorization = key
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b"host", self.host),
            (b"apns-topic", self.apns_topic.encode()),
        ]
        optional = {
            b"apns-push-type": push_type,
            b"apns-priority": priority,
            b"apns-collapse-id": collapse_id,
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
        if not self.ready.done() and self.conn.peer_settings_received:
            self.ready.set_result(None)

    def _pause_reading(self) -> None:
        """Answers read in batches: while sends wait for answers, reading stops for
        READ_PAUSE_S after each read, so the next read takes the answers that came meanwhile
        at once, and the pushes they let through leave in one write. APNs answers each push
        on its own (a TLS record each): read as they come, every answer cost a wake-up of the
        loop, a decryption and a write of its own, the sender's largest cost per push.

        The socket too: asyncio's TLS transport, paused, still reads every record that
        arrives into its buffer (a wake-up of the loop and a read each); a read buffer limit
        of one byte stops it after the first, until the pause ends."""
        if self.transport is None or self.transport.is_closing():
            return
        self.reading_paused = True
        self.transport.pause_reading()
        self.transport.set_read_buffer_limits(high=1)  # type: ignore[attr-defined]
        self.loop.call_later(READ_PAUSE_S, self._resume_reading)

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.set_read_buffer_limits()  # type: ignore[attr-defined]
            self.transport.resume_reading()

    def _answered(self, answer: Answered) -> None:
        self.free_channels.release()
        waiting = self.answers.pop(answer.stream_id, None)
        if waiting is not None:
            reason = None if answer.status == 200 else _reason(answer.body)
            waiting.answered(answer.status, reason)

    def _ended(self, stream_id: int, error: Exception) -> None:
        self.free_channels.release()
        waiting = self.answers.pop(stream_id, None)
        if waiting is not None:
            waiting.failed(error)

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

    def close(self) -> None:
        self.free_channels.destroy()  # no push is sent on it any more
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Every send still waiting fails with ConnectionClosed, after aioapns's pool has let
        go of the connection (aioapns 4.0 failed cancelled ones too, and the first
        InvalidStateError left the rest waiting forever: Fatal1ty/aioapns#41, open)."""
        lost = ConnectionClosed(str(exc))
        if not self.ready.done():
            self.ready.set_exception(lost)
            self.ready.exception()  # retrieved: nobody may be awaiting it
        waiting, self.answers = self.answers, {}
        super().connection_lost(exc)
        if waiting:
            log.warning(
                "APNs connection %s lost, %d pushes unanswered: %s", self, len(waiting), exc
            )
        for each in waiting.values():
            each.failed(lost)


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
    Create it on the running loop (aioapns binds the loop it finds).

    A push takes a connection with a free stream (`free_connection`), else waits in the
    sender's queue while `open_connection` opens one more, up to MAX_CONNECTIONS (aioapns's
    `acquire` polled every 10 ms for a free stream, in a coroutine for every push). `freed`
    is called when a connection is opened or let go of, `unreachable` when none could be."""

    def __init__(
        self,
        environment: str,
        key: str,
        auth: SharedProviderToken,
        freed: Callable[[], None],
        unreachable: Callable[[DispatchPool], None],
    ) -> None:
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
        self.environment = environment
        self.protocol_class = _protocol_for(environment)
        self.auth = auth
        self.freed = freed
        self.unreachable = unreachable
        self.connections: list[DispatchProtocol]  # type: ignore[assignment]
        self.opening: asyncio.Task[None] | None = None
        self.retry_at = 0.0

    async def create_connection(self) -> DispatchProtocol:
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
        connection = await self._create_connection(factory)
        assert isinstance(connection, DispatchProtocol)
        return connection

    def free_connection(self) -> DispatchProtocol | None:
        for connection in self.connections:
            if not connection.is_busy:
                return connection
        return None

    def open_connection(self, retry: bool) -> None:
        """One more connection, if fewer than MAX_CONNECTIONS are open and none is opening
        (for a `retry`, once the last failure is CONNECT_RETRY_S old)."""
        if (
            self.opening is None
            and len(self.connections) < self.max_connections
            and (not retry or self.loop.time() >= self.retry_at)
        ):
            self.opening = self.loop.create_task(self._open())

    async def _open(self) -> None:
        connection = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                connection = await self.create_connection()
                await connection.ready
        except (OSError, ConnectionClosed) as exc:  # refused, unreachable, TLS, timed out
            log.warning("APNs (%s): no connection: %r", self.environment, exc)
        except Exception:
            log.exception("APNs (%s): no connection", self.environment)
        else:
            self.connections.append(connection)
            self.opening = None
            self.freed()
            return
        if connection is not None:
            connection.close()
        self.retry_at = self.loop.time() + CONNECT_RETRY_S
        self.opening = None
        self.unreachable(self)

    def close(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
        super().close()

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        """A connection lost before the pool added it: aioapns 4.0 raises ValueError from
        `list.remove` inside `connection_lost` (Fatal1ty/aioapns#55, open)."""
        if connection in self.connections:
            super().discard_connection(connection)
            self.loop.call_soon(self.freed)
