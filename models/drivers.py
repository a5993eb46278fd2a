"""A driver's availability and position reports."""

from __future__ import annotations

import logging

import redis
from sqlalchemy.orm import Session

from models.accounts import DriverProfile, User
from models.errors import Forbidden
from models.positions import forget_position
from models.tracking import StoredReport, record_position

log = logging.getLogger(__name__)

# Operators see each driver move at most this often: a console needs no more, and every
# driver reports every few seconds.


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


def report_location(r: redis.Redis, driver_id: int, lat: float, lng: float) -> StoredReport:
    """A driver's position, from PUT /drivers/me/location or the gateway's `driver:location`
    (each has checked that the caller is a driver): stored for dispatch and tracking, with
    the `job:driver_location` their customer is due and the operators' `ops:driver_position`
    (at most one every two seconds a driver), if any."""
    return record_position(r, driver_id, lat, lng)
