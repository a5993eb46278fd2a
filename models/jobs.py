"""Jobs and the lists of them a customer or driver sees. The changes a job goes through are
in `models.lifecycle`; the offers made for it in `models.offers`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.accounts import Party, User
from models.db import Base, UTCDateTime, one_of, utcnow
from models.errors import Forbidden


class JobStatus(StrEnum):
    pending = "pending"
    accepted = "accepted"
    arrived = "arrived"
    in_progress = "in_progress"
    completed = "completed"
    cancelled = "cancelled"
    expired = "expired"


# The statuses in which a job holds its driver: the driver is "on a job", offered nothing,
# and tracked live for the customer.
ON_JOB = (JobStatus.accepted, JobStatus.arrived, JobStatus.in_progress)


@dataclass(frozen=True)
class Place:
    lat: float
    lng: float
    address: str | None = None


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        one_of("status", JobStatus, "ck_jobs_status"),
        UniqueConstraint("customer_id", "idempotency_key", name="uq_jobs_customer_idempotency"),
        Index("ix_jobs_status_expires", "status", "expires_at"),
        Index("ix_jobs_customer_created", "customer_id", "created_at"),
        Index("ix_jobs_driver_created", "driver_id", "created_at"),
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
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    arrived_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Each release opens a new round of offers; an offer counts only in its job's round.
    offer_round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    customer: Mapped[Party] = relationship(
        foreign_keys=[customer_id], lazy="joined", innerjoin=True, viewonly=True
    )
    driver: Mapped[Party | None] = relationship(
        foreign_keys=[driver_id], lazy="joined", viewonly=True
    )

    @property
    def pickup(self) -> Place:
        return Place(self.pickup_lat, self.pickup_lng, self.pickup_address)

    @property
    def dropoff(self) -> Place | None:
        if self.dropoff_lat is None or self.dropoff_lng is None:
            return None
        return Place(self.dropoff_lat, self.dropoff_lng, self.dropoff_address)


def require_role(user: User, role: str) -> None:
    if user.role != role:
        raise Forbidden(f"Only a {role} can do this.")


def customer_jobs(session: Session, customer: User, status: JobStatus | None) -> list[Job]:
    require_role(customer, "customer")
    query = select(Job).where(Job.customer_id == customer.id)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())))


def driver_jobs(session: Session, driver: User, status: JobStatus | None) -> list[Job]:
    """The jobs this driver holds or has held to their end (a released job is no longer
    theirs), newest first."""
    require_role(driver, "driver")
    query = select(Job).where(Job.driver_id == driver.id)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())))


def current_job(session: Session, driver: User) -> Job | None:
    """The job the driver is on (accepted, arrived or in progress), if any."""
    profile = driver.driver_profile
    if profile is None or profile.current_job_id is None:
        return None
    return session.get(Job, profile.current_job_id)
