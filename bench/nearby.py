"""Nearby query: 100,000 drivers in the geo index; p50/p99 of `eligible_drivers` at a random
point, beside the bare GEOSEARCH on the same data (the floor). The index holds ids only, with
no database rows behind them: the nearby path reads Redis alone.

Scale knobs (bench.growth sets them): BENCH_NEARBY_DRIVERS in the index, spread over the same
box, so the drivers a query finds grow with them (`drivers_per_query`); BENCH_NEARBY_QUERIES
timed, of each kind."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from bench.data import summary_ms
from models.db import redis_connection
from models.positions import eligible_drivers, geo_key, seen_key
from settings import settings

DRIVERS = int(os.environ.get("BENCH_NEARBY_DRIVERS", 100_000))
QUERIES = int(os.environ.get("BENCH_NEARBY_QUERIES", 1_000))
WARM_UP_QUERIES = max(1, QUERIES // 20)
PLACED_PER_ROUND_TRIP = 10_000
# A 6° x 6° box (about 670 x 520 km around Iberia): at 100,000 drivers some 800 within 30 km
# of a point.
BOX = (37.0, 43.0, -9.5, -3.5)


def _place_drivers(driver_ids: list[int], rng: random.Random) -> float:
    """GEOADDs of PLACED_PER_ROUND_TRIP drivers each, pipelined, then every driver's report
    time, stamped last (placing a million takes Redis a minute, near LOCATION_STALE_S);
    returns that time."""
    r = redis_connection()
    pipe = r.pipeline(transaction=False)
    batches = [
        driver_ids[first : first + PLACED_PER_ROUND_TRIP]
        for first in range(0, len(driver_ids), PLACED_PER_ROUND_TRIP)
    ]
    for batch in batches:
        positions: list[float | str] = []
        for driver_id in batch:
            lat, lng = rng.uniform(BOX[0], BOX[1]), rng.uniform(BOX[2], BOX[3])
            positions += [lng, lat, str(driver_id)]
        pipe.geoadd(geo_key(), positions)
        if len(pipe) >= 10:
            pipe.execute()
    pipe.execute()
    now = time.time()
    for batch in batches:
        pipe.zadd(seen_key(), dict.fromkeys(map(str, batch), now))
        if len(pipe) >= 10:
            pipe.execute()
    pipe.execute()
    return now


def _timed(
    query: Callable[[float, float], int], points: list[tuple[float, float]]
) -> tuple[list[float], int]:
    seconds, found = [], 0
    for lat, lng in points:
        start = time.perf_counter()
        found += query(lat, lng)
        seconds.append(time.perf_counter() - start)
    return seconds, found


def main() -> None:
    rng = random.Random(7)
    seen_at = _place_drivers(list(range(1, DRIVERS + 1)), rng)
    points = [
        (rng.uniform(BOX[0] + 0.5, BOX[1] - 0.5), rng.uniform(BOX[2] + 0.5, BOX[3] - 0.5))
        for _ in range(QUERIES)
    ]
    r = redis_connection()

    def bare(lat: float, lng: float) -> int:
        return len(
            r.geosearch(
                geo_key(),
                longitude=lng,
                latitude=lat,
                radius=settings.dispatch_radius_km,
                unit="km",
                withdist=True,
            )
        )

    def eligible(lat: float, lng: float) -> int:
        return len(eligible_drivers(r, lat, lng))

    _timed(bare, points[:WARM_UP_QUERIES])
    _timed(eligible, points[:WARM_UP_QUERIES])
    floor, floor_found = _timed(bare, points)
    full, full_found = _timed(eligible, points)
    if time.time() - seen_at > settings.location_stale_s:
        raise RuntimeError("the positions went stale during the queries: time fewer")
    result = {**summary_ms(full), "floor_p50_ms": summary_ms(floor)["p50_ms"]}
    result["ratio_p50"] = round(result["p50_ms"] / result["floor_p50_ms"], 2)
    result["drivers_per_query"] = round(full_found / QUERIES)
    assert floor_found == full_found, (floor_found, full_found)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
