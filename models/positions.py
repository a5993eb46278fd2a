"""The live geo index of the drivers who may be offered work, and the eligibility rule
built on it.

The index holds only dispatchable drivers (online, approved, not suspended, not on a job):
a Redis set names them, and a position report enters the GEO set only for a driver in it
(models.tracking). So the nearby query needs no database round trip: one Lua script does the
radius search and drops positions not reported within LOCATION_STALE_S (their report times
live in a sorted set beside the GEO set), and never scans all drivers.

PostgreSQL stays the truth. Each change of a driver's standing puts the set right after its
commit (`reindex_after_commit`); the relay reconciles the set with the database every
RECONCILE_EVERY_S, and at once when Redis has lost it, so a write lost to a Redis error or a
race of two commits is put right within that bound. Meanwhile a driver wrongly indexed may be
offered a job they cannot take: the accept refuses a busy or suspended driver in the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import redis
from sqlalchemy import ARRAY, ColumnElement, Integer, and_, any_, cast, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models.accounts import DriverProfile
from models.db import after_commit, redis_connection, session_scope
from settings import settings

log = logging.getLogger(__name__)

# Redis GEO covers the Web Mercator band; positions nearer the poles are indexed at its edge.
GEO_MAX_LAT = 85.05112878
RECONCILE_EVERY_S = 30.0

# KEYS: dispatchable set, geo, exact positions. ARGV: driver id, 1 (may be offered work) or 0.
# Entering, a driver is placed at their last reported position at once (drivers_near still
# drops it if it is stale); leaving, they leave the geo index too.
_STANDING_SCRIPT = f"""
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
  local last = redis.call('HGET', KEYS[3], ARGV[1])
  if last then
    local lat, lng = string.match(last, '^([^,]+),([^,]+),')
    lat = math.max(-{GEO_MAX_LAT}, math.min({GEO_MAX_LAT}, tonumber(lat)))
    redis.call('GEOADD', KEYS[2], tonumber(lng), lat, ARGV[1])
  end
else
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""

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


def dispatchable_key() -> str:
    return settings.redis_key("drivers", "dispatchable")


def positions_key() -> str:
    """Each driver's last exact position, "lat,lng,epoch s", by driver id."""
    return settings.redis_key("drivers", "position")


def dispatchable_rule() -> ColumnElement[bool]:
    """The drivers who may be offered work, as the database says."""
    return and_(
        DriverProfile.online,
        DriverProfile.approved,
        DriverProfile.suspended_at.is_(None),
        DriverProfile.current_job_id.is_(None),
    )


def indexable_lat(lat: float) -> float:
    return max(-GEO_MAX_LAT, min(GEO_MAX_LAT, lat))


def set_standing(r: redis.Redis, standing: dict[int, bool]) -> None:
    """Put each driver in the index (True) or out of it (False), in one round trip."""
    pipe = r.pipeline(transaction=False)
    for driver_id, dispatchable in standing.items():
        pipe.eval(
            _STANDING_SCRIPT,
            3,
            dispatchable_key(),
            geo_key(),
            positions_key(),
            driver_id,
            int(dispatchable),
        )
    pipe.execute()


def _among(session: Session, driver_ids: Collection[int]) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter: a plan cached once, instead of hundreds of IN parameters.
        return DriverProfile.user_id == any_(cast(list(driver_ids), ARRAY(Integer)))
    return DriverProfile.user_id.in_(driver_ids)


def reindex(r: redis.Redis, driver_ids: Collection[int]) -> None:
    """Read the drivers' committed standing and put the index right for each."""
    if not driver_ids:
        return
    with session_scope() as session:
        dispatchable = set(
            session.scalars(
                select(DriverProfile.user_id).where(
                    _among(session, driver_ids), dispatchable_rule()
                )
            )
        )
    set_standing(r, {driver_id: driver_id in dispatchable for driver_id in driver_ids})


def reindex_after_commit(
    session: Session, driver_id: int, dispatchable: bool | None = None
) -> None:
    """Once the session commits a change of the driver's standing, put the index right:
    to `dispatchable` when the change alone decides it (taking a job), else to what the
    database then says. A Redis or database error here is logged, not raised (the change
    is committed); the relay's reconciliation repairs the index."""

    def apply() -> None:
        r = redis_connection()
        try:
            if dispatchable is None:
                reindex(r, [driver_id])
            else:
                set_standing(r, {driver_id: dispatchable})
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("driver %s not reindexed (the relay will): %s", driver_id, exc)

    after_commit(session, apply)


def reconcile_standing(r: redis.Redis) -> list[int]:
    """Make the dispatchable set agree with the database: each driver on which they disagree
    is read again, on its own, and put right (a change committed meanwhile is not undone by
    this pass's older read). Returns the drivers whose entry was wrong."""
    with session_scope() as session:
        rule = select(DriverProfile.user_id).where(dispatchable_rule())
        wanted = {str(driver_id) for driver_id in session.scalars(rule)}
    indexed = set(r.smembers(dispatchable_key()))
    wrong = sorted(int(driver_id) for driver_id in wanted ^ indexed)
    reindex(r, wrong)
    return wrong


def standing_lost(r: redis.Redis) -> bool:
    """Whether Redis holds no dispatchable set (a restart without persistence lost it)."""
    return not r.exists(dispatchable_key())


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


def eligible_drivers(r: redis.Redis, lat: float, lng: float) -> list[Candidate]:
    """The dispatch rule: online, approved, not suspended, not on a job (the only drivers the
    index holds), and last seen within LOCATION_STALE_S at most DISPATCH_RADIUS_KM from the
    point; nearest first. One Redis round trip, no database query."""
    return drivers_near(r, lat, lng, settings.dispatch_radius_km, settings.location_stale_s)
