"""Reading this run's Celery queues straight from the Redis broker."""

import base64
import json

from models.db import redis_connection
from settings import settings


def queued_tasks(queue: str = "dispatch") -> list[dict]:
    """The task messages waiting in a Celery queue of this run: name and args of each."""
    raw_messages = redis_connection().lrange(settings.redis_key("celery", queue), 0, -1)
    messages = [json.loads(raw) for raw in raw_messages]  # type: ignore[union-attr]
    return [
        {"task": m["headers"]["task"], "args": json.loads(base64.b64decode(m["body"]))[0]}
        for m in messages
    ]
