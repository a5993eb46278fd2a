"""Socket.IO events from worker processes: published to Redis, delivered by the gateways.

One write-only manager per process (re-created after a fork). Events with one payload for
many drivers go out as one emit to a list of rooms, one Redis publish."""

from __future__ import annotations

import os
from typing import Any

import redis
import socketio

from settings import settings


class PublishingRedisManager(socketio.RedisManager):
    """python-socketio logs and drops a publish that fails twice; a task must see the
    failure, so that it is retried rather than marking drivers notified who were not."""

    connected: bool
    redis: Any

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


_managers: dict[int, PublishingRedisManager] = {}


def socketio_channel() -> str:
    """The pub/sub channel shared by workers and gateways of this deployment."""
    return settings.redis_key("socketio")


def driver_room(driver_id: int) -> str:
    return f"driver:{driver_id}"


def customer_room(customer_id: int) -> str:
    return f"customer:{customer_id}"


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
