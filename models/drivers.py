"""A driver's availability and position reports."""

from __future__ import annotations

import redis
from sqlalchemy.orm import Session

from models.accounts import DriverProfile, User
from models.errors import Forbidden
from models.positions import reindex_after_commit
from models.tracking import StoredReport, record_position


def driver_profile(driver: User) -> DriverProfile:
    if not driver.is_driver or driver.driver_profile is None:
        raise Forbidden("Only a driver can do this.")
    return driver.driver_profile


def set_availability(session: Session, driver: User, online: bool) -> bool:
    """Go online or offline: in the index of drivers who may get work from the commit on
    (at their last position; a stale one must be reported afresh), or out of it."""
    profile = driver_profile(driver)
    profile.online = online
    session.flush()
    reindex_after_commit(session, driver.id, None if online else False)
    return profile.online


def report_location(r: redis.Redis, driver_id: int, lat: float, lng: float) -> StoredReport:
    """A driver's position, from PUT /drivers/me/location or the gateway's `driver:location`
    (each has checked that the caller is a driver): stored for dispatch and tracking, with
    the `job:driver_location` their customer is due and the operators' `ops:driver_position`
    (at most one every two seconds a driver), if any."""
    return record_position(r, driver_id, lat, lng)
