"""The job's event log, which is also its transactional outbox.

Every change of a job writes one row here in the same transaction as the change. The
workers announce each row (socket events, then pushes) and mark it; a sweep re-drives any
row whose announcement or push is overdue, so no change is lost with a crashed process."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Update,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.accounts import User
from models.db import Base, UTCDateTime, insert_row, one_of, partial_index, table_of, utcnow


class EventType(StrEnum):
    created = "created"
    offered = "offered"
    accepted = "accepted"
    arrived = "arrived"
    started = "started"
    completed = "completed"
    released = "released"
    declined = "declined"
    cancelled = "cancelled"
    expired = "expired"


# The steps that change a job's status: the last of them tells whether a request is a retry.
STATUS_STEPS = (
    EventType.accepted,
    EventType.arrived,
    EventType.started,
    EventType.completed,
    EventType.released,
    EventType.cancelled,
    EventType.expired,
)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (
        one_of("type", EventType, "ck_job_events_type"),
        Index("ix_job_events_job", "job_id", "id"),
        partial_index("ix_job_events_unannounced", "id", "announced_at IS NULL"),
        partial_index("ix_job_events_push_due", "push_due_at", "push_due_at IS NOT NULL"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    actor_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # What the announcement needs: the driver concerned, the round, the offered drivers …
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set while the event's pushes are owed: by then they are sent, or re-driven.
    push_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    push_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The tokens still owed a push after a partial failure (None: every recipient's).
    push_tokens: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


def record_event(
    session: Session,
    job_id: int,
    type_: EventType,
    actor: User | None,
    at: datetime,
    **data: Any,
) -> JobEvent:
    """Write the event row in the caller's transaction (`insert_row`); the event returned is
    not attached to the session."""
    values = event_values(job_id, type_, actor, at, **data)
    event_id = insert_row(session, JobEvent, values)
    return JobEvent(id=event_id, **values)


def event_values(
    job_id: int | None, type_: EventType, actor: User | None, at: datetime, **data: Any
) -> dict[str, Any]:
    """An event row's values (its job's id None while the job is being inserted with it)."""
    return {
        "job_id": job_id,
        "type": type_.value,
        "at": at,
        "actor_id": actor.id if actor else None,
        "actor_role": actor.role if actor else None,
        "data": data,
        "push_attempts": 0,
    }


def last_step(session: Session, job_id: int) -> JobEvent | None:
    """The job's latest status change, read afresh (another transaction may just have
    committed it)."""
    return session.scalar(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type.in_([t.value for t in STATUS_STEPS]))
        .order_by(JobEvent.id.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    )


def job_history(session: Session, job_id: int) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


def unannounced_events(session: Session, older_than_s: float, limit: int) -> list[tuple[int, str]]:
    """(id, type) of events made more than `older_than_s` ago and still not announced:
    their enqueue was lost, or the worker holding them died."""
    since = utcnow() - timedelta(seconds=older_than_s)
    rows = session.execute(
        select(JobEvent.id, JobEvent.type)
        .where(JobEvent.announced_at.is_(None), JobEvent.at <= since)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return [(row.id, row.type) for row in rows]


def overdue_push_event_ids(session: Session, late_by_s: float, limit: int) -> list[int]:
    """Events whose pushes were due more than `late_by_s` ago and are not done: their
    enqueue was lost or the push worker died."""
    since = utcnow() - timedelta(seconds=late_by_s)
    return list(
        session.scalars(
            select(JobEvent.id)
            .where(JobEvent.push_due_at.is_not(None), JobEvent.push_due_at <= since)
            .order_by(JobEvent.push_due_at)
            .limit(limit)
        )
    )


ANNOUNCEMENT_LOCK_CLASS = 0x6A6F62  # "job": advisory lock keys (class, job id)


def hold_announcements(session: Session, job_id: int) -> None:
    """Serialize the announcements of one job until this transaction ends, so each reads
    the job after the previous one has spoken and the last `job:status` is the newest.
    (SQLite, the embedded default, runs one transaction at a time: see models.db.)"""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_announcement_lock(), {"job_id": job_id})


def announcement_lock(job_id: Any) -> Any:
    """The SQL that takes `hold_announcements`' lock (PostgreSQL), for a statement that
    takes it as it reads: one round trip fewer."""
    return func.pg_advisory_xact_lock(ANNOUNCEMENT_LOCK_CLASS, job_id)


@cache
def _announcement_lock() -> Select[Any]:
    return select(announcement_lock(bindparam("job_id")))


def mark_announced(session: Session, event_id: int, push_within_s: float | None) -> bool:
    """The event's socket part is done; its pushes are owed within `push_within_s`
    (None: it has none). Whether this call marked it (False: it was announced already)."""
    return record_announcement(session, announcement(event_id, push_within_s))


def record_announcement(session: Session, announced: dict[str, Any]) -> bool:
    """`mark_announced` with its parameters made beforehand (`announcement`)."""
    marked = session.execute(_mark_announced(), announced)
    return bool(marked.rowcount)  # type: ignore[attr-defined]


def announcement(event_id: int, push_within_s: float | None) -> dict[str, Any]:
    """The parameters that mark an event announced now (`event_id`, `now`, `due`)."""
    now = utcnow()
    due = None if push_within_s is None else now + timedelta(seconds=push_within_s)
    return {"event_id": event_id, "now": now, "due": due}


@cache
def _mark_announced() -> Update:
    """Built once, its values parameters: announcing a job marks two or three events."""
    events = table_of(JobEvent)
    return (
        update(events)
        .where(events.c.id == bindparam("event_id"), events.c.announced_at.is_(None))
        .values(announced_at=bindparam("now"), push_due_at=bindparam("due"))
    )
