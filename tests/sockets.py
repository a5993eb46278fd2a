"""Socket.IO clients for tests: a python-socketio client that records what it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import socketio

from tests.processes import wait_until


class Listener:
    """A connected python-socketio client that records every event it gets."""

    def __init__(self, port: int, token: str | None) -> None:
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", self._record)
        self.client.on("connect_error", lambda data=None: self._record("connect_error", data))
        self.client.connect(
            f"http://127.0.0.1:{port}",
            auth={"token": token} if token is not None else None,
            transports=["websocket"],
            wait_timeout=10,
        )

    def _record(self, event: str, data: Any = None) -> None:
        with self._lock:
            self.events.append((event, data))

    def got(self, event: str) -> list[Any]:
        with self._lock:
            return [data for name, data in self.events if name == event]

    def wait_for(self, event: str, count: int = 1, timeout_s: float = 15) -> list[Any]:
        wait_until(lambda: len(self.got(event)) >= count, timeout_s, f"{count} x {event}")
        return self.got(event)

    def call(self, event: str, data: Any) -> Any:
        return self.client.call(event, data, timeout=10)

    def close(self) -> None:
        self.client.disconnect()


class Listeners:
    """The listeners a test opens, each closed by `close()` at its end."""

    def __init__(self) -> None:
        self.opened: list[Listener] = []

    def open(self, port: int, token: str | None) -> Listener:
        listener = Listener(port, token)
        self.opened.append(listener)
        return listener

    def close(self) -> None:
        for listener in self.opened:
            listener.close()


def emit_until_seen(
    send: Callable[[], None], listener: Listener, event: str, timeout_s: float = 15
) -> None:
    """Emit until the listener has it: a gateway subscribes to Redis only after its first
    client connects, and pub/sub keeps nothing for subscribers that are not there yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        send()
        try:
            wait_until(lambda: listener.got(event), 0.5)
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"{event} never reached the client; saw {listener.events}")
