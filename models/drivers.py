"""A driver's availability and position reports."""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy.orm import Session

from models.accounts import DriverProfile, User
from models.db import utcnow
from models.errors import Forbidden
from models.positions import forget_position
from models.schemas import utc_z
from models.tracking import LocationUpdate, record_position
from settings import settings

log = logging.getLogger(__name__)

# Operators see each driver move at most this often: a console needs no more, and every
# driver reports every few seconds.
OPERATORS_SEE_POSITIONS_EVERY_S = 2


def driver_profile(driver: User) -> DriverProfile:
    if not driver.is_driver or driver.driver_profile is None:
        raise Forbidden("Only a driver can do this.")
    return driver.driver_profile


def set_availability(session: Session, r: redis.Redis, driver: User, online: bool) -> bool:
    """Go online or offline. Offline drops the position so the index holds only the
    drivers who may get work; going online needs a fresh position to be offered jobs."""
    profile = driver_profile(driver)
    profile.online = online
    session.flush()
    if not online:
        try:
            forget_position(r, driver.id)
        except redis.RedisError:
            # Safe to leave: eligibility also checks `online` in the database, and the
            # position goes stale by itself.
            log.warning("driver %s offline but position not dropped: Redis error", driver.id)
    return profile.online


def report_location(
    r: redis.Redis, driver_id: int, lat: float, lng: float
) -> LocationUpdate | None:
    """A driver's position, from PUT /drivers/me/location or the gateway's `driver:location`
    (each has checked that the caller is a driver): stored for dispatch and tracking, and
    the `job:driver_location` their customer is due, if any."""
    return record_position(r, driver_id, lat, lng)


def position_for_operators(
    r: redis.Redis, driver_id: int, lat: float, lng: float
) -> dict[str, Any] | None:
    """The `ops:driver_position` a stored report owes the operators' room, or None when the
    driver's last one went out less than OPERATORS_SEE_POSITIONS_EVERY_S ago (one SET NX
    per report, the key expiring with the interval)."""
    key = settings.redis_key("ops", "position", driver_id)
    if not r.set(key, 1, nx=True, ex=OPERATORS_SEE_POSITIONS_EVERY_S):
        return None
    return {"driver_id": driver_id, "lat": lat, "lng": lng, "at": utc_z(utcnow())}
