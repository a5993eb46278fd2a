"""Offers: recording who a job went to, and each driver's live feed."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, lazyload

from models.accounts import User
from models.db import utcnow
from models.errors import Forbidden
from models.jobs import Job, JobStatus, Offer
from models.positions import Candidate, eligible_drivers


def record_offers(session: Session, job: Job, candidates: Sequence[Candidate]) -> list[int]:
    """Insert one offer per candidate, skipping drivers this job was already offered to
    (a retried or redelivered task). Returns the drivers offered it now."""
    if not candidates:
        return []
    now = utcnow()
    rows = [
        {
            "job_id": job.id,
            "driver_id": c.driver_id,
            "distance_km": c.distance_km,
            "offered_at": now,
        }
        for c in candidates
    ]
    dialect = session.get_bind().dialect.name
    stmt = (
        postgresql.insert(Offer) if dialect == "postgresql" else sqlite.insert(Offer)
    ).on_conflict_do_nothing(index_elements=["job_id", "driver_id"])
    return list(session.scalars(stmt.returning(Offer.driver_id), rows))


def offered_driver_ids(session: Session, job_id: int) -> list[int]:
    return list(session.scalars(select(Offer.driver_id).where(Offer.job_id == job_id)))


def driver_feed(session: Session, driver: User) -> list[Offer]:
    """The pending, unexpired jobs offered to this driver, newest first."""
    if not driver.is_driver:
        raise Forbidden("Only a driver has an offers feed.")
    return list(
        session.scalars(
            select(Offer)
            .join(Job, Job.id == Offer.job_id)
            .where(
                Offer.driver_id == driver.id,
                Job.status == JobStatus.pending.value,
                Job.expires_at > utcnow(),
            )
            .order_by(Offer.offered_at.desc(), Offer.id.desc())
        )
    )


def offer_job(session: Session, r: redis.Redis, job: Job) -> list[int]:
    """Offer a pending job to every eligible driver it was not offered to yet."""
    if job.status != JobStatus.pending or job.expires_at <= utcnow():
        return []
    return record_offers(session, job, eligible_drivers(session, r, job.pickup_lat, job.pickup_lng))


def unnotified_offers(session: Session, job_id: int) -> list[Offer]:
    """Offers whose driver was not yet sent `job:new`: all of them on a first run, the
    rest after a worker died half-way. Their job is the caller's, already in the session."""
    return list(
        session.scalars(
            select(Offer)
            .options(lazyload(Offer.job))
            .where(Offer.job_id == job_id, Offer.notified_at.is_(None))
            .order_by(Offer.distance_km)
        )
    )


def mark_notified(session: Session, offer_ids: list[int]) -> None:
    if offer_ids:
        session.execute(
            update(Offer)
            .where(Offer.id.in_(offer_ids))
            .values(notified_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def distance_by_driver(session: Session, job_id: int) -> dict[int, float]:
    rows = session.execute(select(Offer.driver_id, Offer.distance_km).where(Offer.job_id == job_id))
    return {row.driver_id: row.distance_km for row in rows}
