"""python-socketio server: token auth on connect, personal rooms, and `driver:location`.

Every gateway process subscribes to the deployment's Redis channel when it starts, so workers
(and other gateways) reach a client wherever it is connected. Database and Redis calls of
handlers run in threads, never on the event loop.

What python-socketio leaves open, closed here:
- An event named `connect` (or another reserved name) from a client would run the connect
  handler again, with the client's arguments: a socket could join another user's room and
  report positions as them. Reserved names and nameless events are refused.
- An Engine.IO session that never signs in (no Socket.IO CONNECT with a valid token) is
  closed after SOCKET_AUTH_TIMEOUT_S.
- A connect whose token cannot be checked (database down or not answering) is refused with
  `service_unavailable` within SOCKET_CONNECT_TIMEOUT_S instead of hanging.
- Browsers: only ALLOWED_ORIGINS, and never with credentials (sign-in is a token in the
  Socket.IO auth payload, not a cookie).
- Operators' sockets join the operators' room only (never a customer's room).
- Its Redis manager would resubscribe 1 … 60 s apart and tell nobody: here it resubscribes
  within RESUBSCRIBE_MAX_S of Redis answering, then sends every socket `feed:reload`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis
import socketio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as engineio_asgi
from pydantic import ValidationError
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from socketio import packet
from sqlalchemy.exc import SQLAlchemyError

from models.accounts import User, user_for_token
from models.db import redis_connection, session_scope
from models.drivers import report_location
from models.errors import Unauthorized, error_body
from models.rooms import personal_room, socketio_channel
from models.schemas import Coordinates, field_reasons
from realtime.engine import GatewaySocket, websocket_frame
from settings import settings
from workers.logs import bound
from workers.metrics import (
    GATEWAY_SUBSCRIBED,
    LOCATION_REPORTS,
    SOCKET_EVENTS,
    SOCKETS_CONNECTED,
    scrape,
)

log = logging.getLogger(__name__)

NAMESPACE = "/"
PUBLISH_CONNECTIONS = 16
# Client event names that python-socketio (server or client) or socket.io-client treat
# specially; none is ever a client's to send.
RESERVED_EVENTS = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "message",
        "newListener",
        "removeListener",
        "__disconnect_final",
    }
)
# Sent to every socket of a gateway that lost its Redis subscription, once it listens
# again: events published meanwhile never reached it, so the app reloads what it shows
# (a driver GET /drivers/me/offers, a customer their jobs).
FEED_RELOAD = "feed:reload"
FEED_RELOAD_PAYLOAD = {"reason": "events_missed"}
RESUBSCRIBE_FIRST_S = 0.25
RESUBSCRIBE_MAX_S = 2.0
SUBSCRIBE_CONFIRM_S = 5.0
# Token checks run on threads of their own: a database that never answers holds these,
# never the threads that store positions.
SIGN_IN_THREADS = 8
OUTAGE_LOG_EVERY_S = 10.0
# Probe an idle Redis connection after 10 s, every 5 s, and give up after 3 misses (Linux).
KEEPALIVE_OPTIONS = (
    {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
    if hasattr(socket, "TCP_KEEPIDLE")
    else {}
)


class LocalDelivery(socketio.AsyncManager):
    """Delivery of an event to this gateway's sockets without a task per socket, encoded
    once.

    python-socketio's manager encodes the packet once, then starts one task per recipient
    and waits for them all: for `job:accepted` to 1,000 rooms, 1,000 tasks to put one packet
    on each socket's queue. Here the packet is encoded once into its Engine.IO packet and
    websocket frame, and each recipient session (realtime.engine.GatewaySocket) writes that
    frame to its websocket in turn, or queues the packet if its websocket cannot take it now.
    Events with a callback (acknowledgements, which need a packet per socket) go the
    library's way.

    In the MRO after python-socketio's pub/sub manager: what it hands on to the local
    sockets, after a publish or on a message from Redis, comes here."""

    server: Any
    rooms: dict[str, Any]

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room, skip_sid, callback, to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:
            return
        arguments = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skipped = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            packet.EVENT, namespace=namespace, data=[event, *arguments]
        ).encode()
        eio_packets = [
            eio_packet.Packet(eio_packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        framed = [(each, websocket_frame(each.encode())) for each in eio_packets]
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skipped:
                continue
            try:
                session: GatewaySocket = self.server.eio._get_socket(eio_sid)
            except KeyError:  # closed meanwhile (engineio's send_packet skips it too)
                continue
            try:
                if await session.check_ping_timeout():
                    for eio_packet_, frame in framed:
                        session.put(eio_packet_, frame)
            except Exception:  # one socket's failure stops no other socket's delivery
                log.exception("%s to socket %s failed", event, sid)


class BoundedRedisManager(socketio.AsyncRedisManager, LocalDelivery):
    """python-socketio's Redis manager with a bounded publishing pool and a subscriber
    that recovers promptly and says so.

    Its own opens a connection for every publish in flight (397 of them under 2,000
    position reports a second); here a publish waits for one of PUBLISH_CONNECTIONS. The
    subscriber has a connection of its own."""

    redis_url: str
    redis_options: dict[str, Any]
    channel: str
    redis: Any
    pubsub: Any
    connected: bool
    _subscriber: aioredis.Redis | None = None
    _lost_at: float | None = None  # monotonic time the subscription was lost

    def _redis_connect(self) -> None:
        """The publishing pool, made once: its connections reconnect by themselves, so a
        failed publish (after which python-socketio calls this again) leaks no pool."""
        if self.redis is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=PUBLISH_CONNECTIONS, timeout=5, **self.redis_options
            )
            self.redis = aioredis.Redis(connection_pool=pool)
        self.connected = True

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        """python-socketio's loop waits 1, 2, 4 … 60 s between tries while sockets stay
        connected and miss every event; this one waits at most RESUBSCRIBE_MAX_S."""
        backoff = RESUBSCRIBE_FIRST_S
        while True:
            try:
                pubsub = await self._subscribe()
                backoff = RESUBSCRIBE_FIRST_S
                await self._subscribed()
                async for message in pubsub.listen():
                    yield message
                reason = "the subscription ended"
            except (redis.RedisError, OSError) as exc:  # OSError: TimeoutError included
                reason = str(exc) or type(exc).__name__
            self._subscription_lost(reason)
            await self._drop_pubsub()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESUBSCRIBE_MAX_S)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        SOCKET_EVENTS.labels(str(message.get("event"))).inc()
        await super()._handle_emit(message)

    async def _subscribe(self) -> Any:
        """SUBSCRIBE, and wait for Redis to confirm it: from then on no publish is missed."""
        if self._subscriber is None:
            # No retries inside redis-py: every lost connection reaches the loop above,
            # which tells the sockets about the events published meanwhile.
            options = {**self.redis_options, "retry": Retry(NoBackoff(), 0)}
            self._subscriber = aioredis.Redis.from_url(self.redis_url, **options)
        self.pubsub = self._subscriber.pubsub()
        await self.pubsub.subscribe(self.channel)
        async with asyncio.timeout(SUBSCRIBE_CONFIRM_S):
            while True:
                reply = await self.pubsub.get_message(timeout=None)
                if reply is not None and reply["type"] == "subscribe":
                    return self.pubsub

    async def _drop_pubsub(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.pubsub.aclose()
            self.pubsub = None

    def _subscription_lost(self, reason: str) -> None:
        GATEWAY_SUBSCRIBED.set(0)
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            log.warning(
                "Redis subscription lost (%s): resubscribing; sockets will get %s",
                reason,
                FEED_RELOAD,
            )

    async def _subscribed(self) -> None:
        GATEWAY_SUBSCRIBED.set(1)
        if self._lost_at is None:
            log.info("subscribed to Redis channel %s", self.channel)
            return
        outage_s = time.monotonic() - self._lost_at
        self._lost_at = None
        sockets = sum(1 for _ in self.get_participants(NAMESPACE, None))
        # This gateway's own sockets only (not a publish): each gateway tells its own.
        await LocalDelivery.emit(self, FEED_RELOAD, FEED_RELOAD_PAYLOAD, NAMESPACE)
        log.warning(
            "Redis subscription restored after %.1f s: %d sockets told %s",
            outage_s,
            sockets,
            FEED_RELOAD,
        )


def _client_manager() -> socketio.AsyncRedisManager:
    # No read timeout on the subscriber (redis-py's default would drop it when idle). A
    # Redis that goes away closes the connection; one that cannot say so (its host gone,
    # a network cut) is noticed by TCP keepalive after ~25 s instead of the kernel's 2 h.
    return BoundedRedisManager(
        settings.redis_url,
        channel=socketio_channel(),
        redis_options={
            "socket_timeout": None,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "socket_keepalive_options": KEEPALIVE_OPTIONS,
            "health_check_interval": 15,
        },
    )


ALLOWED_ORIGINS = frozenset(settings.allowed_origin_list)


def origin_allowed(origin: str | None, environ: dict[str, Any]) -> bool:
    """ALLOWED_ORIGINS, and the gateway's own address: native clients may send that
    (Starscream, under Socket.IO-Client-Swift, sets Origin to the URL it connects to),
    and this server serves no page for a browser to run there."""
    if not origin:
        return False
    if origin.rstrip("/") in ALLOWED_ORIGINS:
        return True
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(netloc) and netloc == str(environ.get("HTTP_HOST", "")).lower()


class _NoBody:
    """`wsgi.input` of a websocket request, which has no body."""

    async def read(self, length: int | None = None) -> bytes:
        return b""


_NO_BODY = _NoBody()


async def _translate_request(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
    """python-engineio's environ for an ASGI request, without its body reader on a websocket:
    the reader is an instance of a class engineio defines anew for every request, which the
    environ kept alive for the whole life of the socket (3.7 KB of 39.5 a connection)."""
    environ: dict[str, Any] = await engineio_asgi.translate_request(scope, receive, send)
    if environ and scope["type"] == "websocket":
        environ["wsgi.input"] = _NO_BODY
    return environ


class GatewayServer(socketio.AsyncServer):
    """python-socketio's server, refusing reserved event names and closing sessions that
    do not sign in; every Engine.IO session, as it opens, made a realtime.engine.GatewaySocket
    (the gateway's writes to websockets). Both hooks are private methods of python-socketio
    5.x, and so is python-engineio's `_async` table, where `_translate_request` goes; the
    tests in tests/test_gateway_hardening.py and tests/test_gateway_delivery.py pin what
    they do."""

    manager_initialized: bool
    manager: Any
    eio: Any
    environ: dict[str, dict[str, Any]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eio._async = {**self.eio._async, "translate_request": _translate_request}
        self._reserved_logged: set[str] = set()  # Engine.IO sessions logged once already
        self._closing: set[asyncio.Task[None]] = set()

    async def subscribe_now(self) -> None:
        """Subscribe to Redis at start-up: python-socketio waits for the first client, and
        drops what is published to this gateway until then."""
        if not self.manager_initialized:
            self.manager_initialized = True
            self.manager.initialize()

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        GatewaySocket.adopt(self.eio.sockets[eio_sid])
        await super()._handle_eio_connect(eio_sid, environ)
        self._arm_sign_in_deadline(eio_sid, settings.socket_auth_timeout_s)

    async def _handle_disconnect(self, eio_sid: str, namespace: str, reason: Any = None) -> None:
        """A socket that leaves the namespace but keeps its Engine.IO session signs in
        again in time, or is closed."""
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if eio_sid in self.environ:
            self._arm_sign_in_deadline(eio_sid, settings.socket_auth_timeout_s)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        self._reserved_logged.discard(eio_sid)

    def _arm_sign_in_deadline(self, eio_sid: str, after_s: float) -> None:
        asyncio.get_running_loop().call_later(after_s, self._sign_in_deadline, eio_sid)

    def _sign_in_deadline(self, eio_sid: str) -> None:
        if eio_sid not in self.environ:
            return  # gone already
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is not None and self.manager.is_connected(sid, NAMESPACE):
            return
        if sid is not None and self.manager.is_pre_connected(sid, NAMESPACE):
            # Its token is being checked, which SOCKET_CONNECT_TIMEOUT_S bounds.
            self._arm_sign_in_deadline(eio_sid, 0.5)
            return
        closing = asyncio.ensure_future(self._close_session(eio_sid))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_session(self, eio_sid: str) -> None:
        """Close it for good. `eio.disconnect` only sends a CLOSE packet: a client that
        ignores it keeps a websocket open until the reader's idle timeout (ping interval
        plus timeout), and a polling session that never polls again blocks the call."""
        try:
            session: GatewaySocket = self.eio._get_socket(eio_sid)
        except KeyError:
            return
        log.debug("closing Engine.IO session %s: not signed in in time", eio_sid)
        await session.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)
        session.close_transport()  # after CLOSE
        self.eio.sockets.pop(eio_sid, None)

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, ack_id: int | None, data: list[Any]
    ) -> None:
        name = data[0] if data else None
        if isinstance(name, str) and name not in RESERVED_EVENTS:
            await super()._handle_event(eio_sid, namespace, ack_id, data)
        else:
            await self._refuse_event(eio_sid, namespace or NAMESPACE, ack_id, name)

    async def _refuse_event(
        self, eio_sid: str, namespace: str, ack_id: int | None, name: object
    ) -> None:
        """One log line per socket (a client repeating it cannot flood the log), and a
        refusal to a client that asked for an acknowledgement."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        connected = sid is not None and self.manager.is_connected(sid, namespace)
        if eio_sid not in self._reserved_logged:
            self._reserved_logged.add(eio_sid)
            who = "not signed in"
            if connected:
                session = await self.get_session(sid, namespace)
                who = f"{session.get('role')} {session.get('user_id')}"
            log.warning(
                "socket %s sent the reserved event %s (%s): refused, and any later ones",
                sid or eio_sid,
                repr(name)[:60],
                who,
            )
        if connected and ack_id is not None:
            message = (
                f"The event name {name!r} is reserved."
                if isinstance(name, str)
                else "An event needs a name."
            )
            refusal = _rejection("forbidden", message)
            await self._send_packet(
                eio_sid,
                self.packet_class(packet.ACK, namespace=namespace, id=ack_id, data=[refusal]),
            )


sio = GatewayServer(
    async_mode="asgi",
    client_manager=_client_manager(),
    cors_allowed_origins=origin_allowed,
    cors_credentials=False,
    ping_interval=20,
    ping_timeout=20,
    max_http_buffer_size=16 * 1024,
    logger=False,
    engineio_logger=False,
)
_sign_in_threads = ThreadPoolExecutor(SIGN_IN_THREADS, thread_name_prefix="sign-in")


async def metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Everything but Socket.IO's path: `/metrics` for operators (their password), else 404."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/metrics":
        status, headers, body = 404, [(b"content-type", b"text/plain")], b"not found\n"
    else:
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        status, answer_headers, body = scrape(authorization)
        headers = [(name.lower().encode(), value.encode()) for name, value in answer_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _user_of_token(token: str) -> tuple[int, str]:
    with session_scope() as session:
        user: User = user_for_token(session, token)
        return user.id, user.role


def _rejection(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    return {"ok": False, **error_body(code, message, fields)}


class _OutageLog:
    """Refused connects during an outage, logged once per OUTAGE_LOG_EVERY_S with a count
    (every app reconnects, and each would be a line)."""

    def __init__(self) -> None:
        self.refused = 0
        self.logged_at = float("-inf")

    def refused_one(self, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= OUTAGE_LOG_EVERY_S:
            log.warning(
                "%d socket connects refused: tokens cannot be checked (%s)", self.refused, why
            )
            self.refused, self.logged_at = 0, now


_outage_log = _OutageLog()


async def _sign_in(token: str) -> tuple[int, str]:
    """The token's user, or a refusal: `unauthorized`, or `service_unavailable` when the
    database fails or does not answer within SOCKET_CONNECT_TIMEOUT_S."""
    lookup = asyncio.get_running_loop().run_in_executor(_sign_in_threads, _user_of_token, token)
    try:
        return await asyncio.wait_for(lookup, settings.socket_connect_timeout_s)
    except Unauthorized as exc:
        raise socketio.exceptions.ConnectionRefusedError(f"unauthorized: {exc.message}") from exc
    except (SQLAlchemyError, TimeoutError) as exc:
        why = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
        _outage_log.refused_one(why)
        raise socketio.exceptions.ConnectionRefusedError(
            "service_unavailable: the service is unavailable; connect again in a moment."
        ) from exc


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise socketio.exceptions.ConnectionRefusedError("unauthorized: auth.token is required")
    user_id, role = await _sign_in(token)
    await sio.save_session(sid, {"user_id": user_id, "role": role})
    await sio.enter_room(sid, personal_room(role, user_id))
    SOCKETS_CONNECTED.inc()
    with bound(user_id=user_id):
        log.info("%s %s connected (%s)", role, user_id, sid)


@sio.event
async def disconnect(sid: str, reason: Any = None) -> None:
    session = await sio.get_session(sid)
    if "user_id" in session:
        SOCKETS_CONNECTED.dec()
    with bound(user_id=session.get("user_id")):
        log.info(
            "%s %s disconnected (%s): %s", session.get("role"), session.get("user_id"), sid, reason
        )


@sio.on("driver:location")
async def driver_location(sid: str, data: Any = None) -> dict[str, Any]:
    """The socket twin of PUT /drivers/me/location: same validation, same geo index; on a
    job, the customer gets `job:driver_location` (at most one a second)."""
    session = await sio.get_session(sid)
    if session.get("role") != "driver":
        return _rejection("forbidden", "Only a driver reports a location.")
    try:
        where = Coordinates.model_validate(data)
    except ValidationError as exc:
        return _rejection("validation_error", "The location is not valid.", field_reasons(exc))
    with bound(user_id=session["user_id"]):
        try:
            report = await asyncio.to_thread(
                report_location, redis_connection(), session["user_id"], where.lat, where.lng
            )
            LOCATION_REPORTS.labels("socket").inc()
            for event, payload, room in report.events():
                await _relay_report(event, payload, room)
        except redis.RedisError:
            log.warning("location of driver %s not stored: Redis unavailable", session["user_id"])
            return _rejection(
                "service_unavailable", "Your position could not be stored; send it again."
            )
    return {"ok": True}


async def _relay_report(event: str, payload: dict[str, Any], room: str) -> None:
    """An event a position report owes (`job:driver_location` to the job's customer,
    `ops:driver_position` to the operators): a line at DEBUG only (one a second for every
    driver on a job)."""
    with bound(job_id=payload.get("job_id")):
        log.debug("%s to %s", event, room)
        await sio.emit(event, payload, room=room)


app = socketio.ASGIApp(sio, other_asgi_app=metrics_app, on_startup=sio.subscribe_now)
