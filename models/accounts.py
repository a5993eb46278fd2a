"""Users (customers, drivers and operators), driver profiles and the log of operators'
changes to them, passwords and bearer tokens."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import Boolean, ForeignKey, Index, Integer, Select, String, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.db import Base, UTCDateTime, one_of, partial_index, utcnow
from models.errors import Conflict, ServiceUnavailable, Unauthorized
from settings import settings

_hasher = PasswordHasher.from_parameters(getattr(profiles, settings.password_hash_profile))
# Compared against when the email is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class PasswordHashingBusy(ServiceUnavailable):
    """Every password-hashing slot of this process stayed taken: the caller is told to come
    back (503 with Retry-After) and nothing was hashed."""

    message = "Too many sign-ins at once; try again in a moment."
    retry_after_s = 1


class HashingSlots:
    """A bound on the password hashes a process runs at once, so that sign-ins can never
    take every CPU and every request thread from the rest of the API.

    Each argon2 hash keeps one CPU busy for ~0.2 s and holds 64 MiB. `slots` hashes run at
    once; up to `queue` more callers wait at most `wait_s` for a slot; anyone beyond that is
    refused at once, so waiting sign-ins hold at most `slots + queue` of the server's
    request threads."""

    def __init__(self, slots: int, queue: int, wait_s: float) -> None:
        self._running = threading.BoundedSemaphore(slots)
        self._admitted = threading.BoundedSemaphore(slots + queue)
        self._wait_s = wait_s

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for one sign-in's lookup and hash; PasswordHashingBusy when none is
        free in time."""
        if not self._admitted.acquire(blocking=False):
            raise PasswordHashingBusy()
        try:
            if not self._running.acquire(timeout=self._wait_s):
                raise PasswordHashingBusy()
            try:
                yield
            finally:
                self._running.release()
        finally:
            self._admitted.release()


def _default_hash_slots() -> int:
    """A quarter of the CPUs this process may use, at least one: a machine runs several web
    processes (the Procfile's gunicorn: 2), and their hashes must leave CPU for the rest."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // 4)


hashing_slots = HashingSlots(
    settings.password_hash_slots or _default_hash_slots(),
    settings.password_hash_queue,
    settings.password_hash_wait_s,
)


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class Role(StrEnum):
    customer = "customer"
    driver = "driver"
    # Created by the `dispatch create-operator` command only, never by registration.
    operator = "operator"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (one_of("role", Role, "ck_users_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    driver_profile: Mapped[DriverProfile | None] = relationship(
        back_populates="user", uselist=False, lazy="joined"
    )

    @property
    def is_driver(self) -> bool:
        return self.role == Role.driver

    @property
    def is_customer(self) -> bool:
        return self.role == Role.customer


class Party(Base):
    """A user as a job names them, its customer or its driver: id and name. Every read of a
    job loads its two parties; as `User`s each would bring every column (the password hash
    too) and a driver profile (two more joins to plan and rows to build on every dispatch,
    accept and status change). Read-only: users are written as `User`."""

    __table__ = User.__table__
    __mapper_args__ = {"include_properties": ["id", "name"]}

    id: Mapped[int]
    name: Mapped[str]


class DriverProfile(Base):
    """A driver's standing: approved by an operator (and not suspended since), online, and
    the job they are on."""

    __tablename__ = "driver_profiles"
    __table_args__ = (
        # Covers the dispatch rule's availability check: an index-only scan of the drivers
        # who may get work, whatever the number of candidates the geo search found.
        partial_index(
            "ix_driver_profiles_dispatchable",
            "user_id",
            "online AND approved AND suspended_at IS NULL AND current_job_id IS NULL",
        ),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set by an operator: a suspended driver is offered nothing and cannot accept a job.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    current_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )

    user: Mapped[User] = relationship(back_populates="driver_profile")

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None


class DriverEventType(StrEnum):
    approved = "approved"
    suspended = "suspended"


class DriverEvent(Base):
    """A change of a driver's standing, and who made it (an operator; None for the CLI)."""

    __tablename__ = "driver_events"
    __table_args__ = (
        one_of("type", DriverEventType, "ck_driver_events_type"),
        Index("ix_driver_events_driver", "driver_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    driver_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    actor: Mapped[User | None] = relationship(foreign_keys=[actor_id], lazy="joined")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def register_user(session: Session, role: Role, email: str, password: str, name: str) -> User:
    """Create a user; a driver gets a profile, approved at once only where the
    deployment auto-approves (development). Raises Conflict if the email is taken.
    (Operators come from the CLI alone: registration's body refuses the role.)"""
    email = normalize_email(email)
    with hashing_slots.slot():  # taken first: a refused sign-up costs no query
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise Conflict("An account with this email already exists.")
        password_hash = _hasher.hash(password)
    user = User(role=role.value, email=email, password_hash=password_hash, name=name)
    if role is Role.driver:
        user.driver_profile = DriverProfile(approved=settings.auto_approve_drivers, online=False)
    session.add(user)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict("An account with this email already exists.") from exc
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    with hashing_slots.slot():  # taken first: a refused sign-in costs no query
        user = session.scalar(select(User).where(User.email == normalize_email(email)))
        matches = _password_matches(user.password_hash if user else _DUMMY_HASH, password)
    if user is None or not matches:
        raise Unauthorized("Wrong email or password.")
    return user


def _serializer() -> URLSafeTimedSerializer:
    return _serializer_for(settings.secret_key)


@cache
def _serializer_for(secret_key: str) -> URLSafeTimedSerializer:
    """One per key (built on every signed-in request before: its signer and key derivation)."""
    return URLSafeTimedSerializer(secret_key, salt="dispatch.auth.v1")


def issue_token(user: User) -> str:
    return _serializer().dumps({"uid": user.id, "role": user.role})


def user_id_for_token(token: str) -> int:
    """The user id a bearer token was issued to; Unauthorized if forged or expired."""
    try:
        data: Any = _serializer().loads(token, max_age=settings.auth_token_ttl_s)
    except SignatureExpired as exc:
        raise Unauthorized("The token has expired; log in again.") from exc
    except BadSignature as exc:
        raise Unauthorized("The token is not valid.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("uid"), int):
        raise Unauthorized("The token is not valid.")
    return int(data["uid"])


def user_for_token(session: Session, token: str) -> User:
    """Every signed-in request starts here: the user (and a driver's profile) by a statement
    built once, the id a parameter (`session.get` builds its query each call)."""
    user = session.scalar(_user_by_id(), {"user_id": user_id_for_token(token)})
    if user is None:
        raise Unauthorized("The token is not valid.")
    return user


@cache
def _user_by_id() -> Select[User]:
    return select(User).where(User.id == bindparam("user_id"))
