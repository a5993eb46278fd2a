"""What the stores hold: the database's rows, the drivers' positions and the keys in Redis, the
queued tasks. Equal before and after a request means the request wrote nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import text

from models.db import engine, redis_connection
from settings import settings

TABLES = ("users", "driver_profiles", "device_tokens", "jobs", "offers", "job_events")


def queued_tasks(queue: str = "dispatch") -> list[dict]:
    """The task messages waiting in a Celery queue of this run: name and args of each."""
    raw_messages = redis_connection().lrange(settings.redis_key("celery", queue), 0, -1)
    messages = [json.loads(raw) for raw in raw_messages]  # type: ignore[union-attr]
    return [
        {"task": m["headers"]["task"], "args": json.loads(base64.b64decode(m["body"]))[0]}
        for m in messages
    ]


def db_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: equal before and after means nothing was written."""
    with engine().connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in TABLES
        }


def positions() -> dict[str, Any]:
    """The drivers' live positions and report times in Redis."""
    r = redis_connection()
    return {
        part: r.zrange(settings.redis_key("drivers", part), 0, -1, withscores=True)
        for part in ("geo", "seen")
    }


def redis_keys() -> list[str]:
    """This run's Redis keys."""
    return sorted(redis_connection().scan_iter(match=f"{settings.redis_prefix}:*"))


def stored_state() -> tuple[Any, ...]:
    """What a request could have written: the database, the positions, the task queues, and
    which Redis keys exist (a login attempt, for one, leaves a throttle key)."""
    return db_rows(), positions(), queued_tasks(), queued_tasks("push"), redis_keys()
