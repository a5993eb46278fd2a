"""Live tracking: a driver on a job reports positions; the job's customer follows them.

The hot path (a position report) touches only Redis: one script stores the position and,
when the driver's tracking target says a customer follows them and the per-driver
one-second throttle allows, returns that target, so the caller emits
`job:driver_location`; and, at most every two seconds a driver, says the operators' room is
due the position (`ops:driver_position`). One round trip, no database query per report.

Targets are written by the workers as they announce each change of a job, versioned by
the id of the job's latest status event: a late writer never overwrites a newer state.
A driver holds at most one job at a time, so a per-driver throttle is a per-job one."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from models.jobs import ON_JOB, Job, JobStatus
from models.positions import dispatchable_key, geo_key, indexable_lat, positions_key, seen_key
from models.rooms import OPERATORS_ROOM, customer_room
from settings import settings

EARTH_RADIUS_KM = 6371.0088
UPDATES_EVERY_MS = 1000
OPERATORS_SEE_POSITIONS_EVERY_MS = 2000
TOMBSTONE_TTL_S = 24 * 3600

# KEYS: geo, seen, exact positions, the driver's target, the driver's throttle, the
# operators' throttle for the driver, the dispatchable set.
# ARGV: lng, indexable lat, driver id, now (epoch s), "lat,lng,now", throttle ms, operators'
# throttle ms. Returns {the target if the customer is due an update, 1 if the operators are}.
# Only a dispatchable driver's position enters the geo index (models.positions).
_REPORT_SCRIPT = """
if redis.call('SISMEMBER', KEYS[7], ARGV[3]) == 1 then
  redis.call('GEOADD', KEYS[1], ARGV[1], ARGV[2], ARGV[3])
else
  redis.call('ZREM', KEYS[1], ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
local operators = 0
if redis.call('SET', KEYS[6], 1, 'PX', ARGV[7], 'NX') then operators = 1 end
local target = redis.call('GET', KEYS[4])
if not target or string.sub(target, 1, 1) ~= '{' then return {false, operators} end
if redis.call('SET', KEYS[5], 1, 'PX', ARGV[6], 'NX') then return {target, operators} end
return {false, operators}
"""

# KEYS: the driver's target. ARGV: version, value, ttl seconds (0: none).
_SET_TARGET_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(current)
  if not version then version = tonumber(cjson.decode(current)['v']) end
  if version >= tonumber(ARGV[1]) then return 0 end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""


@dataclass(frozen=True)
class Position:
    lat: float
    lng: float
    at: datetime


@dataclass(frozen=True)
class LocationUpdate:
    """A `job:driver_location` due to a job's customer."""

    customer_id: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredReport:
    """What a stored position owes: the customer's `job:driver_location`, the operators'
    `ops:driver_position` (each None when not due)."""

    customer_update: LocationUpdate | None
    for_operators: dict[str, Any] | None

    def events(self) -> list[tuple[str, dict[str, Any], str]]:
        """The socket events owed, as (event, payload, room): what the API publishes and the
        gateway emits for a report, whichever of them took it."""
        owed = []
        if self.customer_update is not None:
            update = self.customer_update
            owed.append(("job:driver_location", update.payload, customer_room(update.customer_id)))
        if self.for_operators is not None:
            owed.append(("ops:driver_position", self.for_operators, OPERATORS_ROOM))
        return owed


def target_key(driver_id: int) -> str:
    return settings.redis_key("tracking", driver_id)


def throttle_key(driver_id: int) -> str:
    return settings.redis_key("tracking", driver_id, "throttle")


def operators_throttle_key(driver_id: int) -> str:
    return settings.redis_key("ops", "position", driver_id)


def great_circle_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _utc_z(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def report_script_call(
    driver_id: int, lat: float, lng: float, now: float
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of _REPORT_SCRIPT for one report (the benchmark EVALSHAs it
    with the same ones)."""
    keys = [
        geo_key(),
        seen_key(),
        positions_key(),
        target_key(driver_id),
        throttle_key(driver_id),
        operators_throttle_key(driver_id),
        dispatchable_key(),
    ]
    args = [
        lng,
        indexable_lat(lat),
        driver_id,
        now,
        f"{lat!r},{lng!r},{now!r}",
        UPDATES_EVERY_MS,
        OPERATORS_SEE_POSITIONS_EVERY_MS,
    ]
    return keys, args


def record_position(r: redis.Redis, driver_id: int, lat: float, lng: float) -> StoredReport:
    """Store a driver's position (geo index, report time, exact last position) in one round
    trip; returns what their customer and the operators are due."""
    now = time.time()
    keys, args = report_script_call(driver_id, lat, lng, now)
    target, operators = r.eval(_REPORT_SCRIPT, len(keys), *keys, *args)
    seen = {"driver_id": driver_id, "lat": lat, "lng": lng, "at": _utc_z(now)}
    return StoredReport(
        _customer_update(target, lat, lng, now) if target else None,
        seen if operators else None,
    )


def _customer_update(target: str | bytes, lat: float, lng: float, now: float) -> LocationUpdate:
    goal = json.loads(target)
    return LocationUpdate(
        customer_id=goal["customer_id"],
        payload={
            "job_id": goal["job_id"],
            "lat": lat,
            "lng": lng,
            "at": _utc_z(now),
            "distance_km": round(great_circle_km(lat, lng, goal["lat"], goal["lng"]), 3),
        },
    )


def _target(job: Job) -> dict[str, Any] | None:
    """Where the driver is heading: the pickup until the job starts, then the dropoff (the
    pickup again if it has none). None when the job is not being tracked."""
    if job.status not in ON_JOB or job.driver_id is None:
        return None
    place = job.pickup
    if job.status == JobStatus.in_progress and job.dropoff is not None:
        place = job.dropoff
    return {"job_id": job.id, "customer_id": job.customer_id, "lat": place.lat, "lng": place.lng}


def sync_tracking(r: redis.Redis, job: Job, version: int, drivers: Sequence[int]) -> None:
    """Point each of `drivers` (the job's driver now, and any it had before this change)
    at what the job says now: its target while they are on it, nothing otherwise."""
    goal = _target(job)
    for driver_id in sorted(set(drivers)):
        if goal is not None and driver_id == job.driver_id:
            value, ttl = json.dumps({"v": version, **goal}), 0
        else:
            value, ttl = str(version), TOMBSTONE_TTL_S
        r.eval(_SET_TARGET_SCRIPT, 1, target_key(driver_id), version, value, ttl)


def _parse_position(raw: str | bytes | None) -> Position | None:
    if not raw:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    lat, lng, at = raw.split(",")
    return Position(float(lat), float(lng), datetime.fromtimestamp(float(at), UTC))


def last_positions(r: redis.Redis, driver_ids: Sequence[int]) -> dict[int, Position]:
    """Each driver's last reported position, by driver id (one Redis call for all, none for
    no driver)."""
    if not driver_ids:
        return {}
    raw = r.hmget(positions_key(), [str(driver_id) for driver_id in driver_ids])
    found = {
        driver_id: _parse_position(value) for driver_id, value in zip(driver_ids, raw, strict=True)
    }
    return {driver_id: where for driver_id, where in found.items() if where is not None}


def tracked_positions(r: redis.Redis, jobs: Sequence[Job]) -> dict[int, Position]:
    """The assigned driver's last position for each job on which a driver is working,
    by job id (one Redis call for all of them, none when no job is tracked)."""
    drivers = {j.id: j.driver_id for j in jobs if j.status in ON_JOB and j.driver_id is not None}
    found = last_positions(r, list(drivers.values()))
    return {job_id: found[driver] for job_id, driver in drivers.items() if driver in found}
