"""What the tasks do: read the job, decide, then reach drivers and customers.

Socket events go out at once on the `dispatch` queue's worker; pushes are handed to the
`push` queue, so a slow or failing APNs never delays a feed."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from models.db import redis_connection, session_scope
from models.jobs import Job, JobStatus, expire_due_jobs, mark_dispatched, undispatched_job_ids
from models.offers import mark_notified, offer_job, offered_driver_ids, unnotified_offers
from models.schemas import JobView, OfferView, as_json
from settings import settings
from workers.events import customer_room, driver_room, emit, emit_each

log = logging.getLogger(__name__)

REDISPATCH_HOLD_S = 30


def _job(session: Session, job_id: int) -> Job | None:
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s does not exist", job_id)
    return job


def dispatch_job(job_id: int) -> list[int]:
    """Offer a pending job to the eligible drivers and tell each of them.

    Offers are committed first, then each un-notified offer gets `job:new` and is marked:
    a task redelivered after a crash offers nobody twice and resumes the notifying.
    Returns the drivers notified now, whose pushes the caller queues."""
    with session_scope() as session:
        job = _job(session, job_id)
        if job is None or job.status != JobStatus.pending:
            return []
        offer_job(session, redis_connection(), job)
        offers = unnotified_offers(session, job_id)
        events = [("job:new", as_json(OfferView.of(o)), driver_room(o.driver_id)) for o in offers]
    # Committed first: a driver who accepts the moment the event arrives finds the offer.
    emit_each(events)
    with session_scope() as session:
        mark_notified(session, [offer.id for offer in offers])
        mark_dispatched(session, job_id)
    log.info("job %s offered to %d drivers", job_id, len(offers))
    return [offer.driver_id for offer in offers]


def announce_acceptance(job_id: int) -> int | None:
    """`job:accepted` to every offered driver, `job:status` to the customer and the winner.
    Returns the customer to push to, or None if the job is not accepted."""
    with session_scope() as session:
        job = _job(session, job_id)
        if job is None or job.status != JobStatus.accepted or job.driver_id is None:
            return None
        drivers = offered_driver_ids(session, job_id)
        view = as_json(JobView.of(job))
        accepted = {"job_id": job.id, "accepted_at": view["accepted_at"]}
        customer_id, winner_id = job.customer_id, job.driver_id
    emit("job:accepted", accepted, [driver_room(d) for d in sorted(set(drivers) | {winner_id})])
    emit("job:status", view, [customer_room(customer_id), driver_room(winner_id)])
    return customer_id


def announce_removal(job_id: int) -> tuple[str, int] | None:
    """`job:removed` to every offered driver, `job:status` to the customer (and to the
    driver of a cancelled accepted job). Returns (reason, customer id)."""
    with session_scope() as session:
        job = _job(session, job_id)
        if job is None or job.status not in (JobStatus.cancelled, JobStatus.expired):
            return None
        reason = job.status
        drivers = offered_driver_ids(session, job_id)
        view = as_json(JobView.of(job))
        customer_id, driver_id = job.customer_id, job.driver_id
    emit("job:removed", {"job_id": job_id, "reason": reason}, [driver_room(d) for d in drivers])
    status_rooms = [customer_room(customer_id)]
    if driver_id is not None:
        status_rooms.append(driver_room(driver_id))
    emit("job:status", view, status_rooms)
    return reason, customer_id


def jobs_to_redispatch() -> list[int]:
    """Undispatched pending jobs, each handed out at most once per REDISPATCH_HOLD_S so a
    backlog in the queue is not multiplied by every beat tick."""
    with session_scope() as session:
        job_ids = undispatched_job_ids(session, settings.redispatch_after_s)
    r = redis_connection()
    hold = settings.redis_key("redispatch")
    return [j for j in job_ids if r.set(f"{hold}:{j}", 1, nx=True, ex=REDISPATCH_HOLD_S)]


def expire_jobs_now() -> list[int]:
    with session_scope() as session:
        return expire_due_jobs(session)
