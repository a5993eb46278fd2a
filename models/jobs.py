"""Jobs and the offers made for them, with every state change a job can go through.

State changes are single conditional UPDATEs (`... WHERE status = 'pending'`), so the
database decides races: of any number of concurrent accepts exactly one matches a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.attributes import set_committed_value

from models.accounts import DriverProfile, User
from models.db import Base, UTCDateTime, utcnow
from models.errors import Conflict, Forbidden, JobNotAvailable, NotFound
from settings import settings


class JobStatus(StrEnum):
    pending = "pending"
    accepted = "accepted"
    cancelled = "cancelled"
    expired = "expired"


@dataclass(frozen=True)
class Place:
    lat: float
    lng: float
    address: str | None = None


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'accepted', 'cancelled', 'expired')", name="ck_jobs_status"
        ),
        UniqueConstraint("customer_id", "idempotency_key", name="uq_jobs_customer_idempotency"),
        Index("ix_jobs_status_expires", "status", "expires_at"),
        Index("ix_jobs_customer_created", "customer_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.pending.value)
    customer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    driver_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    pickup_lat: Mapped[float] = mapped_column(Float)
    pickup_lng: Mapped[float] = mapped_column(Float)
    pickup_address: Mapped[str | None] = mapped_column(String(500), nullable=True)
    dropoff_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    dropoff_lng: Mapped[float | None] = mapped_column(Float, nullable=True)
    dropoff_address: Mapped[str | None] = mapped_column(String(500), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    customer: Mapped[User] = relationship(foreign_keys=[customer_id], lazy="joined")
    driver: Mapped[User | None] = relationship(foreign_keys=[driver_id], lazy="joined")

    @property
    def pickup(self) -> Place:
        return Place(self.pickup_lat, self.pickup_lng, self.pickup_address)

    @property
    def dropoff(self) -> Place | None:
        if self.dropoff_lat is None or self.dropoff_lng is None:
            return None
        return Place(self.dropoff_lat, self.dropoff_lng, self.dropoff_address)


class Offer(Base):
    """A job offered to one driver. Unique per job and driver: nobody is offered twice."""

    __tablename__ = "offers"
    __table_args__ = (UniqueConstraint("job_id", "driver_id", name="uq_offers_job_driver"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    driver_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    distance_km: Mapped[float] = mapped_column(Float)
    offered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set once `job:new` went out and the push was queued; a redelivered task resumes here.
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    job: Mapped[Job] = relationship(lazy="joined")


def _require_role(user: User, role: str) -> None:
    if user.role != role:
        raise Forbidden(f"Only a {role} can do this.")


def create_job(
    session: Session,
    customer: User,
    pickup: Place,
    dropoff: Place | None,
    notes: str | None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Create a pending job. With an idempotency key already used by this customer within
    the window, return that job instead: (job, created)."""
    _require_role(customer, "customer")
    now = utcnow()
    if idempotency_key is not None:
        earlier = _job_by_idempotency_key(session, customer.id, idempotency_key)
        if earlier is not None:
            if earlier.created_at > now - timedelta(seconds=settings.idempotency_window_s):
                return earlier, False
            earlier.idempotency_key = None  # the window has passed: the key is free again
            session.flush()
    job = Job(
        status=JobStatus.pending.value,
        customer=customer,
        pickup_lat=pickup.lat,
        pickup_lng=pickup.lng,
        pickup_address=pickup.address,
        dropoff_lat=dropoff.lat if dropoff else None,
        dropoff_lng=dropoff.lng if dropoff else None,
        dropoff_address=dropoff.address if dropoff else None,
        notes=notes,
        idempotency_key=idempotency_key,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.job_offer_ttl_s),
        driver=None,
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
        return job, True
    try:
        with session.begin_nested():  # a savepoint only where a duplicate key can race
            session.add(job)
            session.flush()
    except IntegrityError:
        # A concurrent request with the same key committed first: answer with its job.
        earlier = _job_by_idempotency_key(session, customer.id, idempotency_key)
        if earlier is None:
            raise
        return earlier, False
    return job, True


def _job_by_idempotency_key(session: Session, customer_id: int, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.customer_id == customer_id, Job.idempotency_key == key)
    )


def job_for_user(session: Session, user: User, job_id: int) -> Job:
    """The job if `user` may see it: its customer, its driver, or a driver it is offered
    to while it is pending. Anyone else gets NotFound, never the data."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("No such job.")
    if job.customer_id == user.id or (job.driver_id is not None and job.driver_id == user.id):
        return job
    if (
        user.is_driver
        and job.status == JobStatus.pending
        and _was_offered(session, job.id, user.id)
    ):
        return job
    raise NotFound("No such job.")


def customer_jobs(session: Session, customer: User, status: JobStatus | None) -> list[Job]:
    _require_role(customer, "customer")
    query = select(Job).where(Job.customer_id == customer.id)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())))


def _was_offered(session: Session, job_id: int, driver_id: int) -> bool:
    found = session.scalar(
        select(Offer.id).where(Offer.job_id == job_id, Offer.driver_id == driver_id)
    )
    return found is not None


def accept_job(session: Session, driver: User, job_id: int) -> tuple[Job, bool]:
    """Give the job to `driver` if it is still pending and was offered to them. Returns
    (job, won now): a retried accept by the winner gets the job again, but won is False.

    The driver is claimed first (one job at a time), then the job by a conditional UPDATE;
    a loser's transaction rolls back both."""
    _require_role(driver, "driver")
    job = session.scalar(
        select(Job)
        .join(Offer, (Offer.job_id == Job.id) & (Offer.driver_id == driver.id))
        .where(Job.id == job_id)
    )
    if job is None:
        raise NotFound("No such job.")
    if job.status == JobStatus.accepted and job.driver_id == driver.id:
        return job, False
    now = utcnow()
    claimed = session.execute(
        update(DriverProfile)
        .where(DriverProfile.user_id == driver.id, DriverProfile.current_job_id.is_(None))
        .values(current_job_id=job_id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("You are already on an accepted job.")
    won = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.pending.value, Job.expires_at > now)
        .values(status=JobStatus.accepted.value, driver_id=driver.id, accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise JobNotAvailable()
    # What the UPDATE wrote, without reading the row back.
    for name, value in (
        ("status", JobStatus.accepted.value),
        ("driver_id", driver.id),
        ("accepted_at", now),
        ("driver", driver),
    ):
        set_committed_value(job, name, value)
    return job, True


def cancel_job(session: Session, customer: User, job_id: int) -> Job:
    """Cancel a pending or accepted job of the customer's, freeing its driver."""
    job = job_for_user(session, customer, job_id)
    if job.customer_id != customer.id:
        raise NotFound("No such job.")
    cancelled = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_([JobStatus.pending.value, JobStatus.accepted.value]),
        )
        .values(status=JobStatus.cancelled.value, ended_at=utcnow())
        .returning(Job.driver_id)
        .execution_options(synchronize_session=False)
    ).first()
    if cancelled is None:
        raise Conflict(f"A job that is {job.status} cannot be cancelled.")
    _release_driver(session, cancelled.driver_id, job_id)
    session.refresh(job)
    return job


def _release_driver(session: Session, driver_id: int | None, job_id: int) -> None:
    if driver_id is None:
        return
    session.execute(
        update(DriverProfile)
        .where(DriverProfile.user_id == driver_id, DriverProfile.current_job_id == job_id)
        .values(current_job_id=None)
        .execution_options(synchronize_session=False)
    )


def expire_due_jobs(session: Session) -> list[int]:
    """Mark every pending job past its expiry as expired; returns their ids."""
    now = utcnow()
    rows = session.execute(
        update(Job)
        .where(Job.status == JobStatus.pending.value, Job.expires_at <= now)
        .values(status=JobStatus.expired.value, ended_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(row.id for row in rows)


def undispatched_job_ids(session: Session, older_than_s: float) -> list[int]:
    """Pending jobs that no dispatch has finished for since `older_than_s` after creation:
    their enqueue was lost (broker down) or their task is still failing."""
    now = utcnow()
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.pending.value,
                Job.dispatched_at.is_(None),
                Job.created_at <= now - timedelta(seconds=older_than_s),
                Job.expires_at > now,
            )
            .order_by(Job.id)
        )
    )


def mark_dispatched(session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.dispatched_at.is_(None))
        .values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )
