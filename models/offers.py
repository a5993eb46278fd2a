"""Offers: who a job went to in each round, each driver's live feed, and so who may see a
pending job."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import redis
from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    Select,
    String,
    UniqueConstraint,
    Update,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Mapped, Session, lazyload, mapped_column, relationship

from models.accounts import User
from models.db import Base, UTCDateTime, one_of, table_of, utcnow
from models.errors import Forbidden, NotFound
from models.job_events import (
    EventType,
    JobEvent,
    event_values,
    record_announcement,
    record_event,
)
from models.jobs import Job, JobStatus
from models.positions import Candidate, eligible_drivers


class OfferClosed(StrEnum):
    declined = "declined"
    released = "released"


class Offer(Base):
    """A job offered to one driver: one row per job and driver, carrying the latest round it
    was offered in, so nobody is offered twice in a round. A closed offer (the driver
    declined the job, or released it) is never offered again."""

    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("job_id", "driver_id", name="uq_offers_job_driver"),
        one_of("closed_reason", OfferClosed, "ck_offers_closed_reason"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    driver_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    distance_km: Mapped[float] = mapped_column(Float)
    offered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set once `job:new` went out and the push was queued; a redelivered task resumes here.
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)

    job: Mapped[Job] = relationship(lazy="joined")

    def is_open_in(self, job: Job) -> bool:
        """Offered in the job's current round, and neither declined nor released."""
        return self.round == job.offer_round and self.closed_at is None


def offer_of(session: Session, job_id: int, driver_id: int) -> Offer | None:
    return session.scalar(
        select(Offer)
        .options(lazyload(Offer.job))
        .where(Offer.job_id == job_id, Offer.driver_id == driver_id)
    )


def job_for_user(session: Session, user: User, job_id: int) -> Job:
    """The job if `user` may see it: its customer, its driver, or a driver it is offered
    to in its current round while it is pending. Anyone else gets NotFound, never the data."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("No such job.")
    if job.customer_id == user.id or (job.driver_id is not None and job.driver_id == user.id):
        return job
    if user.is_driver and job.status == JobStatus.pending:
        offer = offer_of(session, job.id, user.id)
        if offer is not None and offer.is_open_in(job):
            return job
    raise NotFound("No such job.")


# A round on PostgreSQL, one statement and one round trip: the upsert of its offers, with
# array parameters (compiled and planned once, whatever the number of drivers; a multi-row
# VALUES is compiled per call), the `offered` event naming the drivers it offered, if any
# (its `data` is what `offered_data` makes on SQLite), and the mark of the event announced
# by this round (`announcement`'s parameters; none with a NULL `event_id`). One row always:
# the offers made, or one row of NULLs beside `marked`.
_OFFER_ROUND_SQL = text(
    """
    WITH made AS (
        INSERT INTO offers (job_id, driver_id, distance_km, offered_at, round)
        SELECT :job_id, candidate.driver_id, candidate.distance_km, :offered_at, :round
        FROM unnest(CAST(:driver_ids AS integer[]), CAST(:distances AS double precision[]))
             AS candidate (driver_id, distance_km)
        ON CONFLICT (job_id, driver_id) DO UPDATE
        SET round = excluded.round, distance_km = excluded.distance_km,
            offered_at = excluded.offered_at, notified_at = NULL
        WHERE offers.round < excluded.round AND offers.closed_at IS NULL
        RETURNING id, driver_id, distance_km
    ), offered AS (
        INSERT INTO job_events (job_id, type, at, data, push_attempts)
        SELECT :job_id, 'offered', :offered_at,
               json_build_object(
                   'round', CAST(:round AS integer),
                   'count', count(*),
                   'drivers', json_agg(driver_id ORDER BY driver_id)
               ),
               0
        FROM made
        HAVING count(*) > 0
        RETURNING id, data
    ), marked AS (
        UPDATE job_events SET announced_at = :now, push_due_at = :due
        WHERE id = :event_id AND announced_at IS NULL
        RETURNING id
    )
    SELECT made.id, made.driver_id, made.distance_km, offered.id AS event_id,
           offered.data AS event_data, (SELECT count(*) FROM marked) AS marked
    FROM (SELECT) AS always LEFT JOIN (made CROSS JOIN offered) ON true
    """
)


class MadeOffer(NamedTuple):
    """An offer as its round's upsert left it: what its `job:new` carries."""

    id: int
    driver_id: int
    distance_km: float
    offered_at: datetime


def offered_data(round_: int, offers: Sequence[MadeOffer]) -> dict[str, Any]:
    """An `offered` event's data: its round, and the drivers offered it."""
    return {
        "round": round_,
        "count": len(offers),
        "drivers": sorted(offer.driver_id for offer in offers),
    }


def _record_round(
    session: Session,
    job: Job,
    candidates: Sequence[Candidate],
    now: datetime,
    announced: dict[str, Any] | None,
) -> tuple[list[MadeOffer], JobEvent | None, bool]:
    """Offer the job's current round to the candidates: a new row for a driver never
    offered it, the row moved to this round for one offered in an earlier round, nothing
    for one offered in this round already (a retried task) or whose offer is closed
    (declined, released); the `offered` event naming those offered now, if any; and the
    `announced` event (`announcement`'s parameters) marked. Returns the offers made now,
    nearest first, the event, and whether the mark was made."""
    if session.get_bind().dialect.name != "postgresql":
        made = _record_offers_sqlite(session, job, candidates, now)
        event = (
            record_event(
                session, job.id, EventType.offered, None, now, **offered_data(job.offer_round, made)
            )
            if made
            else None
        )
        return made, event, announced is not None and record_announcement(session, announced)
    rows = session.execute(
        _OFFER_ROUND_SQL,
        {
            "job_id": job.id,
            "offered_at": now,
            "round": job.offer_round,
            "driver_ids": [c.driver_id for c in candidates],
            "distances": [c.distance_km for c in candidates],
            **(announced or {"event_id": None, "now": None, "due": None}),
        },
    ).all()
    marked = bool(rows[0].marked)
    if rows[0].id is None:
        return [], None, marked
    values = event_values(job.id, EventType.offered, None, now, **rows[0].event_data)
    return _nearest_first(rows, now), JobEvent(id=rows[0].event_id, **values), marked


def _record_offers_sqlite(
    session: Session, job: Job, candidates: Sequence[Candidate], now: datetime
) -> list[MadeOffer]:
    insert = sqlite.insert(Offer).values(
        [
            {
                "job_id": job.id,
                "driver_id": c.driver_id,
                "distance_km": c.distance_km,
                "offered_at": now,
                "round": job.offer_round,
            }
            for c in candidates
        ]
    )
    stmt = insert.on_conflict_do_update(
        index_elements=["job_id", "driver_id"],
        set_={
            "round": insert.excluded.round,
            "distance_km": insert.excluded.distance_km,
            "offered_at": insert.excluded.offered_at,
            "notified_at": None,
        },
        where=(Offer.round < insert.excluded.round) & Offer.closed_at.is_(None),
    )
    rows = session.execute(stmt.returning(Offer.id, Offer.driver_id, Offer.distance_km))
    return _nearest_first(rows, now)


def _nearest_first(rows: Iterable[Any], offered_at: datetime) -> list[MadeOffer]:
    made = [MadeOffer(row.id, row.driver_id, row.distance_km, offered_at) for row in rows]
    return sorted(made, key=lambda offer: (offer.distance_km, offer.driver_id))


def round_driver_ids(session: Session, job_id: int, round_: int) -> list[int]:
    """The drivers offered the job in that round (and not offered it again since) who still
    have it in their feed (not declined)."""
    return list(
        session.scalars(
            select(Offer.driver_id).where(
                Offer.job_id == job_id, Offer.round == round_, Offer.closed_at.is_(None)
            )
        )
    )


def driver_feed(session: Session, driver: User) -> list[Offer]:
    """The pending, unexpired jobs offered to this driver in their current round and not
    declined, newest first; none while the driver is suspended (they may accept none)."""
    if not driver.is_driver:
        raise Forbidden("Only a driver has an offers feed.")
    if driver.driver_profile is not None and driver.driver_profile.suspended:
        return []
    return list(
        session.scalars(
            select(Offer)
            .join(Job, Job.id == Offer.job_id)
            .where(
                Offer.driver_id == driver.id,
                Offer.round == Job.offer_round,
                Offer.closed_at.is_(None),
                Job.status == JobStatus.pending.value,
                Job.expires_at > utcnow(),
            )
            .order_by(Offer.offered_at.desc(), Offer.id.desc())
        )
    )


@dataclass(frozen=True)
class OfferedRound:
    """A round's offers as they were made, and the `offered` event that names them."""

    event: JobEvent
    offers: list[MadeOffer]  # nearest first


def offer_round(session: Session, r: redis.Redis, job: Job) -> OfferedRound | None:
    """Offer a pending job's current round to every eligible driver not offered it yet,
    recording the `offered` event naming them; None if nobody new was offered it.
    The caller holds the job row under a share lock, so no step changes it meanwhile."""
    return _offer(session, r, job, None)[0]


def offer_and_announce(
    session: Session, r: redis.Redis, job: Job, announced: dict[str, Any]
) -> tuple[OfferedRound | None, bool]:
    """`offer_round`, marking the event that opened the round announced (`announcement`'s
    parameters) in the same statement: on the way to `job:new`, one round trip fewer.
    Also returns whether the mark was made (False: announced already)."""
    return _offer(session, r, job, announced)


def _offer(
    session: Session, r: redis.Redis, job: Job, announced: dict[str, Any] | None
) -> tuple[OfferedRound | None, bool]:
    candidates = (
        eligible_drivers(r, job.pickup_lat, job.pickup_lng)
        if job.status == JobStatus.pending and job.expires_at > utcnow()
        else []
    )
    if not candidates:
        return None, announced is not None and record_announcement(session, announced)
    offers, event, marked = _record_round(session, job, candidates, utcnow(), announced)
    return (OfferedRound(event, offers) if event is not None else None), marked


def unnotified_offers(session: Session, job: Job, driver_ids: Sequence[int]) -> list[Offer]:
    """Offers of the job's current round among `driver_ids` not yet sent `job:new`: all of
    them on a first run, the rest after a worker died half-way. Open ones only."""
    found = session.scalars(
        _unnotified_offers(),
        {"job_id": job.id, "round": job.offer_round, "driver_ids": list(driver_ids)},
    )
    return list(found)


def mark_notified(session: Session, offer_ids: list[int], at: datetime) -> None:
    if offer_ids:
        session.execute(_mark_notified(), {"offer_ids": offer_ids, "at": at})


# Each job's dispatch runs these two: built once, with their values as parameters.
@cache
def _unnotified_offers() -> Select[Offer]:
    return (
        select(Offer)
        .options(lazyload(Offer.job))
        .where(
            Offer.job_id == bindparam("job_id"),
            Offer.round == bindparam("round"),
            Offer.driver_id.in_(bindparam("driver_ids", expanding=True)),
            Offer.notified_at.is_(None),
            Offer.closed_at.is_(None),
        )
        .order_by(Offer.distance_km)
    )


@cache
def _mark_notified() -> Update:
    offers = table_of(Offer)
    return (
        update(offers)
        .where(offers.c.id.in_(bindparam("offer_ids", expanding=True)))
        .values(notified_at=bindparam("at"))
    )


def distance_by_driver(session: Session, job_id: int) -> dict[int, float]:
    rows = session.execute(select(Offer.driver_id, Offer.distance_km).where(Offer.job_id == job_id))
    return {row.driver_id: row.distance_km for row in rows}


def open_offer_driver_ids(session: Session, job: Job, driver_ids: Sequence[int]) -> list[int]:
    """Those of `driver_ids` whose offer of the job is open in its current round."""
    return list(
        session.scalars(
            select(Offer.driver_id).where(
                Offer.job_id == job.id,
                Offer.round == job.offer_round,
                Offer.closed_at.is_(None),
                Offer.driver_id.in_(list(driver_ids)),
            )
        )
    )
