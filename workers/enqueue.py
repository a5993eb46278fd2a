"""Publishing announcement tasks: by name, after commit, never blocking a request.

Every change of a job is a row in `job_events` committed with the change; this module
hands each row to the task that announces it. If the broker is down the publish fails
fast and is logged; the row stays unannounced, and beat's `relay_events` sweep re-drives it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from models.db import after_commit
from models.job_events import EventType, JobEvent
from workers.celery_app import app

log = logging.getLogger(__name__)

TASKS = "workers.tasks"
# Which task announces which kind of event (each shows by name in Flower).
TASK_FOR_EVENT = {
    EventType.created: "notify_nearby",
    EventType.released: "notify_nearby",
    EventType.offered: "notify_nearby",
    EventType.accepted: "notify_accepted",
    EventType.arrived: "notify_status",
    EventType.started: "notify_status",
    EventType.completed: "notify_status",
    EventType.cancelled: "notify_removed",
    EventType.expired: "notify_removed",
    EventType.declined: "notify_removed",
}


def enqueue(task: str, event_id: int) -> bool:
    """Publish `workers.tasks.<task>(event_id)` once. Not commit-safe: callers with an open
    transaction use `announce_after_commit`. Returns whether the broker took it."""
    try:
        app.send_task(f"{TASKS}.{task}", args=(event_id,), retry=False)
    except (KombuError, RedisError, OSError) as exc:
        log.error("could not enqueue %s for event %s (the sweep will): %s", task, event_id, exc)
        return False
    return True


def announce(events: Sequence[tuple[int, str]]) -> None:
    """Hand each (event id, type) to the task that announces it."""
    for event_id, type_ in events:
        enqueue(TASK_FOR_EVENT[EventType(type_)], event_id)


def enqueue_push(event_id: int) -> bool:
    return enqueue("send_push", event_id)  # routed to the `push` queue


def announce_after_commit(session: Session, events: Sequence[JobEvent]) -> None:
    """Announce the events once the transaction that wrote them has committed."""
    if events:
        pairs = [(event.id, event.type) for event in events]
        after_commit(session, lambda: announce(pairs))
