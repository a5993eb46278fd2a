"""python-socketio server: token auth on connect, personal rooms, and `driver:location`.

Every gateway process subscribes to the deployment's Redis channel, so workers (and other
gateways) reach a client wherever it is connected. Database and Redis calls of handlers
run in threads, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
import socketio
from pydantic import ValidationError
from redis import asyncio as aioredis

from models.accounts import User, user_for_token
from models.db import redis_connection, session_scope
from models.errors import Unauthorized
from models.schemas import Coordinates, field_reasons
from models.tracking import record_position
from settings import settings
from workers.events import customer_room, driver_room, socketio_channel

log = logging.getLogger(__name__)


PUBLISH_CONNECTIONS = 16


class BoundedRedisManager(socketio.AsyncRedisManager):
    """python-socketio's Redis manager on a bounded pool. Its own opens a connection for
    every publish in flight (397 of them under 2,000 position reports a second); here a
    publish waits for one of PUBLISH_CONNECTIONS instead (the subscriber holds one)."""

    redis_url: str
    redis_options: dict[str, Any]

    def _redis_connect(self) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=PUBLISH_CONNECTIONS, timeout=5, **self.redis_options
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True


def _client_manager() -> socketio.AsyncRedisManager:
    # No read timeout on the subscriber (redis-py's default would drop it when idle);
    # keepalive and health checks notice a dead connection instead.
    return BoundedRedisManager(
        settings.redis_url,
        channel=socketio_channel(),
        redis_options={
            "socket_timeout": None,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 15,
        },
    )


sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=_client_manager(),
    cors_allowed_origins="*",
    ping_interval=20,
    ping_timeout=20,
    max_http_buffer_size=16 * 1024,
    logger=False,
    engineio_logger=False,
)
app = socketio.ASGIApp(sio)


def _signed_in(token: str) -> tuple[int, str]:
    with session_scope() as session:
        user: User = user_for_token(session, token)
        return user.id, user.role


def _rejection(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"ok": False, "error": error}


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise socketio.exceptions.ConnectionRefusedError("unauthorized: auth.token is required")
    try:
        user_id, role = await asyncio.to_thread(_signed_in, token)
    except Unauthorized as exc:
        raise socketio.exceptions.ConnectionRefusedError(f"unauthorized: {exc.message}") from exc
    await sio.save_session(sid, {"user_id": user_id, "role": role})
    room = driver_room(user_id) if role == "driver" else customer_room(user_id)
    await sio.enter_room(sid, room)
    log.info("%s %s connected (%s)", role, user_id, sid)


@sio.event
async def disconnect(sid: str, reason: Any = None) -> None:
    session = await sio.get_session(sid)
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
    try:
        update = await asyncio.to_thread(
            record_position, redis_connection(), session["user_id"], where.lat, where.lng
        )
        if update is not None:
            await sio.emit(
                "job:driver_location", update.payload, room=customer_room(update.customer_id)
            )
    except redis.RedisError:
        log.warning("location of driver %s not stored: Redis unavailable", session["user_id"])
        return _rejection(
            "service_unavailable", "Your position could not be stored; send it again."
        )
    return {"ok": True}
