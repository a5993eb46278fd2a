"""Every change a job goes through, each one transaction that also writes its event.

A step is one conditional UPDATE from the status it allows, by the person it allows, so
the database decides races: of any number of concurrent steps on one job, those that
exclude each other leave exactly one applied. Locks are always taken job first, then the
driver's profile, so steps never deadlock. A step that matches no row is classified
afterwards: a retry of the caller's own last step answers the job again and announces
nothing; anything else is a 404, 403 or 409."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NoReturn

from sqlalchemy import CTE, ColumnElement, Insert, Select, Update, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.accounts import DriverProfile, Party, User
from models.db import insert_row, table_of, utcnow
from models.errors import Conflict, Forbidden, JobNotAvailable, NotFound
from models.job_events import EventType, JobEvent, event_values, last_step, record_event
from models.jobs import Job, JobStatus, Place, require_role
from models.offers import Offer, OfferClosed, offer_of
from models.positions import reindex_after_commit
from settings import settings

CANCELLABLE = (JobStatus.pending, JobStatus.accepted, JobStatus.arrived)
RELEASABLE = (JobStatus.accepted, JobStatus.arrived)


@dataclass
class Step:
    """A job after a step, and the events to announce (none for a retry)."""

    job: Job
    events: list[JobEvent] = field(default_factory=list)


def create_job(
    session: Session,
    customer: User,
    pickup: Place,
    dropoff: Place | None,
    notes: str | None,
    idempotency_key: str | None = None,
) -> Step:
    """Create a pending job. With an idempotency key already used by this customer within
    the window, answer that job instead, announcing nothing."""
    require_role(customer, "customer")
    now = utcnow()
    if idempotency_key is not None:
        earlier = _job_by_idempotency_key(session, customer.id, idempotency_key)
        if earlier is not None:
            if earlier.created_at > now - timedelta(seconds=settings.idempotency_window_s):
                return Step(earlier)
            earlier.idempotency_key = None  # the window has passed: the key is free again
            session.flush()
    values: dict[str, Any] = {
        "status": JobStatus.pending.value,
        "customer_id": customer.id,
        "driver_id": None,
        "pickup_lat": pickup.lat,
        "pickup_lng": pickup.lng,
        "pickup_address": pickup.address,
        "dropoff_lat": dropoff.lat if dropoff else None,
        "dropoff_lng": dropoff.lng if dropoff else None,
        "dropoff_address": dropoff.address if dropoff else None,
        "notes": notes,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "expires_at": now + timedelta(seconds=settings.job_offer_ttl_s),
        "offer_round": 1,
    }
    created = event_values(None, EventType.created, customer, now, round=1)
    if idempotency_key is None:
        job_id, event_id = _insert_job(session, values, created)
    else:
        try:
            with session.begin_nested():  # a savepoint only where a duplicate key can race
                job_id, event_id = _insert_job(session, values, created)
        except IntegrityError:
            # A concurrent request with the same key committed first: answer with its job.
            earlier = _job_by_idempotency_key(session, customer.id, idempotency_key)
            if earlier is None:
                raise
            return Step(earlier)
    job = Job(id=job_id, customer=Party(id=customer.id, name=customer.name), driver=None, **values)
    return Step(job, [JobEvent(id=event_id, **(created | {"job_id": job_id}))])


def _insert_job(
    session: Session, values: dict[str, Any], created: dict[str, Any]
) -> tuple[int, int]:
    """Insert the job and its `created` event; their ids. On PostgreSQL in one statement
    (the job's INSERT a data-modifying CTE of the event's), one round trip fewer a booking."""
    if session.get_bind().dialect.name != "postgresql":
        job_id = insert_row(session, Job, values)
        return job_id, insert_row(session, JobEvent, created | {"job_id": job_id})
    statement = _job_and_event(tuple(values))
    row = session.connection().execute(statement, values | _event_params(created)).one()
    return row.job_id, row.id


@cache
def _job_and_event(job_columns: tuple[str, ...]) -> Insert:
    """Built once, every value a parameter (the event's prefixed `event_`)."""
    jobs, events = table_of(Job), table_of(JobEvent)
    job = (
        insert(jobs)
        .values({name: bindparam(name, type_=jobs.c[name].type) for name in job_columns})
        .returning(jobs.c.id)
        .cte("job")
    )
    return _event_after(job, job.c.id).returning(events.c.job_id, events.c.id)


_EVENT_COLUMNS = ("type", "at", "actor_id", "actor_role", "data", "push_attempts")


def _event_after(change: CTE, job_id: ColumnElement[int]) -> Insert:
    """PostgreSQL: an event's INSERT after a data-modifying CTE, writing a row for each row
    the change returned (none if it matched nothing); the event's values are parameters
    prefixed `event_` (`_event_params`)."""
    events = table_of(JobEvent)
    row = select(
        job_id,
        *(bindparam(f"event_{name}", type_=events.c[name].type) for name in _EVENT_COLUMNS),
    ).select_from(change)
    return insert(events).from_select(["job_id", *_EVENT_COLUMNS], row)


def _event_params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"event_{key}": value for key, value in values.items() if key != "job_id"}


def _job_by_idempotency_key(session: Session, customer_id: int, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.customer_id == customer_id, Job.idempotency_key == key)
    )


def _transition(session: Session, job_id: int, *where: Any, **values: Any) -> Any:
    """The conditional UPDATE of one step: the changed row's driver and round, or None."""
    return session.execute(
        update(Job)
        .where(Job.id == job_id, *where)
        .values(**values)
        .returning(Job.driver_id, Job.offer_round)
        .execution_options(synchronize_session=False)
    ).first()


def _reloaded_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound("No such job.")
    return job


def _free_driver(session: Session, driver_id: int | None, job_id: int) -> None:
    if driver_id is not None:
        session.execute(
            update(DriverProfile)
            .where(DriverProfile.user_id == driver_id, DriverProfile.current_job_id == job_id)
            .values(current_job_id=None)
            .execution_options(synchronize_session=False)
        )
        reindex_after_commit(session, driver_id)


def _retry_or_refusal(
    session: Session, actor: User, job_id: int, step: EventType, is_party: bool
) -> Job:
    """After a step matched no row: the job again if this was the actor's own last step
    (a retry), else the error that says why."""
    job = _reloaded_job(session, job_id)
    last = last_step(session, job_id)
    if last is not None and last.type == step and last.actor_id == actor.id:
        return job
    if not is_party:
        raise NotFound("No such job.")
    raise Conflict(f"The job is {job.status}; it cannot be {STEP_WORDS[step]}.")


STEP_WORDS = {
    EventType.accepted: "accepted",
    EventType.arrived: "marked arrived",
    EventType.started: "started",
    EventType.completed: "completed",
    EventType.released: "released",
    EventType.declined: "declined",
    EventType.cancelled: "cancelled",
}


@dataclass(frozen=True)
class DriverStep:
    """A step only the job's driver takes: from which statuses, to which, which of the
    job's times it stamps, and whether it ends their work on the job."""

    event: EventType
    allowed: tuple[JobStatus, ...]
    becomes: JobStatus
    stamps: tuple[str, ...] = ()
    frees_driver: bool = False


ARRIVE = DriverStep(EventType.arrived, (JobStatus.accepted,), JobStatus.arrived, ("arrived_at",))
START = DriverStep(EventType.started, (JobStatus.arrived,), JobStatus.in_progress, ("started_at",))
COMPLETE = DriverStep(
    EventType.completed,
    (JobStatus.in_progress,),
    JobStatus.completed,
    ("completed_at", "ended_at"),
    frees_driver=True,
)
RELEASE = DriverStep(EventType.released, RELEASABLE, JobStatus.pending, frees_driver=True)


def _drivers_step(
    session: Session, driver: User, job_id: int, step: DriverStep, **values: Any
) -> Step:
    """A step of the job's driver: the conditional UPDATE (with `values` besides the
    status and stamps), the driver freed if the step ends their work on it, and the event
    (with the round the job is in now); a retry answers the job and records nothing."""
    require_role(driver, "driver")
    now = utcnow()
    row = _transition(
        session,
        job_id,
        Job.status.in_([s.value for s in step.allowed]),
        Job.driver_id == driver.id,
        status=step.becomes.value,
        **dict.fromkeys(step.stamps, now),
        **values,
    )
    if row is None:
        job = session.get(Job, job_id)
        is_driver = job is not None and job.driver_id == driver.id
        if job is not None and not is_driver and _may_see(session, driver, job):
            raise Forbidden("Only the job's driver can do this.")
        return Step(_retry_or_refusal(session, driver, job_id, step.event, is_driver))
    if step.frees_driver:
        _free_driver(session, driver.id, job_id)
    event = record_event(
        session, job_id, step.event, driver, now, driver_id=driver.id, round=row.offer_round
    )
    return Step(_reloaded_job(session, job_id), [event])


def _may_see(session: Session, user: User, job: Job) -> bool:
    """Whether the user may see the job (`job_for_user`'s rule), so that a refusal may be a
    403, not a 404."""
    if job.customer_id == user.id:
        return True
    if job.status != JobStatus.pending:
        return False
    offer = offer_of(session, job.id, user.id)
    return offer is not None and offer.is_open_in(job)


def accept_job(session: Session, driver: User, job_id: int) -> Step:
    """Give a pending job to a driver it is offered to in its current round. The job row is
    taken first (losers wait on its lock, then match nothing and answer 409); then, in one
    statement, the driver is claimed if their offer is open in that round (checked afresh:
    a decline may just have committed) and they are free and not suspended (a suspension
    committed meanwhile is seen: the UPDATE re-reads the row). The winner holds the job's
    lock until it commits, so every round trip it makes is waited out by the losers: the
    job comes back from its UPDATE (no reload), and on PostgreSQL the `accepted` event is
    written by the claim's statement."""
    require_role(driver, "driver")
    now = utcnow()
    take, seen_by, claim = _accept_statements()
    row = session.execute(take, {"job_id": job_id, "taker": driver.id, "at": now}).first()
    if row is None:
        # The few columns that decide: 19 of 20 concurrent accepts lose, and a loser needs
        # no job, customer or profile loaded.
        seen = _seen_offer(session, seen_by, job_id, driver.id)
        # Accepted and theirs: nothing else leaves it so (a later step changes the status,
        # a release closes their offer), so this is their retry.
        if seen.status == JobStatus.accepted and seen.driver_id == driver.id:
            return Step(_reloaded_job(session, job_id))
        raise JobNotAvailable()
    accepted = event_values(
        job_id, EventType.accepted, driver, now, driver_id=driver.id, round=row.offer_round
    )
    claiming = {"job_id": job_id, "taker": driver.id, "round": row.offer_round}
    event_id = _claim(session, claim, claiming, accepted)
    if event_id is None:
        seen = _seen_offer(session, seen_by, job_id, driver.id)
        if seen.round != row.offer_round or seen.closed_at is not None:
            raise JobNotAvailable()
        _refuse_claim(session, driver.id)
    reindex_after_commit(session, driver.id, False)
    return Step(_taken_job(row, driver), [JobEvent(id=event_id, **accepted)])


def _claim(
    session: Session, claim: Update, claiming: dict[str, Any], accepted: dict[str, Any]
) -> int | None:
    """Claim the driver for the job (`claim` with the `claiming` parameters) and write the
    `accepted` event; the event's id, or None if the claim matched nothing (and no event was
    written). One statement on PostgreSQL."""
    if session.get_bind().dialect.name != "postgresql":
        if session.execute(claim, claiming).rowcount != 1:  # type: ignore[attr-defined]
            return None
        return insert_row(session, JobEvent, accepted)
    return session.execute(_claim_and_event(), claiming | _event_params(accepted)).scalar()


def _taken_job(row: Any, driver: User) -> Job:
    """The job as the accept's UPDATE returned it, with its customer's name; not attached to
    the session."""
    values = row._asdict()
    customer = Party(id=values["customer_id"], name=values.pop("customer_name"))
    return Job(**values, customer=customer, driver=Party(id=driver.id, name=driver.name))


def _seen_offer(session: Session, seen_by: Select[Any], job_id: int, driver_id: int) -> Any:
    """The driver's offer of the job and the job's status, read afresh; NotFound if the job
    was never offered to them."""
    seen = session.execute(seen_by, {"job_id": job_id, "taker": driver_id}).first()
    if seen is None:
        raise NotFound("No such job.")
    return seen


@cache
def _accept_statements() -> tuple[Update, Select[Any], Update]:
    """accept_job's statements, built once with their values as parameters. All 20 of 20
    concurrent accepts run the first two (19 nothing else); built per call, through the
    ORM's bulk-update path, each value a bound parameter with its own cache key, they were
    a third of a losing accept's CPU."""
    jobs, offers, profiles = table_of(Job), table_of(Offer), table_of(DriverProfile)
    users = table_of(User)
    customer_name = select(users.c.name).where(users.c.id == jobs.c.customer_id)
    take = (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            jobs.c.status == JobStatus.pending.value,
            jobs.c.expires_at > bindparam("at"),
        )
        .values(
            status=JobStatus.accepted.value,
            driver_id=bindparam("taker"),
            accepted_at=bindparam("at"),
        )
        .returning(*jobs.c, customer_name.scalar_subquery().label("customer_name"))
    )
    seen_by = (
        select(offers.c.round, offers.c.closed_at, jobs.c.status, jobs.c.driver_id)
        .join(jobs, jobs.c.id == offers.c.job_id)
        .where(offers.c.job_id == bindparam("job_id"), offers.c.driver_id == bindparam("taker"))
    )
    open_offer = (
        select(offers.c.id)
        .where(
            offers.c.job_id == bindparam("job_id"),
            offers.c.driver_id == bindparam("taker"),
            offers.c.round == bindparam("round"),
            offers.c.closed_at.is_(None),
        )
        .exists()
    )
    claim = (
        update(profiles)
        .where(
            profiles.c.user_id == bindparam("taker"),
            profiles.c.current_job_id.is_(None),
            profiles.c.suspended_at.is_(None),
            open_offer,
        )
        .values(current_job_id=bindparam("job_id"))
    )
    return take, seen_by, claim


@cache
def _claim_and_event() -> Insert:
    """PostgreSQL: the claim as a data-modifying CTE of the `accepted` event's INSERT, which
    writes a row only if the claim matched one (the event's values prefixed `event_`)."""
    events = table_of(JobEvent)
    claimed = _accept_statements()[2].returning(table_of(DriverProfile).c.user_id).cte("claimed")
    job_id = bindparam("job_id", type_=events.c.job_id.type)
    return _event_after(claimed, job_id).returning(events.c.id)


def _refuse_claim(session: Session, driver_id: int) -> NoReturn:
    """Why the driver could not take the job: suspended by an operator (403: who they are,
    not the job, forbids it; no retry helps), or on another job (409)."""
    suspended_at = session.scalar(
        select(DriverProfile.suspended_at)
        .where(DriverProfile.user_id == driver_id)
        .execution_options(populate_existing=True)
    )
    if suspended_at is not None:
        raise Forbidden("You are suspended; an operator must reinstate you to take jobs.")
    raise Conflict("You are already on a job.")


def arrive_job(session: Session, driver: User, job_id: int) -> Step:
    return _drivers_step(session, driver, job_id, ARRIVE)


def start_job(session: Session, driver: User, job_id: int) -> Step:
    return _drivers_step(session, driver, job_id, START)


def complete_job(session: Session, driver: User, job_id: int) -> Step:
    """Finish the job; its driver is free for the next one in the same transaction."""
    return _drivers_step(session, driver, job_id, COMPLETE)


def release_job(session: Session, driver: User, job_id: int) -> Step:
    """Give the job back before starting it: pending again, in a new round of offers that
    this driver is never part of, with a fresh expiry; the driver is free at once."""
    done = _drivers_step(
        session,
        driver,
        job_id,
        RELEASE,
        driver_id=None,
        accepted_at=None,
        arrived_at=None,
        expires_at=utcnow() + timedelta(seconds=settings.job_offer_ttl_s),
        offer_round=Job.offer_round + 1,
    )
    if done.events:
        _close_offer(session, job_id, driver.id, OfferClosed.released, done.events[0].at)
    return done


def _close_offer(
    session: Session, job_id: int, driver_id: int, reason: OfferClosed, now: datetime
) -> bool:
    """Close the driver's open offer; whether this call closed it (a concurrent copy of the
    step may have: this UPDATE then waited for it and matched nothing)."""
    closed = session.execute(
        update(Offer)
        .where(Offer.job_id == job_id, Offer.driver_id == driver_id, Offer.closed_at.is_(None))
        .values(closed_at=now, closed_reason=reason.value)
        .execution_options(synchronize_session=False)
    )
    return bool(closed.rowcount)  # type: ignore[attr-defined]


def decline_job(session: Session, driver: User, job_id: int) -> Step:
    """Take a pending job out of this driver's feed for good. The job row is read under a
    share lock, so a decline and an accept by the same driver never both apply."""
    require_role(driver, "driver")
    now = utcnow()
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update(read=True, of=Job)
        .execution_options(populate_existing=True)
    )
    offer = offer_of(session, job_id, driver.id) if job is not None else None
    if job is None or offer is None:
        raise NotFound("No such job.")
    if offer.closed_reason == OfferClosed.declined:
        return Step(job)
    if not offer.is_open_in(job):
        raise NotFound("No such job.")
    if job.status != JobStatus.pending or job.expires_at <= now:
        raise Conflict(f"The job is {job.status}; it cannot be declined.")
    if not _close_offer(session, job_id, driver.id, OfferClosed.declined, now):
        return Step(job)  # a copy of this decline sent at the same time closed it first
    event = record_event(session, job_id, EventType.declined, driver, now, driver_id=driver.id)
    return Step(job, [event])


def cancel_job(session: Session, customer: User, job_id: int, reason: str | None = None) -> Step:
    """Cancel the customer's job while pending, accepted or arrived; its driver (if any) is
    free at once."""
    require_role(customer, "customer")
    now = utcnow()
    row = _transition(
        session,
        job_id,
        Job.customer_id == customer.id,
        Job.status.in_([s.value for s in CANCELLABLE]),
        status=JobStatus.cancelled.value,
        cancelled_at=now,
        cancelled_by="customer",
        ended_at=now,
    )
    if row is None:
        job = session.get(Job, job_id)
        is_customer = job is not None and job.customer_id == customer.id
        return Step(_retry_or_refusal(session, customer, job_id, EventType.cancelled, is_customer))
    _free_driver(session, row.driver_id, job_id)
    event = record_event(
        session, job_id, EventType.cancelled, customer, now, driver_id=row.driver_id, reason=reason
    )
    return Step(_reloaded_job(session, job_id), [event])


def expire_due_jobs(session: Session) -> list[JobEvent]:
    """Mark every pending job past its expiry as expired; returns their events."""
    now = utcnow()
    rows = session.execute(
        update(Job)
        .where(Job.status == JobStatus.pending.value, Job.expires_at <= now)
        .values(status=JobStatus.expired.value, ended_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return [
        record_event(session, job_id, EventType.expired, None, now)
        for job_id in sorted(row.id for row in rows)
    ]
