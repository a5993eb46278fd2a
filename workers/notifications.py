"""APNs pushes for job events: who each event pushes to and what it says (the contract's
tables), and what to do with each token's answer: record it, deactivate a dead token, or
retry it later.

A push is owed from the moment its event is announced (`job_events.push_due_at`) until
`push_event` clears it; a push worker that dies mid-way leaves it due, and the sweep
re-drives it. Retries keep their count and remaining tokens on the event row, so the
bound holds across processes."""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from datetime import timedelta
from enum import StrEnum
from typing import NamedTuple

from sqlalchemy.orm import Session

from models.db import session_scope, utcnow
from models.devices import DeviceToken, active_tokens, deactivate_token, record_delivered
from models.job_events import EventType, JobEvent
from models.jobs import Job, JobStatus
from models.offers import distance_by_driver, open_offer_driver_ids
from settings import settings
from workers.apns import Outcome, Push, PushResult, apns_enabled, send_pushes
from workers.logs import bind_job
from workers.metrics import PUSHES

log = logging.getLogger(__name__)

PUSH_MAX_RETRIES = 6
PUSH_BACKOFF_BASE_S = 2.0
PUSH_BACKOFF_CAP_S = 60.0


class PushKind(StrEnum):
    job_new = "job:new"
    job_accepted = "job:accepted"
    job_arrived = "job:arrived"
    job_completed = "job:completed"
    job_released = "job:released"
    job_cancelled = "job:cancelled"
    job_expired = "job:expired"


class Alert(NamedTuple):
    """What the phone shows, and its `apns-priority` (10: now; None: the header left out)."""

    title: str
    body: str
    priority: int | None


def push_backoff_s(attempt: int) -> float:
    """Exponential backoff with equal jitter: 1–2 s, 2–4 s, 4–8 s …, capped at a minute.
    The floor keeps a retry from racing the answer that made it pointless."""
    ceiling = min(PUSH_BACKOFF_CAP_S, PUSH_BACKOFF_BASE_S * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


def _kind(event: JobEvent) -> PushKind | None:
    if event.type == EventType.cancelled:
        return PushKind.job_cancelled if event.data.get("driver_id") is not None else None
    return {
        EventType.offered: PushKind.job_new,
        EventType.accepted: PushKind.job_accepted,
        EventType.arrived: PushKind.job_arrived,
        EventType.completed: PushKind.job_completed,
        EventType.released: PushKind.job_released,
        EventType.expired: PushKind.job_expired,
    }.get(EventType(event.type))


def has_push(event: JobEvent) -> bool:
    return _kind(event) is not None


def _recipients(session: Session, kind: PushKind, event: JobEvent, job: Job) -> list[int]:
    if kind is PushKind.job_new:
        # An offer push is pointless, and never retried, once the job is no longer pending
        # in that round or the driver declined it.
        if not (
            job.status == JobStatus.pending
            and job.expires_at > utcnow()
            and job.offer_round == event.data["round"]
        ):
            return []
        return open_offer_driver_ids(session, job, event.data["drivers"])
    if kind is PushKind.job_cancelled:
        return [event.data["driver_id"]]
    return [job.customer_id]


def _alert(kind: PushKind, job: Job, event: JobEvent) -> Alert:
    driver = job.driver.name if job.driver else "Your driver"
    return {
        PushKind.job_accepted: Alert("Driver on the way", f"{driver} accepted your job.", 10),
        PushKind.job_arrived: Alert("Your driver is here", f"{driver} is at the pickup.", 10),
        PushKind.job_completed: Alert("Job complete", "Thanks for using Dispatch.", 10),
        PushKind.job_released: Alert(
            "Finding you another driver", "Your driver could not make it; we are on it.", 10
        ),
        PushKind.job_cancelled: Alert(
            "Job cancelled", "The customer cancelled this job. You are free for the next.", 10
        ),
        PushKind.job_expired: Alert(
            "No driver found",
            "Nobody nearby could take your job. Try again in a few minutes.",
            None,
        ),
    }[kind]


def _offer_push(job: Job, token: DeviceToken, distance_km: float | None) -> Push:
    body = f"{distance_km:.1f} km from you" if distance_km is not None else "Near you"
    if job.pickup_address:
        body += f" · {job.pickup_address}"
    return Push(
        token=token.token,
        environment=token.environment,
        title="New job nearby",
        body=body,
        data={"type": PushKind.job_new.value, "job_id": job.id},
        priority=10,
        collapse_id=f"job-{job.id}",
        expiration=job.expires_at,
    )


def _pushes(
    session: Session, kind: PushKind, event: JobEvent, job: Job, tokens: list[DeviceToken]
) -> list[Push]:
    if kind is PushKind.job_new:
        distances = distance_by_driver(session, job.id)
        return [_offer_push(job, t, distances.get(t.user_id)) for t in tokens]
    alert = _alert(kind, job, event)
    return [
        Push(
            token=t.token,
            environment=t.environment,
            title=alert.title,
            body=alert.body,
            data={"type": kind.value, "job_id": job.id},
            priority=alert.priority,
        )
        for t in tokens
    ]


def push_event(event_id: int) -> float | None:
    """Send the pushes the event still owes. Returns the countdown to a retry, or None
    when nothing more is owed (delivered, dead, irrelevant, or given up and logged)."""
    with session_scope() as session:
        event = session.get(JobEvent, event_id)
        if event is None or event.push_due_at is None:
            return None
        bind_job(event.job_id, event.id)
        job = session.get(Job, event.job_id)
        kind = _kind(event)
        pushes: list[Push] = []
        if apns_enabled() and job is not None and kind is not None:
            tokens = active_tokens(session, _recipients(session, kind, event, job))
            if event.push_tokens is not None:
                tokens = [t for t in tokens if t.token in set(event.push_tokens)]
            pushes = _pushes(session, kind, event, job, tokens)
        if not pushes or kind is None:
            event.push_due_at = None
            return None
        # Claimed for this attempt: only a push worker that dies leaves it overdue.
        event.push_due_at = utcnow() + timedelta(seconds=settings.push_due_s)
        attempt = event.push_attempts
    results = send_pushes(pushes)
    record_outcomes(kind, event_id, results)
    retry = [r.push.token for r in results if r.outcome is Outcome.retry]
    with session_scope() as session:
        event = session.get(JobEvent, event_id)
        assert event is not None
        if retry and attempt < PUSH_MAX_RETRIES:
            countdown = push_backoff_s(attempt)
            event.push_tokens = retry
            event.push_attempts = attempt + 1
            event.push_due_at = utcnow() + timedelta(seconds=countdown + settings.push_due_s)
            return countdown
        if retry:
            log.error(
                "%s push for job %s gave up after %d attempts on %d tokens",
                kind,
                event.job_id,
                attempt + 1,
                len(retry),
            )
        event.push_due_at = None
        event.push_tokens = None
    return None


def _reason_label(result: PushResult) -> str:
    """APNs's reason (one of Apple's few dozen words), else the HTTP status, else
    `no_answer`; anything else is `other`, so a strange answer cannot grow the labels."""
    reason = result.reason or (str(result.status) if result.status else "no_answer")
    return reason if re.fullmatch(r"[A-Za-z0-9_]{1,40}", reason) else "other"


def record_outcomes(kind: PushKind, event_id: int, results: list[PushResult]) -> None:
    for result in results:
        PUSHES.labels(result.outcome.value, _reason_label(result)).inc()
    outcomes = dict(Counter(result.outcome.value for result in results))
    log.info(
        "%s pushes sent: %s",
        kind,
        ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
        extra={"push": kind.value, "outcomes": outcomes},
    )
    with session_scope() as session:
        record_delivered(session, [r.push.token for r in results if r.outcome is Outcome.delivered])
        for result in results:
            if result.outcome is Outcome.token_dead:
                deactivate_token(session, result.push.token, result.reason or str(result.status))
                log.info("token %s… deactivated: %s", result.push.token[:8], result.reason)
            elif result.outcome is Outcome.dropped:
                log.error(
                    "%s push for event %s to %s… dropped: %s %s",
                    kind,
                    event_id,
                    result.push.token[:8],
                    result.status,
                    result.reason,
                )
