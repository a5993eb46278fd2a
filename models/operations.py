"""What operators see and do: every driver's standing and last position, approving and
suspending drivers (each change logged with the operator who made it), jobs by status with
their offers, and live counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from models.accounts import DriverEvent, DriverEventType, DriverProfile, Role, User, normalize_email
from models.db import utcnow
from models.errors import NotFound
from models.jobs import ON_JOB, Job, JobStatus
from models.offers import Offer
from models.positions import reindex_after_commit
from models.tracking import Position, last_positions

# The statuses counted live: waiting for a driver, or held by one.
LIVE_STATUSES = (JobStatus.pending, *ON_JOB)


@dataclass(frozen=True)
class StandingChange:
    """A driver after an operator's approve or suspend, and the event it logged (None when
    the driver already stood so: the action is idempotent and announces nothing)."""

    driver: User
    event: DriverEvent | None


@dataclass(frozen=True)
class DriverStatus:
    """A driver as operators see them: their account and standing, and last position."""

    driver: User
    position: Position | None

    @property
    def profile(self) -> DriverProfile:
        assert self.driver.driver_profile is not None
        return self.driver.driver_profile


@dataclass(frozen=True)
class LiveCounts:
    drivers: dict[str, int]
    jobs: dict[str, int]


def _driver(session: Session, driver_id: int) -> User:
    """The driver with their profile, read afresh; NotFound for anyone else."""
    user = session.get(User, driver_id, populate_existing=True)
    if user is None or user.driver_profile is None:
        raise NotFound("No such driver.")
    return user


def driver_id_for_email(session: Session, email: str) -> int:
    driver_id = session.scalar(
        select(User.id).where(User.email == normalize_email(email), User.role == Role.driver)
    )
    if driver_id is None:
        raise NotFound(f"No driver with email {email!r}.")
    return driver_id


def _change_standing(
    session: Session,
    driver_id: int,
    actor: User | None,
    type_: DriverEventType,
    unless: ColumnElement[bool],
    at: datetime,
    **values: Any,
) -> StandingChange:
    """One conditional UPDATE of the profile, matching only a driver who does not stand so
    yet (`unless`), so concurrent copies of an action log it once; its event if it did."""
    changed = session.execute(
        update(DriverProfile)
        .where(DriverProfile.user_id == driver_id, unless)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    driver = _driver(session, driver_id)
    if not changed.rowcount:  # type: ignore[attr-defined]
        return StandingChange(driver, None)
    reindex_after_commit(session, driver_id)
    event = DriverEvent(
        driver_id=driver_id, type=type_.value, actor_id=actor.id if actor else None, at=at
    )
    session.add(event)
    session.flush()
    return StandingChange(driver, event)


def approve_driver(session: Session, driver_id: int, actor: User | None) -> StandingChange:
    """Approve the driver for work, or reinstate a suspended one: from now on they may be
    offered jobs. `actor` is the operator (None: the `dispatch approve-driver` command)."""
    return _change_standing(
        session,
        driver_id,
        actor,
        DriverEventType.approved,
        or_(DriverProfile.approved.is_(False), DriverProfile.suspended_at.is_not(None)),
        utcnow(),
        approved=True,
        suspended_at=None,
    )


def suspend_driver(session: Session, driver_id: int, actor: User) -> StandingChange:
    """Suspend the driver: offered nothing and refused every accept until reinstated. A job
    they are on stays theirs to finish (or release): its customer is not left stranded."""
    now = utcnow()
    return _change_standing(
        session,
        driver_id,
        actor,
        DriverEventType.suspended,
        DriverProfile.suspended_at.is_(None),
        now,
        suspended_at=now,
    )


def driver_history(session: Session, driver_id: int) -> list[DriverEvent]:
    """Every change of the driver's standing, oldest first."""
    _driver(session, driver_id)
    return list(
        session.scalars(
            select(DriverEvent).where(DriverEvent.driver_id == driver_id).order_by(DriverEvent.id)
        )
    )


def driver_statuses(session: Session, r: redis.Redis) -> list[DriverStatus]:
    """Every driver by id, with their last position."""
    drivers = list(session.scalars(select(User).where(User.role == Role.driver).order_by(User.id)))
    positions = last_positions(r, [driver.id for driver in drivers])
    return [DriverStatus(driver, positions.get(driver.id)) for driver in drivers]


def jobs_by_status(session: Session, status: JobStatus | None, limit: int) -> list[Job]:
    """The newest `limit` jobs (ids grow with creation), of one status or of all."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list(session.scalars(query))


def open_offer_counts(session: Session, jobs: Sequence[Job]) -> dict[int, int]:
    """How many drivers each job is offered to in its current round, still open (neither
    declined nor released), by job id; jobs with none are left out."""
    if not jobs:
        return {}
    rows = session.execute(
        select(Offer.job_id, func.count())
        .join(Job, Job.id == Offer.job_id)
        .where(
            Offer.job_id.in_([job.id for job in jobs]),
            Offer.round == Job.offer_round,
            Offer.closed_at.is_(None),
        )
        .group_by(Offer.job_id)
    )
    return {job_id: count for job_id, count in rows}


def live_counts(session: Session) -> LiveCounts:
    """Drivers online, on a job, suspended and awaiting approval; live jobs by status."""

    def counting(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    drivers = session.execute(
        select(
            func.count().label("total"),
            counting(DriverProfile.online.is_(True)).label("online"),
            counting(DriverProfile.current_job_id.is_not(None)).label("on_job"),
            counting(DriverProfile.suspended_at.is_not(None)).label("suspended"),
            counting(DriverProfile.approved.is_(False)).label("awaiting_approval"),
        )
    ).one()
    jobs = dict.fromkeys((status.value for status in LIVE_STATUSES), 0)
    rows = session.execute(
        select(Job.status, func.count()).where(Job.status.in_(list(jobs))).group_by(Job.status)
    )
    jobs.update({status: count for status, count in rows})
    return LiveCounts(drivers=dict(drivers._mapping), jobs=jobs)
