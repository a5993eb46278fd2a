"""Nearby query: 100,000 online drivers in the geo index; p50/p99 of `eligible_drivers` at a
random point, beside the bare GEOSEARCH on the same data (the floor)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

from bench.data import add_users, summary_ms
from models.db import redis_connection, session_scope
from models.positions import eligible_drivers, geo_key, seen_key
from settings import settings

DRIVERS = 100_000
QUERIES = 1_000
# A 6° x 6° box (about 670 x 520 km around Iberia): some 800 drivers within 30 km of a point.
BOX = (37.0, 43.0, -9.5, -3.5)


def _place_drivers(driver_ids: list[int], rng: random.Random) -> None:
    r = redis_connection()
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for driver_id in driver_ids:
        lat, lng = rng.uniform(BOX[0], BOX[1]), rng.uniform(BOX[2], BOX[3])
        pipe.geoadd(geo_key(), (lng, lat, str(driver_id)))
        pipe.zadd(seen_key(), {str(driver_id): now})
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()


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
    _place_drivers(add_users("driver", DRIVERS), rng)
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
        with session_scope() as session:
            return len(eligible_drivers(session, r, lat, lng))

    _timed(bare, points[:50])
    _timed(eligible, points[:50])
    floor, floor_found = _timed(bare, points)
    full, full_found = _timed(eligible, points)
    result = {**summary_ms(full), "floor_p50_ms": summary_ms(floor)["p50_ms"]}
    result["ratio_p50"] = round(result["p50_ms"] / result["floor_p50_ms"], 2)
    result["drivers_per_query"] = round(full_found / QUERIES)
    assert floor_found == full_found, (floor_found, full_found)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
