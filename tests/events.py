"""Reading Socket.IO events off this run's Redis message queue, as the gateways receive them."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis

from models.rooms import socketio_channel
from settings import settings


class EventTap:
    """Subscribes to the socket channel and records every emit: (event, room(s), payload),
    from the moment it is made."""

    def __init__(self, redis_url: str | None = None) -> None:
        self._client = redis.Redis.from_url(redis_url or settings.redis_url, socket_timeout=None)
        self._pubsub = self._client.pubsub()
        self.events: list[tuple[str, Any, Any]] = []
        self._lock = threading.Lock()
        self._pubsub.subscribe(**{socketio_channel(): self._record})
        # Redis confirms the subscription before it delivers anything published after it.
        confirmed = self._pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        self._pubsub.ignore_subscribe_messages = True
        self._thread = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)
        self._thread.name = "event-tap"

    def _record(self, message: dict) -> None:
        data = json.loads(message["data"])
        if data.get("method") == "emit":
            with self._lock:
                self.events.append((data["event"], data["room"], data["data"][0]))

    def of(self, event: str) -> list[tuple[Any, Any]]:
        with self._lock:
            return [(room, payload) for name, room, payload in self.events if name == event]

    def wait_for(self, event: str, count: int = 1, timeout_s: float = 20) -> list[tuple[Any, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.of(event)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{count} × {event} not seen in {timeout_s}s; saw {self.events}")

    def __enter__(self) -> EventTap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()
