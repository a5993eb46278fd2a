"""The live geo index of the drivers who may be offered work, and the eligibility rule
built on it.

The index holds only dispatchable drivers (online, approved, not suspended, not on a job):
a Redis set names them, and a position report enters the GEO set only for a driver in it
(models.tracking). So the nearby query needs no database round trip, and never scans all
drivers: in one round trip (a transaction), the drivers whose last report is older than
LOCATION_STALE_S leave the GEO set (their report times live in a sorted set beside it, which
they leave too: each is dropped once, by the first query after they went stale), then the
radius search. A dropped driver comes back with their next report. Checking each hit's report
time instead (the way before) cost more than the search itself: about 0.6 µs a hit in Redis
and the Lua conversions of every hit, ~850 hits in a dense city.

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
from typing import NamedTuple

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

# KEYS: dispatchable set, geo, exact positions, report times. ARGV: driver id, 1 (may be
# offered work) or 0, the oldest fresh report time (epoch s). Entering, a driver is placed at
# their last reported position at once if it is fresh (a stale one waits for their next
# report: nothing would drop it from the GEO set); leaving, they leave the geo index too.
_STANDING_SCRIPT = f"""
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
  local last = redis.call('HGET', KEYS[3], ARGV[1])
  local seen = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]))
  if last and seen and seen >= tonumber(ARGV[3]) then
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

# KEYS: geo, report times. ARGV: the oldest fresh report time (epoch s). Drops the drivers
# not seen since from both; returns how many.
_DROP_STALE_SCRIPT = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for first = 1, #stale, 1000 do
  local chunk = {unpack(stale, first, math.min(first + 999, #stale))}
  redis.call('ZREM', KEYS[1], unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return #stale
"""


class Candidate(NamedTuple):
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


def fresh_since() -> float:
    """The oldest report time (epoch s) that still counts: LOCATION_STALE_S ago."""
    return time.time() - settings.location_stale_s


def set_standing(r: redis.Redis, standing: dict[int, bool]) -> None:
    """Put each driver in the index (True) or out of it (False), in one round trip."""
    pipe = r.pipeline(transaction=False)
    since = fresh_since()
    for driver_id, dispatchable in standing.items():
        pipe.eval(
            _STANDING_SCRIPT,
            4,
            dispatchable_key(),
            geo_key(),
            positions_key(),
            seen_key(),
            driver_id,
            int(dispatchable),
            since,
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


def drivers_near(r: redis.Redis, lat: float, lng: float, radius_km: float) -> list[Candidate]:
    """Drivers whose position, reported within LOCATION_STALE_S, lies within `radius_km` of
    the point, nearest first."""
    pipe = r.pipeline(transaction=True)
    pipe.eval(_DROP_STALE_SCRIPT, 2, geo_key(), seen_key(), fresh_since())
    pipe.execute_command(
        "GEOSEARCH",
        geo_key(),
        "FROMLONLAT",
        lng,
        indexable_lat(lat),
        "BYRADIUS",
        radius_km,
        "km",
        "WITHDIST",
        "ASC",
    )
    _, found = pipe.execute()
    return [Candidate(int(member), float(dist)) for member, dist in found]


def eligible_drivers(r: redis.Redis, lat: float, lng: float) -> list[Candidate]:
    """The dispatch rule: online, approved, not suspended, not on a job (the only drivers the
    index holds), and last seen within LOCATION_STALE_S at most DISPATCH_RADIUS_KM from the
    point; nearest first. One Redis round trip, no database query."""
    return drivers_near(r, lat, lng, settings.dispatch_radius_km)
