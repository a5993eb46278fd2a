"""The live geo index of driver positions in Redis, and the eligibility rule built on it.

Positions live in one GEO set; the time each was last reported lives in a sorted set
beside it. A single Lua script does the radius search and drops stale positions, so the
nearby query is one round trip and never scans all drivers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from sqlalchemy import ARRAY, Integer, any_, cast, select
from sqlalchemy.orm import Session

from models.accounts import DriverProfile
from settings import settings

# Redis GEO covers the Web Mercator band; positions nearer the poles are indexed at its edge.
GEO_MAX_LAT = 85.05112878

_NEARBY_SCRIPT = """
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                         'BYRADIUS', ARGV[3], 'km', 'WITHDIST', 'ASC')
if #found == 0 then return {} end
local seen = {}
for first = 1, #found, 1000 do
  local members = {}
  for i = first, math.min(first + 999, #found) do members[#members + 1] = found[i][1] end
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(members))
  for i, score in ipairs(scores) do seen[first + i - 1] = score end
end
local since = tonumber(ARGV[4])
local fresh = {}
for i, hit in ipairs(found) do
  if seen[i] and tonumber(seen[i]) >= since then
    fresh[#fresh + 1] = hit[1]
    fresh[#fresh + 1] = hit[2]
  end
end
return fresh
"""


@dataclass(frozen=True)
class Candidate:
    driver_id: int
    distance_km: float


def geo_key() -> str:
    return settings.redis_key("drivers", "geo")


def seen_key() -> str:
    return settings.redis_key("drivers", "seen")


def indexable_lat(lat: float) -> float:
    return max(-GEO_MAX_LAT, min(GEO_MAX_LAT, lat))


def forget_position(r: redis.Redis, driver_id: int) -> None:
    """Take the driver out of the geo index (their last exact position stays, for the
    customer of a job they are on)."""
    pipe = r.pipeline(transaction=True)
    pipe.zrem(geo_key(), str(driver_id))
    pipe.zrem(seen_key(), str(driver_id))
    pipe.execute()


def drivers_near(
    r: redis.Redis, lat: float, lng: float, radius_km: float, stale_after_s: float
) -> list[Candidate]:
    """Drivers whose fresh position lies within `radius_km` of the point, nearest first."""
    since = time.time() - stale_after_s
    flat = r.eval(
        _NEARBY_SCRIPT, 2, geo_key(), seen_key(), lng, indexable_lat(lat), radius_km, since
    )
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return [Candidate(int(member), float(dist)) for member, dist in pairs]


def eligible_drivers(session: Session, r: redis.Redis, lat: float, lng: float) -> list[Candidate]:
    """The dispatch rule: online, approved, not suspended, not on a job, and last seen within
    LOCATION_STALE_S at most DISPATCH_RADIUS_KM from the point; nearest first."""
    near = drivers_near(r, lat, lng, settings.dispatch_radius_km, settings.location_stale_s)
    if not near:
        return []
    ids = [c.driver_id for c in near]
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter: a plan cached once, instead of hundreds of IN parameters.
        among = DriverProfile.user_id == any_(cast(ids, ARRAY(Integer)))
    else:
        among = DriverProfile.user_id.in_(ids)
    available = set(
        session.scalars(
            select(DriverProfile.user_id).where(
                among,
                DriverProfile.online,
                DriverProfile.approved,
                DriverProfile.suspended_at.is_(None),
                DriverProfile.current_job_id.is_(None),
            )
        )
    )
    return [c for c in near if c.driver_id in available]
