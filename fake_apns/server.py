"""The fake APNs provider API: HTTP/2 over TLS on loopback, checking what Apple checks.

Runs its own asyncio loop in a background thread, so a test process can host it while a
Celery worker process pushes to it. Every answer echoes `apns-id`; every error carries a
JSON `reason` (aioapns waits for one)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError

from fake_apns.certs import Credentials

TOKEN_PATH = re.compile(r"^/3/device/([0-9a-fA-F]+)$")
MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class ReceivedPush:
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
    always), after `delay_s`."""

    status: int = 200
    reason: str | None = None
    times: int | None = None
    delay_s: float = 0.0


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, server: FakeAPNs, number: int) -> None:
        self.server = server
        self.number = number
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.transports.add(transport)
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
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
            if isinstance(event, RequestReceived):
                headers = {str(k): str(v) for k, v in event.headers or []}
                self.streams[event.stream_id] = _Stream(headers)
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id].body.extend(event.data or b"")
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            elif isinstance(event, StreamEnded):
                stream = self.streams.pop(event.stream_id)
                asyncio.get_running_loop().create_task(self.answer(event.stream_id, stream))
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    async def answer(self, stream_id: int, stream: _Stream) -> None:
        apns_id = stream.headers.get("apns-id") or str(uuid.uuid4()).upper()
        status, reason, delay_s = self.server.judge(stream.headers, bytes(stream.body))
        if delay_s:
            await asyncio.sleep(delay_s)
        if self.transport is None or self.transport.is_closing():
            return
        self.server.record(stream, status, reason, self.number)
        response = [(":status", str(status)), ("apns-id", apns_id)]
        if reason is None:
            self.conn.send_headers(stream_id, response, end_stream=True)
        else:
            body = json.dumps({"reason": reason}).encode()
            response.append(("content-type", "application/json"))
            self.conn.send_headers(stream_id, response)
            self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()


class FakeAPNs:
    """Start with `start()`; `pushes` lists what arrived; `behave()` sets a token's answer;
    `down()` / `up()` take the whole server off and back on the same port."""

    def __init__(self, credentials: Credentials, host: str = "127.0.0.1", port: int = 0) -> None:
        self.credentials = credentials
        self.host = host
        self.port = port
        self.public_key = credentials.public_key_pem()
        self.pushes: list[ReceivedPush] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.connections = 0
        self.transports: set[asyncio.Transport] = set()
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

    def clear(self) -> None:
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
        if self._server is not None:
            self._server.close()
            for transport in list(self.transports):
                transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _cancel_answers(self) -> None:
        """Delayed answers still sleeping: cancelled, so the loop closes clean."""
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def judge(self, headers: dict[str, str], body: bytes) -> tuple[int, str | None, float]:
        """The answer Apple would give, unless the token was told to answer otherwise."""
        match = TOKEN_PATH.match(headers.get(":path", ""))
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed", 0.0
        if match is None:
            return 400, "BadDeviceToken", 0.0
        auth_error = self._auth_error(headers.get("authorization", ""))
        if auth_error:
            return 403, auth_error, 0.0
        if not headers.get("apns-topic"):
            return 400, "MissingTopic", 0.0
        if headers["apns-topic"] != self.credentials.topic:
            return 400, "DeviceTokenNotForTopic", 0.0
        if len(body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge", 0.0
        try:
            json.loads(body)
        except ValueError:
            return 400, "PayloadEmpty" if not body else "BadPayload", 0.0
        return self._behaviour(match.group(1).lower())

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
        if (
            header.get("kid") != self.credentials.key_id
            or claims["iss"] != self.credentials.team_id
        ):
            return "InvalidProviderToken"
        if claims["iat"] < time.time() - 3600:
            return "ExpiredProviderToken"
        return None

    def _behaviour(self, token: str) -> tuple[int, str | None, float]:
        with self._lock:
            behaviour = self.behaviours.get(token)
            if behaviour is None:
                return 200, None, 0.0
            if behaviour.times is not None:
                if behaviour.times <= 0:
                    return 200, None, 0.0
                behaviour.times -= 1
            return behaviour.status, behaviour.reason, behaviour.delay_s

    def record(self, stream: _Stream, status: int, reason: str | None, connection: int) -> None:
        match = TOKEN_PATH.match(stream.headers.get(":path", ""))
        try:
            payload = json.loads(stream.body)
        except ValueError:
            payload = {}
        push = ReceivedPush(
            token=match.group(1).lower() if match else "",
            headers={k: v for k, v in stream.headers.items() if not k.startswith(":")},
            payload=payload,
            status=status,
            reason=reason,
            connection=connection,
            at=time.time(),
        )
        with self._lock:
            self.pushes.append(push)
