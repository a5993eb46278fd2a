"""The fake APNs provider API: HTTP/2 over TLS on loopback, checking what Apple checks.

Runs its own asyncio loop in a background thread, so a test process can host it while a
Celery worker process pushes to it. Every answer echoes `apns-id` (one is made up when the
request had none); every error carries a JSON `reason` (aioapns waits for one). It honours
HTTP/2 flow control as Apple does: a client that never acknowledges the error bodies it
receives stalls, as it would in production.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from fake_apns.certs import Credentials

DEVICE_PATH = "/3/device/"
DEVICE_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")
APNS_ID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
PUSH_TYPES = {
    "alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity",
    "location", "pushtotalk", "controls", "widgets",
}  # fmt: skip
PRIORITIES = {"1", "5", "10"}
MAX_PAYLOAD = 4096
MAX_COLLAPSE_ID = 64
MAX_CONCURRENT_STREAMS = 1000  # what Apple advertises once a connection is authenticated
TOKEN_LIFETIME_S = 3600


@dataclass(frozen=True)
class ReceivedPush:
    """One request as the server saw it, and what it answered."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    status: int
    reason: str | None
    connection: int
    at: float


@dataclass
class Behaviour:
    """How to answer one token: `status`/`reason` for the next `times` requests (None:
    always; then 200), after `delay_s` seconds."""

    status: int = 200
    reason: str | None = None
    times: int | None = None
    delay_s: float = 0.0


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    """One client connection: an h2 server state machine and the answers in progress."""

    def __init__(self, server: FakeAPNs, number: int) -> None:
        self.server = server
        self.number = number
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.local_settings = Settings(
            client=False,
            initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS},
        )
        self.streams: dict[int, _Stream] = {}
        self.answers: set[asyncio.Task[None]] = set()
        self.window_opened = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.open_connections.add(self)
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_connections.discard(self)
        for task in self.answers:
            task.cancel()  # nobody is left to answer

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def flush(self) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.on_event(event)
        self.flush()

    def on_event(self, event: object) -> None:
        if isinstance(event, RequestReceived) and event.stream_id is not None:
            headers = {str(k): str(v) for k, v in event.headers or []}
            self.streams[event.stream_id] = _Stream(headers)
        elif isinstance(event, DataReceived) and event.stream_id is not None:
            if event.stream_id in self.streams:
                self.streams[event.stream_id].body.extend(event.data or b"")
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, StreamEnded) and event.stream_id in self.streams:
            assert event.stream_id is not None
            self.start_answer(event.stream_id, self.streams.pop(event.stream_id))
        elif isinstance(event, StreamReset) and event.stream_id is not None:
            self.streams.pop(event.stream_id, None)
        elif isinstance(event, WindowUpdated):
            self.window_opened.set()
            self.window_opened = asyncio.Event()
        elif isinstance(event, ConnectionTerminated) and self.transport is not None:
            self.transport.close()

    def start_answer(self, stream_id: int, stream: _Stream) -> None:
        task = asyncio.get_running_loop().create_task(self.answer(stream_id, stream))
        self.answers.add(task)
        task.add_done_callback(self.answers.discard)

    async def answer(self, stream_id: int, stream: _Stream) -> None:
        apns_id = stream.headers.get("apns-id") or str(uuid.uuid4()).upper()
        status, reason, delay_s = self.server.judge(stream.headers, bytes(stream.body))
        if delay_s:
            await asyncio.sleep(delay_s)
        if self.closed:
            return  # the client, or the server's `down()`, closed the connection meanwhile
        self.server.record(stream, status, reason, self.number)
        response = [(":status", str(status)), ("apns-id", apns_id)]
        try:
            if reason is None:
                self.conn.send_headers(stream_id, response, end_stream=True)
            else:
                await self.send_error(stream_id, response, json.dumps({"reason": reason}).encode())
        except ProtocolError:
            return  # the client reset the stream
        self.flush()

    async def send_error(
        self, stream_id: int, response: list[tuple[str, str]], body: bytes
    ) -> None:
        """Headers, then the JSON body once the client's flow-control window lets it through."""
        self.conn.send_headers(stream_id, [*response, ("content-type", "application/json")])
        self.flush()
        while not self.closed and self.conn.local_flow_control_window(stream_id) < len(body):
            await self.window_opened.wait()
        if not self.closed:
            self.conn.send_data(stream_id, body, end_stream=True)


def push_payload(stream: _Stream) -> dict[str, Any]:
    """A push's JSON body as an object; {} when it is not one."""
    try:
        payload = json.loads(stream.body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class FakeAPNs:
    """Start with `start()`; `received()` lists what arrived; `behave()` sets a token's
    answer; `down()` / `up()` take the whole server off and back on the same port."""

    def __init__(self, credentials: Credentials, host: str = "127.0.0.1", port: int = 0) -> None:
        self.credentials = credentials
        self.host = host
        self.port = port
        self.public_key = credentials.public_key_pem()
        self.pushes: list[ReceivedPush] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.connections = 0  # TLS connections accepted since start
        self.open_connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-apns", daemon=True
        )
        self._server: asyncio.Server | None = None

    # --- control, from any thread ---

    def start(self) -> FakeAPNs:
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        """Listen (again, on the same port after `down()`)."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def down(self) -> None:
        """Stop listening and drop every open connection, as an unreachable APNs would."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)

    def stop(self) -> None:
        self.down()
        asyncio.run_coroutine_threadsafe(self._cancel_answers(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def behave(self, token: str, behaviour: Behaviour) -> None:
        with self._lock:
            self.behaviours[token.lower()] = behaviour

    def received(self, token: str | None = None) -> list[ReceivedPush]:
        with self._lock:
            return [p for p in self.pushes if token is None or p.token == token.lower()]

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until no answer is in progress (delayed ones included); False on timeout."""
        idle = self._settle(lambda: not self._answering(), timeout_s)
        return asyncio.run_coroutine_threadsafe(idle, self._loop).result(timeout_s + 5)

    def pending(self) -> int:
        """Requests received and not answered yet (held back by a delay)."""
        return asyncio.run_coroutine_threadsafe(self._pending(), self._loop).result(5)

    async def _pending(self) -> int:
        return sum(len(connection.answers) for connection in self.open_connections)

    def clear(self) -> None:
        """Forget what was received and every token's behaviour."""
        with self._lock:
            self.pushes.clear()
            self.behaviours.clear()

    # --- inside the loop ---

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.credentials.cert_file, self.credentials.key_file)
        context.set_alpn_protocols(["h2"])
        return context

    def _protocol(self) -> _Connection:
        with self._lock:
            self.connections += 1
            number = self.connections
        return _Connection(self, number)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await self._loop.create_server(
            self._protocol, self.host, self.port, ssl=self._ssl(), reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.open_connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None
        await self._settle(lambda: not self.open_connections)  # each connection_lost runs

    async def _settle(self, done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        give_up_at = self._loop.time() + timeout_s
        while not done():
            if self._loop.time() > give_up_at:
                return False
            await asyncio.sleep(0.01)
        return True

    def _answering(self) -> bool:
        return any(connection.answers for connection in self.open_connections)

    async def _cancel_answers(self) -> None:
        """Delayed answers still sleeping: cancelled, so the loop closes clean."""
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def judge(self, headers: dict[str, str], body: bytes) -> tuple[int, str | None, float]:
        """The answer Apple would give, unless the token was told to answer otherwise."""
        error = self._request_error(headers, body)
        if error is not None:
            return error[0], error[1], 0.0
        return self._behaviour(headers[":path"].removeprefix(DEVICE_PATH).lower())

    def _request_error(self, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
        path = headers.get(":path", "")
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed"
        if not path.startswith(DEVICE_PATH):
            return 404, "BadPath"
        if not DEVICE_TOKEN.match(path.removeprefix(DEVICE_PATH)):
            return 400, "BadDeviceToken"
        auth_error = self._auth_error(headers.get("authorization", ""))
        if auth_error:
            return 403, auth_error
        return self._header_error(headers) or self._payload_error(body)

    def _header_error(self, headers: dict[str, str]) -> tuple[int, str] | None:
        topic = headers.get("apns-topic")
        if not topic:
            return 400, "MissingTopic"
        if topic != self.credentials.topic:
            return 400, "DeviceTokenNotForTopic"
        if "apns-id" in headers and not APNS_ID.match(headers["apns-id"]):
            return 400, "BadMessageId"
        if headers.get("apns-push-type", "alert") not in PUSH_TYPES:
            return 400, "InvalidPushType"
        if headers.get("apns-priority", "10") not in PRIORITIES:
            return 400, "BadPriority"
        if not headers.get("apns-expiration", "0").isdigit():
            return 400, "BadExpirationDate"
        if len(headers.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID:
            return 400, "BadCollapseId"
        return None

    def _payload_error(self, body: bytes) -> tuple[int, str] | None:
        if not body:
            return 400, "PayloadEmpty"
        if len(body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge"
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "BadPayload"  # not one of Apple's reasons; Apple closes the stream
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, "BadPayload"
        return None

    def _auth_error(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self.public_key, algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("kid") != self.credentials.key_id:
            return "InvalidProviderToken"
        if claims["iss"] != self.credentials.team_id:
            return "InvalidProviderToken"
        if claims["iat"] < time.time() - TOKEN_LIFETIME_S:
            return "ExpiredProviderToken"
        return None

    def _behaviour(self, token: str) -> tuple[int, str | None, float]:
        with self._lock:
            behaviour = self.behaviours.get(token)
            if behaviour is None or (behaviour.times is not None and behaviour.times <= 0):
                return 200, None, 0.0
            if behaviour.times is not None:
                behaviour.times -= 1
            return behaviour.status, behaviour.reason, behaviour.delay_s

    def record(self, stream: _Stream, status: int, reason: str | None, connection: int) -> None:
        path = stream.headers.get(":path", "")
        push = ReceivedPush(
            token=path.removeprefix(DEVICE_PATH).lower() if path.startswith(DEVICE_PATH) else "",
            headers={k: v for k, v in stream.headers.items() if not k.startswith(":")},
            payload=push_payload(stream),
            status=status,
            reason=reason,
            connection=connection,
            at=time.time(),
        )
        with self._lock:
            self.pushes.append(push)
