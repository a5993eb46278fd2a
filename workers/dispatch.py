"""Announcing a job's changes: offers and `job:new` for each round, then `job:accepted`,
`job:removed` and `job:status` for every later change, and the tracking targets; and to
the operators' room, `ops:job` with the job as it is after each of them.

Each function announces one `job_events` row and marks it announced in the transaction
that read it, so a redelivered or re-driven task does nothing twice. Socket events go out
at once from the `dispatch` queue's worker; pushes are handed to the `push` queue
(`send_push`), so a slow or failing APNs never delays a feed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import redis
from sqlalchemy import Executable, bindparam, select
from sqlalchemy.orm import Session

from models.db import after_commit, redis_connection, session_scope, utcnow
from models.job_events import (
    EventType,
    JobEvent,
    announcement,
    announcement_lock,
    hold_announcements,
    last_step,
    mark_announced,
    record_announcement,
)
from models.jobs import Job, JobStatus
from models.offers import (
    MadeOffer,
    Offer,
    mark_notified,
    offer_and_announce,
    round_driver_ids,
    unnotified_offers,
)
from models.rooms import OPERATORS_ROOM, customer_room, driver_room
from models.schemas import JobView, OfferView, as_json, job_views, utc_z
from models.tracking import sync_tracking
from settings import settings
from workers.apns import apns_enabled
from workers.events import emit, emit_each
from workers.logs import bind_job
from workers.metrics import (
    BOOKING_TO_ACCEPT,
    BOOKING_TO_FIRST_OFFER,
    JOB_EVENTS,
    OFFERS_PER_ROUND,
    OFFERS_SENT,
)
from workers.notifications import has_push

log = logging.getLogger(__name__)


def _unannounced(session: Session, event_id: int) -> JobEvent | None:
    event = session.get(JobEvent, event_id)
    if event is None:
        log.warning("job event %s does not exist", event_id)
        return None
    bind_job(event.job_id, event.id)
    return None if event.announced_at is not None else event


def _emit(event: str, payload: dict[str, Any], rooms: list[str]) -> None:
    """Publish one socket event, and say so once (not once per socket)."""
    emit(event, payload, rooms)
    _emitted(event, len(rooms))


def _emitted(event: str, rooms: int) -> None:
    if rooms:
        log.info("%s emitted to %d rooms", event, rooms, extra={"event": event, "rooms": rooms})


def _push_within(event: JobEvent) -> float | None:
    """When the event's pushes are due; None if it has none (or APNs is not configured:
    then pushes are skipped, as the worker warned at start)."""
    return settings.push_due_s if has_push(event) and apns_enabled() else None


def _status_rooms(job: Job, event: JobEvent) -> list[str]:
    """`job:status` goes to the customer, the driver now, and a driver the change let go."""
    drivers = {d for d in (job.driver_id, event.data.get("driver_id")) if d is not None}
    return [customer_room(job.customer_id), *(driver_room(d) for d in sorted(drivers))]


def _announce_status(session: Session, r: redis.Redis, job: Job, event: JobEvent) -> JobView:
    """`job:status` with the job as it is now, and the tracking targets to match; returns
    that view."""
    last = last_step(session, job.id)
    version = max(event.id, last.id if last is not None else 0)
    drivers = [d for d in (job.driver_id, event.data.get("driver_id")) if d is not None]
    sync_tracking(r, job, version, drivers)  # first: no update may follow a final status
    [view] = job_views(r, [job])
    _emit("job:status", as_json(view), _status_rooms(job, event))
    return view


def _tell_operators(view: JobView) -> None:
    """`ops:job`: the job as the announcement left it, for the operators' console."""
    _emit("ops:job", as_json(view), [OPERATORS_ROOM])


@dataclass(frozen=True)
class OfferNotice:
    """The `job:new` events an `offered` event owes, built from committed offers."""

    event_id: int
    job_id: int
    offer_ids: list[int]
    events: list[tuple[str, dict[str, Any], str]]
    job: dict[str, Any]  # the JobView, for the operators' room
    booked_at: datetime
    first_round: bool


def _offer_notice(job: Job, offered: JobEvent, offers: Sequence[MadeOffer | Offer]) -> OfferNotice:
    """`job:new` for each of the `offered` event's offers not sent yet, nearest first."""
    view = as_json(JobView.of(job))
    return OfferNotice(
        offered.id,
        job.id,
        [offer.id for offer in offers],
        [
            ("job:new", payload, driver_room(offer.driver_id))
            for offer, payload in zip(offers, OfferView.payloads(view, offers), strict=True)
        ],
        view,
        job.created_at,
        offered.data["round"] == 1,
    )


def _unsent_offers(session: Session, job: Job, offered: JobEvent) -> list[Offer]:
    """The offers an `offered` event names that have not had their `job:new` (all of them,
    unless a worker died half-way); none once the job left that round."""
    live = job.status == JobStatus.pending and job.offer_round == offered.data["round"]
    return unnotified_offers(session, job, offered.data["drivers"]) if live else []


def offer_job(event_id: int) -> tuple[OfferNotice | None, bool]:
    """A `created` or `released` event: (for a release, `job:status` to the customer and the
    releasing driver first, then) offer the round the event opened to the eligible drivers,
    recording an `offered` event. An `offered` event (re-driven) is taken as it is.
    Returns the `job:new` events owed, to `deliver_offers` once this has committed, and
    whether the event itself owes a push (a release: the customer's)."""
    r = redis_connection()
    with session_scope() as session:
        # The event and its job in one read, holding the job's announcements (on PostgreSQL;
        # SQLite runs one transaction at a time) and the job under a share lock, so that no
        # step changes it while its offers are made.
        dialect = session.get_bind().dialect.name
        found = session.execute(_event_and_job(dialect), {"event_id": event_id}).first()
        if found is None:
            return None, False
        event, job = found.JobEvent, found.Job
        bind_job(job.id, event.id)
        if event.announced_at is not None:
            return None, False
        if event.type == EventType.offered:
            return _offer_notice(job, event, _unsent_offers(session, job, event)), False
        if event.type == EventType.released:
            _announce_status(session, r, job, event)
        offered = None
        push_within = _push_within(event)
        announced = announcement(event.id, push_within)
        if job.offer_round == event.data.get("round", 1):
            offered, marked = offer_and_announce(session, r, job, announced)
            OFFERS_PER_ROUND.observe(len(offered.offers) if offered is not None else 0)
        else:
            marked = record_announcement(session, announced)
        if offered is None:
            _tell_operators(JobView.of(job))  # else deliver_offers does, once they commit
        _count_announced(session, event, job, marked)
        notice = _offer_notice(job, offered.event, offered.offers) if offered else None
        return notice, push_within is not None


@cache
def _event_and_job(dialect: str) -> Executable:
    """Built once, the event's id a parameter (every dispatch of a job starts here). The
    announcements' lock is taken before the job's share lock, as `announce_change` takes
    it before reading: nobody holding it waits for a job row."""
    statement = (
        select(JobEvent, Job)
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.id == bindparam("event_id"))
        .with_for_update(read=True, of=Job)
    )
    if dialect == "postgresql":
        return statement.add_columns(announcement_lock(Job.id))
    return statement


def deliver_offers(notice: OfferNotice) -> bool:
    """Send the `job:new` events (their offers are committed: a driver who accepts the
    moment one arrives finds the offer), then mark the offers and the `offered` event.
    Returns whether pushes are owed."""
    bind_job(notice.job_id, notice.event_id)
    # The operators' console reads the job's offers again on `ops:job`: they are committed.
    emit_each([*notice.events, ("ops:job", notice.job, OPERATORS_ROOM)])
    _emitted("job:new", len(notice.events))
    _emitted("ops:job", 1)
    push_within = settings.push_due_s if notice.offer_ids and apns_enabled() else None
    now = utcnow()
    with session_scope() as session:
        mark_notified(session, notice.offer_ids, now)
        marked = mark_announced(session, notice.event_id, push_within)
    if marked:
        JOB_EVENTS.labels(EventType.offered.value).inc()
        OFFERS_SENT.inc(len(notice.offer_ids))
        if notice.first_round and notice.offer_ids:
            BOOKING_TO_FIRST_OFFER.observe((now - notice.booked_at).total_seconds())
    log.info("job %s offered to %d drivers", notice.job_id, len(notice.offer_ids))
    return push_within is not None


def announce_change(event_id: int) -> bool:
    """Any change after the offers: `job:accepted` to the round's drivers, `job:removed`
    to the drivers who should drop it, `job:status` to the customer and the drivers
    concerned, the tracking targets. Returns whether pushes are owed."""
    r = redis_connection()
    with session_scope() as session:
        event = _unannounced(session, event_id)
        if event is None:
            return False
        hold_announcements(session, event.job_id)
        job = session.get(Job, event.job_id, populate_existing=True)
        assert job is not None
        if event.type == EventType.accepted:
            drivers = set(
                round_driver_ids(session, job.id, event.data.get("round", job.offer_round))
            )
            drivers.add(event.data["driver_id"])
            accepted = {"job_id": job.id, "accepted_at": utc_z(event.at)}
            _emit("job:accepted", accepted, [driver_room(d) for d in sorted(drivers)])
        removed = _removal(session, job, event)
        if removed is not None:
            payload, rooms = removed
            _emit("job:removed", payload, rooms)
        if event.type != EventType.declined:
            _tell_operators(_announce_status(session, r, job, event))
        else:
            _tell_operators(JobView.of(job))
        push_within = _push_within(event)
        _mark_announced(session, event, job, push_within)
    return push_within is not None


def _mark_announced(session: Session, event: JobEvent, job: Job, push_within: float | None) -> None:
    """Mark the event announced and, once that commits, count it (once: a re-driven
    copy finds it marked)."""
    _count_announced(session, event, job, mark_announced(session, event.id, push_within))


def _count_announced(session: Session, event: JobEvent, job: Job, marked: bool) -> None:
    if not marked:
        return
    kind = event.type
    waited = (event.at - job.created_at).total_seconds()
    after_commit(session, lambda: JOB_EVENTS.labels(kind).inc())
    if kind == EventType.accepted:
        after_commit(session, lambda: BOOKING_TO_ACCEPT.observe(waited))


def _removal(
    session: Session, job: Job, event: JobEvent
) -> tuple[dict[str, Any], list[str]] | None:
    if event.type == EventType.declined:
        return {"job_id": job.id, "reason": "declined"}, [driver_room(event.data["driver_id"])]
    if event.type in (EventType.cancelled, EventType.expired):
        drivers = round_driver_ids(session, job.id, job.offer_round)
        return {"job_id": job.id, "reason": event.type}, [driver_room(d) for d in drivers]
    return None
