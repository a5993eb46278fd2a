"""APNs device tokens: who owns them, which APNs environment, and whether they still work."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.accounts import User
from models.db import Base, UTCDateTime, one_of, utcnow
from models.errors import NotFound


class Environment(StrEnum):
    production = "production"
    sandbox = "sandbox"


class DeviceToken(Base):
    __tablename__ = "device_tokens"
    __table_args__ = (
        one_of("environment", Environment, "ck_device_env"),
        CheckConstraint("platform IN ('ios')", name="ck_device_platform"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(200), unique=True)
    platform: Mapped[str] = mapped_column(String(16), default="ios")
    environment: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_apns_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def register_device(
    session: Session, user: User, token: str, platform: str, environment: Environment
) -> tuple[DeviceToken, bool]:
    """Register (or re-register) a token for `user`; a token held by another user
    moves to this one. Returns the device and whether it was new."""
    token = token.lower()
    device = session.scalar(select(DeviceToken).where(DeviceToken.token == token).with_for_update())
    created = False
    if device is None:
        try:
            with session.begin_nested():
                device = DeviceToken(token=token, user_id=user.id, environment=environment.value)
                session.add(device)
                session.flush()
            created = True
        except IntegrityError:
            # Registered concurrently by another request: take it over like a re-register.
            device = session.scalar(
                select(DeviceToken).where(DeviceToken.token == token).with_for_update()
            )
            assert device is not None
    device.user_id = user.id
    device.platform = platform
    device.environment = environment.value
    device.active = True
    device.last_apns_reason = None
    session.flush()
    return device, created


def remove_device(session: Session, user: User, token: str) -> None:
    device = session.scalar(
        select(DeviceToken).where(
            DeviceToken.token == token.lower(), DeviceToken.user_id == user.id
        )
    )
    if device is None:
        raise NotFound("No such device token on your account.")
    session.delete(device)


def active_tokens(session: Session, user_ids: list[int]) -> list[DeviceToken]:
    if not user_ids:
        return []
    return list(
        session.scalars(
            select(DeviceToken).where(DeviceToken.user_id.in_(user_ids), DeviceToken.active)
        )
    )


def record_delivered(session: Session, tokens: list[str]) -> None:
    if tokens:
        session.execute(
            update(DeviceToken)
            .where(DeviceToken.token.in_(tokens))
            .values(last_pushed_at=utcnow(), last_apns_reason=None)
        )


def deactivate_token(session: Session, token: str, reason: str) -> None:
    """APNs said this token is dead: never push to it again."""
    session.execute(
        update(DeviceToken)
        .where(DeviceToken.token == token)
        .values(active=False, last_apns_reason=reason, updated_at=utcnow())
    )
