"""How long a task waits in its queue before a worker starts it, as the workers last saw it.

Every publish carries its time (PUBLISHED_HEADER); a worker starting a task observes the
wait (the `dispatch_task_wait_seconds` histogram) and, at most once a second per process and
queue, stores it in Redis. The relay reads it: an event whose task may still be waiting in a
long queue is not overdue yet, so a backlog is not re-driven onto its own tail (which made
the queue grow faster than the workers drained it). The stored wait expires after
WAIT_KEPT_S: with no worker starting tasks the relay goes back to re-driving after
RELAY_AFTER_S alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from redis.exceptions import RedisError

from models.db import redis_connection
from settings import settings
from workers.metrics import TASK_WAIT

log = logging.getLogger(__name__)

PUBLISHED_HEADER = "published_at"
STORE_EVERY_S = 1.0
WAIT_KEPT_S = 60

_stored_at: dict[str, float] = {}


def published_header() -> dict[str, str]:
    """The header that dates a publish (wall-clock seconds: workers run on other hosts)."""
    return {PUBLISHED_HEADER: f"{time.time():.3f}"}


def _wait_key(queue: str) -> str:
    return settings.redis_key("backlog", queue, "wait")


def note_start(queue: str, published_at: object) -> float | None:
    """A worker starts a task of `queue` published at `published_at` (the header's value):
    observe its wait and, if this process has not for a second, store it. Returns the wait,
    or None for a message without the header. A Redis error is logged: the relay then
    reads an older wait, or none."""
    try:
        wait = max(0.0, time.time() - float(published_at))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    TASK_WAIT.labels(queue).observe(wait)
    now = time.monotonic()
    if now - _stored_at.get(queue, -STORE_EVERY_S) >= STORE_EVERY_S:
        _stored_at[queue] = now
        try:
            redis_connection().set(_wait_key(queue), f"{wait:.3f}", ex=WAIT_KEPT_S)
        except RedisError as exc:
            log.warning("could not store the %s queue's wait: %s", queue, exc)
    return wait


def queue_waits(queues: Sequence[str]) -> Mapping[str, float]:
    """Each queue's last stored wait in seconds (0 when none is stored)."""
    values = redis_connection().mget([_wait_key(queue) for queue in queues])
    return {queue: float(value or 0) for queue, value in zip(queues, values, strict=True)}
