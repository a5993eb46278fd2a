"""Celery tasks: thin, taking event ids, with their retry policy on the decorator.

Every task is safe to run twice (late acks redeliver after a crash, and the sweep
re-drives what is overdue): each announces one `job_events` row and marks it, and offers
are unique per job, driver and round."""

from __future__ import annotations

import logging

from celery import Task
from celery.signals import worker_ready
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from settings import settings
from workers.apns import apns_enabled
from workers.celery_app import app
from workers.dispatch import announce_change, deliver_offers, offer_job
from workers.enqueue import enqueue_push
from workers.metrics import serve_scrapes
from workers.notifications import PUSH_MAX_RETRIES, push_event

log = logging.getLogger(__name__)

TRANSIENT = (RedisError, OperationalError, DatabaseUnavailable, ConnectionError)


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    if settings.metrics_port is not None:
        serve_scrapes(settings.bind_host, settings.metrics_port)


@worker_ready.connect
def _warn_if_pushes_are_off(**_: object) -> None:
    if not apns_enabled():
        log.warning(
            "APNs is not configured (APNS_KEY_PATH, APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC): "
            "pushes are skipped; sockets and everything else run."
        )


# Every task's Celery options: retried with jittered exponential backoff while Redis, the
# broker or the database is unreachable.
RETRY_WHILE_UNREACHABLE = {
    "bind": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
}


@app.task(name="workers.tasks.notify_nearby", **RETRY_WHILE_UNREACHABLE)
def notify_nearby(self: Task, event_id: int) -> None:
    """`created` / `released`: offer the round to the eligible drivers; `offered`: send
    them `job:new` (and queue their pushes)."""
    notice, push_owed = offer_job(event_id)
    if push_owed:
        enqueue_push(event_id)  # a release: "Finding you another driver"
    if notice is not None and deliver_offers(notice):
        enqueue_push(notice.event_id)


@app.task(name="workers.tasks.notify_accepted", **RETRY_WHILE_UNREACHABLE)
def notify_accepted(self: Task, event_id: int) -> None:
    if announce_change(event_id):
        enqueue_push(event_id)


@app.task(name="workers.tasks.notify_status", **RETRY_WHILE_UNREACHABLE)
def notify_status(self: Task, event_id: int) -> None:
    """`arrived`, `started`, `completed`: `job:status` and the customer's push."""
    if announce_change(event_id):
        enqueue_push(event_id)


@app.task(name="workers.tasks.notify_removed", **RETRY_WHILE_UNREACHABLE)
def notify_removed(self: Task, event_id: int) -> None:
    """`cancelled`, `expired`, `declined`: `job:removed` to the drivers who drop it."""
    if announce_change(event_id):
        enqueue_push(event_id)


@app.task(
    name="workers.tasks.send_push",
    **RETRY_WHILE_UNREACHABLE | {"max_retries": PUSH_MAX_RETRIES + 2},  # the row's bound counts
)
def send_push(self: Task, event_id: int) -> None:
    countdown = push_event(event_id)
    if countdown is not None:
        raise self.retry(countdown=countdown)
