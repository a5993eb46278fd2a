"""Socket.IO events from worker processes: published to Redis, delivered by the gateways.

One write-only manager per process (re-created after a fork). Events with one payload for
many drivers go out as one emit to a list of rooms, one Redis publish."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import redis
import socketio

from models.rooms import socketio_channel
from settings import settings


class PublishingRedisManager(socketio.RedisManager):
    """python-socketio logs and drops a publish that fails twice; a task must see the
    failure, so that it is retried rather than marking drivers notified who were not."""

    connected: bool
    redis: Any
    host_id: str

    def _publish(self, data: Any) -> Any:
        try:
            if not self.connected:
                self._redis_connect()
            return self.redis.publish(self.channel, self.json.dumps(data))
        except redis.RedisError:
            if self.redis is not None:
                self.redis.close()
            self.connected = False
            raise

    def publish_each(self, events: Sequence[tuple[str, dict[str, Any], str]]) -> None:
        """Many events, each to its own room, in one Redis round trip (python-socketio's
        `emit` publishes one at a time). Each message is the one its `emit` would build;
        the payloads are plain JSON, never binary."""
        try:
            if not self.connected:
                self._redis_connect()
            pipe = self.redis.pipeline(transaction=False)
            for event, payload, room in events:
                message = {
                    "method": "emit",
                    "event": event,
                    "data": [payload],
                    "binary": False,
                    "namespace": "/",
                    "room": room,
                    "skip_sid": None,
                    "callback": None,
                    "host_id": self.host_id,
                }
                pipe.publish(self.channel, self.json.dumps(message))
            pipe.execute()
        except redis.RedisError:
            if self.redis is not None:
                self.redis.close()
            self.connected = False
            raise


_managers: dict[int, PublishingRedisManager] = {}


def _manager() -> PublishingRedisManager:
    pid = os.getpid()
    manager = _managers.get(pid)
    if manager is None:
        _managers.clear()
        manager = PublishingRedisManager(
            settings.redis_url,
            channel=socketio_channel(),
            write_only=True,
            redis_options={"socket_connect_timeout": 1, "socket_timeout": 5},
        )
        _managers[pid] = manager
    return manager


def emit(event: str, payload: dict[str, Any], rooms: list[str]) -> None:
    """Publish `event` to every room in `rooms` (a no-op for none)."""
    if rooms:
        _manager().emit(event, payload, to=rooms if len(rooms) > 1 else rooms[0])


def emit_each(events: Sequence[tuple[str, dict[str, Any], str]]) -> None:
    """Publish events that differ per room (each driver's own offer) in one round trip."""
    if events:
        _manager().publish_each(events)
