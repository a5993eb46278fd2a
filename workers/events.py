"""Socket.IO events from worker processes: published to Redis, delivered by the gateways.

One write-only manager per process (re-created after a fork). Events with one payload for
many drivers go out as one emit to a list of rooms, one Redis publish."""

from __future__ import annotations

import os
from typing import Any

import socketio

from settings import settings

_managers: dict[int, socketio.RedisManager] = {}


def socketio_channel() -> str:
    """The pub/sub channel shared by workers and gateways of this deployment."""
    return settings.redis_key("socketio")


def driver_room(driver_id: int) -> str:
    return f"driver:{driver_id}"


def customer_room(customer_id: int) -> str:
    return f"customer:{customer_id}"


def _manager() -> socketio.RedisManager:
    pid = os.getpid()
    manager = _managers.get(pid)
    if manager is None:
        _managers.clear()
        manager = socketio.RedisManager(
            settings.redis_url, channel=socketio_channel(), write_only=True
        )
        _managers[pid] = manager
    return manager


def emit(event: str, payload: dict[str, Any], rooms: list[str]) -> None:
    """Publish `event` to every room in `rooms` (a no-op for none)."""
    if rooms:
        _manager().emit(event, payload, to=rooms if len(rooms) > 1 else rooms[0])
