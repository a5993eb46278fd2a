"""Publishing announcement tasks: by name, after commit, never blocking a request.

Every change of a job is a row in `job_events` committed with the change; this module
hands each row to the task that announces it. If the broker is down the publish fails
fast and is logged; the row stays unannounced, and the relay's sweep (`workers.relay`) re-drives it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from amqp.exceptions import MessageNacked
from kombu import Producer
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from models.db import after_commit, redis_connection
from models.job_events import EventType, JobEvent
from models.jobs import Job
from models.lifecycle import Step
from models.tracking import sync_tracking
from settings import settings
from workers.backlog import published_header
from workers.celery_app import app
from workers.logs import bind_job, task_headers

log = logging.getLogger(__name__)

TASKS = "workers.tasks"
# How long a publish waits for RabbitMQ's confirm (Redis has none): a broker that stops
# taking publishes (RabbitMQ in a memory or disk alarm) fails it, and the sweep re-drives
# it, rather than holding the request.
CONFIRM_TIMEOUT_S = settings.broker_publish_timeout_s * 2
PUBLISH_ERRORS = (KombuError, RedisError, OSError, MessageNacked)
# The queues a publish declares first. RabbitMQ drops what reaches an exchange before its
# queue is bound, so there Celery's default stands: the task's queue, declared once per
# connection. On Redis a task goes onto its queue's list by name, declared or not, and
# binding the queue to the channel again cost every publish a copy of queue and exchange.
DECLARE = None if settings.broker_is_rabbitmq else ()

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


# The changes that start, move or end a driver's tracking.
TRACKED_STEPS = (
    EventType.accepted,
    EventType.arrived,
    EventType.started,
    EventType.completed,
    EventType.released,
    EventType.cancelled,
)


def enqueue(task: str, event_id: int) -> bool:
    """Publish `workers.tasks.<task>(event_id)` once, carrying this request's id to it (the
    API's, or the one the running task got). Not commit-safe: callers with an open
    transaction use `announce_after_commit`. Returns whether the broker took it."""
    try:
        with _producer() as producer:
            app.send_task(
                f"{TASKS}.{task}",
                args=(event_id,),
                producer=producer,
                retry=False,
                headers=task_headers() | published_header(),
                confirm_timeout=CONFIRM_TIMEOUT_S,
                argsrepr=f"({event_id},)",  # what Celery's saferepr would make, without it
                kwargsrepr="{}",
                declare=DECLARE,
            )
    except PUBLISH_ERRORS as exc:
        log.error("could not enqueue %s for event %s (the sweep will): %s", task, event_id, exc)
        return False
    return True


@contextmanager
def _producer() -> Iterator[Producer]:
    """A producer of the app's pool whose connection, if a publish fails, is dropped at once:
    the pool would close it politely, waiting for the broker's answer, and a RabbitMQ that
    stopped reading from publishers gives none until its alarm ends."""
    with app.producer_or_acquire() as producer:
        try:
            yield producer
        except PUBLISH_ERRORS:
            producer.connection.collect()
            raise


def announce(events: Sequence[tuple[int, str]]) -> None:
    """Hand each (event id, type) to the task that announces it."""
    for event_id, type_ in events:
        enqueue(TASK_FOR_EVENT[EventType(type_)], event_id)


def enqueue_push(event_id: int) -> bool:
    return enqueue("send_push", event_id)  # routed to the `push` queue


def _retarget(job: Job, event: JobEvent) -> None:
    """Point the tracking targets at the job as the step left it, so that no position
    reported after the answer reaches a customer it no longer concerns. The announcement
    writes the same (versioned: the newer write wins), so a failure here costs seconds."""
    if event.type not in TRACKED_STEPS:
        return
    drivers = [d for d in (job.driver_id, event.data.get("driver_id")) if d is not None]
    try:
        sync_tracking(redis_connection(), job, event.id, drivers)
    except RedisError as exc:
        log.warning("tracking for job %s left to its announcement: %s", job.id, exc)


def announce_after_commit(session: Session, done: Step) -> None:
    """Once the step's transaction has committed: retarget the tracking, and hand each of
    its events to the task that announces it."""
    if not done.events:
        return
    job, last = done.job, done.events[-1]
    bind_job(job.id)  # the request's log line names the job (a new one has no id in its path)
    pairs = [(event.id, event.type) for event in done.events]

    def committed() -> None:
        _retarget(job, last)
        announce(pairs)

    after_commit(session, committed)
