"""APNs pushes for jobs: what each says (the contract's table), and what to do with
each token's answer: record it, deactivate a dead token, or hand it back for a retry."""

from __future__ import annotations

import logging
from enum import StrEnum

from sqlalchemy.orm import Session

from models.db import session_scope, utcnow
from models.devices import DeviceToken, active_tokens, deactivate_token, record_delivered
from models.jobs import Job, JobStatus
from models.offers import distance_by_driver
from workers.apns import Outcome, Push, PushResult, apns_enabled, send_pushes

log = logging.getLogger(__name__)


class PushKind(StrEnum):
    job_new = "job:new"
    job_accepted = "job:accepted"
    job_expired = "job:expired"


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


def _accepted_push(job: Job, token: DeviceToken) -> Push:
    driver = job.driver.name if job.driver else "Your driver"
    return Push(
        token=token.token,
        environment=token.environment,
        title="Driver on the way",
        body=f"{driver} accepted your job.",
        data={"type": PushKind.job_accepted.value, "job_id": job.id},
        priority=10,
    )


def _expired_push(job: Job, token: DeviceToken) -> Push:
    return Push(
        token=token.token,
        environment=token.environment,
        title="No driver found",
        body="Nobody nearby could take your job. Try again in a few minutes.",
        data={"type": PushKind.job_expired.value, "job_id": job.id},
        priority=None,
    )


def _pushes(session: Session, kind: PushKind, job: Job, tokens: list[DeviceToken]) -> list[Push]:
    if kind is PushKind.job_new:
        distances = distance_by_driver(session, job.id)
        return [_offer_push(job, t, distances.get(t.user_id)) for t in tokens]
    if kind is PushKind.job_accepted:
        return [_accepted_push(job, t) for t in tokens]
    return [_expired_push(job, t) for t in tokens]


def _still_relevant(kind: PushKind, job: Job) -> bool:
    """An offer push is pointless, and never retried, once the job is no longer pending."""
    if kind is PushKind.job_new:
        return job.status == JobStatus.pending and job.expires_at > utcnow()
    return True


def push_job(
    kind: PushKind, job_id: int, user_ids: list[int], only_tokens: list[str] | None = None
) -> list[str]:
    """Push `kind` about the job to the users' active tokens (or to `only_tokens` of them,
    on a retry). Returns the tokens whose delivery should be retried."""
    if not apns_enabled():
        return []  # warned once when the worker started
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not _still_relevant(kind, job):
            return []
        tokens = active_tokens(session, user_ids)
        if only_tokens is not None:
            tokens = [t for t in tokens if t.token in set(only_tokens)]
        pushes = _pushes(session, kind, job, tokens)
    if not pushes:
        return []
    results = send_pushes(pushes)
    record_outcomes(kind, job_id, results)
    return [r.push.token for r in results if r.outcome is Outcome.retry]


def record_outcomes(kind: PushKind, job_id: int, results: list[PushResult]) -> None:
    with session_scope() as session:
        record_delivered(session, [r.push.token for r in results if r.outcome is Outcome.delivered])
        for result in results:
            if result.outcome is Outcome.token_dead:
                deactivate_token(session, result.push.token, result.reason or str(result.status))
                log.info("token %s… deactivated: %s", result.push.token[:8], result.reason)
            elif result.outcome is Outcome.dropped:
                log.error(
                    "%s push for job %s to %s… dropped: %s %s",
                    kind,
                    job_id,
                    result.push.token[:8],
                    result.status,
                    result.reason,
                )
