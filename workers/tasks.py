"""Celery tasks: thin, taking ids, with their retry policy on the decorator.

Every task is safe to run twice (late acks redeliver after a crash): state changes are
conditional and offers unique per job and driver."""

from __future__ import annotations

import logging
import random

from celery import Task
from celery.exceptions import MaxRetriesExceededError
from celery.signals import worker_ready
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from workers.apns import apns_enabled
from workers.celery_app import app
from workers.dispatch import (
    announce_acceptance,
    announce_removal,
    dispatch_job,
    expire_jobs_now,
    jobs_to_redispatch,
)
from workers.notifications import PushKind, push_job

log = logging.getLogger(__name__)

TRANSIENT = (RedisError, OperationalError, DatabaseUnavailable, ConnectionError)
PUSH_MAX_RETRIES = 6
PUSH_BACKOFF_BASE_S = 2.0
PUSH_BACKOFF_CAP_S = 60.0


@worker_ready.connect
def _warn_if_pushes_are_off(**_: object) -> None:
    if not apns_enabled():
        log.warning(
            "APNs is not configured (APNS_KEY_PATH, APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC): "
            "pushes are skipped; sockets and everything else run."
        )


retried = {
    "bind": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
}


def push_backoff_s(attempt: int) -> float:
    """Exponential backoff with equal jitter: 1–2 s, 2–4 s, 4–8 s …, capped at a minute.
    The floor keeps a retry from racing the answer that made it pointless."""
    ceiling = min(PUSH_BACKOFF_CAP_S, PUSH_BACKOFF_BASE_S * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


def queue_push(kind: PushKind, job_id: int, user_ids: list[int]) -> None:
    if user_ids:
        send_push.apply_async(args=(kind.value, job_id, user_ids), queue="push")


@app.task(name="workers.tasks.notify_nearby", **retried)
def notify_nearby(self: Task, job_id: int) -> int:
    drivers = dispatch_job(job_id)
    queue_push(PushKind.job_new, job_id, drivers)
    return len(drivers)


@app.task(name="workers.tasks.notify_accepted", **retried)
def notify_accepted(self: Task, job_id: int) -> None:
    customer_id = announce_acceptance(job_id)
    if customer_id is not None:
        queue_push(PushKind.job_accepted, job_id, [customer_id])


@app.task(name="workers.tasks.notify_removed", **retried)
def notify_removed(self: Task, job_id: int) -> None:
    removed = announce_removal(job_id)
    if removed is not None and removed[0] == "expired":
        queue_push(PushKind.job_expired, job_id, [removed[1]])


@app.task(
    name="workers.tasks.send_push",
    bind=True,
    max_retries=PUSH_MAX_RETRIES,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_jitter=True,
)
def send_push(
    self: Task, kind: str, job_id: int, user_ids: list[int], tokens: list[str] | None = None
) -> None:
    retry_tokens = push_job(PushKind(kind), job_id, user_ids, tokens)
    if not retry_tokens:
        return
    try:
        raise self.retry(
            args=(kind, job_id, user_ids, retry_tokens),
            countdown=push_backoff_s(self.request.retries),
        )
    except MaxRetriesExceededError:
        log.error(
            "%s push for job %s gave up after %d attempts on %d tokens",
            kind,
            job_id,
            self.request.retries + 1,
            len(retry_tokens),
        )


@app.task(name="workers.tasks.redispatch_undispatched", **retried)
def redispatch_undispatched(self: Task) -> list[int]:
    """Beat: dispatch pending jobs whose enqueue was lost (broker down at creation)."""
    job_ids = jobs_to_redispatch()
    for job_id in job_ids:
        notify_nearby.apply_async(args=(job_id,))
    if job_ids:
        log.warning("re-dispatching %d jobs never dispatched: %s", len(job_ids), job_ids)
    return job_ids


@app.task(name="workers.tasks.expire_jobs", **retried)
def expire_jobs(self: Task) -> list[int]:
    """Beat: expire pending jobs past `expires_at` and tell their drivers and customers."""
    job_ids = expire_jobs_now()
    for job_id in job_ids:
        notify_removed.apply_async(args=(job_id,))
    return job_ids
