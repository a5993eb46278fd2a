"""Accept under contention: 200 jobs, 20 concurrent accepts each over HTTP to gunicorn
(configured as `make run` does). Winners must be exactly 200. Two floors:

- `floor_*`: the same conditional UPDATE issued directly through psycopg2 by 20 concurrent
  connections (PostgreSQL alone);
- `noop_*`: what a Flask app on the same server cannot beat, 20 concurrent authenticated
  no-op POSTs (`bench.floor_app`: the API's bearer check, nothing else) by the same drivers,
  one such round before every other job's accepts (2,000 no-ops), so both see the same
  machine.

`web_cpu_ms_per_*` is the web process's CPU time (its workers', all threads) per request of
each kind: what a request costs the server, steadier than wall time on a shared machine."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import requests
from sqlalchemy import text

from bench.data import add_users, bearer, summary_ms
from bench.floor_app import FLOOR_APP, NOOP_PATH, web_cpu_s
from models.db import engine
from tests.processes import start_web

JOBS = 200
CONTENDERS = 20


def _make_jobs(customer: int, drivers: list[int], count: int) -> list[int]:
    with engine().begin() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO jobs (status, customer_id, pickup_lat, pickup_lng,"
                    " created_at, expires_at) SELECT 'pending', :c, 38.7, -9.1, now(),"
                    " now() + interval '1 hour' FROM generate_series(1, :n) RETURNING id"
                ),
                {"c": customer, "n": count},
            )
            .scalars()
            .all()
        )
        conn.execute(
            text(
                "INSERT INTO offers (job_id, driver_id, distance_km, offered_at)"
                " SELECT j, d, 1.0, now() FROM unnest(CAST(:jobs AS int[])) AS j,"
                " unnest(CAST(:drivers AS int[])) AS d"
            ),
            {"jobs": list(ids), "drivers": drivers},
        )
    return sorted(ids)


def _free_drivers() -> None:
    with engine().begin() as conn:
        conn.execute(text("UPDATE driver_profiles SET current_job_id = NULL"))


def _race(pool: ThreadPoolExecutor, attempts: list[Callable[[], int]]) -> list[tuple[int, float]]:
    gate = threading.Barrier(len(attempts))

    def one(attempt: Callable[[], int]) -> tuple[int, float]:
        gate.wait()
        start = time.perf_counter()
        status = attempt()
        return status, time.perf_counter() - start

    return list(pool.map(one, attempts))


class _Timings:
    """Latencies and the web process's CPU seconds of one kind of request."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_s = 0.0


def http_accepts(
    base: str, web_pid: int, jobs: list[int], drivers: list[int]
) -> tuple[int, _Timings, _Timings]:
    """Each job's 20 accepts, every other one after a round of 20 no-ops: the winners, the
    accepts' and the no-ops' timings."""
    sessions = [requests.Session() for _ in drivers]
    headers = [bearer(d, "driver") for d in drivers]
    winners, accepts, noops = 0, _Timings(), _Timings()

    def timed(pool: ThreadPoolExecutor, timings: _Timings, url: str) -> list[int]:
        def attempt(i: int) -> int:
            return sessions[i].post(url, headers=headers[i], timeout=30).status_code

        cpu_before = web_cpu_s(web_pid)
        results = _race(pool, [lambda i=i: attempt(i) for i in range(CONTENDERS)])
        timings.cpu_s += web_cpu_s(web_pid) - cpu_before
        timings.seconds += [s for _, s in results]
        return [status for status, _ in results]

    with ThreadPoolExecutor(CONTENDERS) as pool:
        for number, job in enumerate(jobs):
            if number % 2 == 0:
                statuses = timed(pool, noops, f"{base}{NOOP_PATH}")
                if set(statuses) != {200}:
                    raise RuntimeError(f"no-op answered {sorted(set(statuses))}")
            statuses = timed(pool, accepts, f"{base}/api/v1/jobs/{job}/accept")
            winners += statuses.count(200)
            _free_drivers()
    for session in sessions:
        session.close()
    return winners, accepts, noops


def sql_accepts(jobs: list[int], drivers: list[int]) -> tuple[int, list[float]]:
    conns = [psycopg2.connect(os.environ["DATABASE_URL"]) for _ in drivers]
    winners, seconds = 0, []
    with ThreadPoolExecutor(CONTENDERS) as pool:
        for job in jobs:

            def attempt(i: int, job: int = job) -> int:
                with conns[i], conns[i].cursor() as cur:
                    cur.execute(
                        "UPDATE jobs SET status = 'accepted', driver_id = %s, accepted_at = now()"
                        " WHERE id = %s AND status = 'pending' AND expires_at > now()",
                        (drivers[i], job),
                    )
                    return 200 if cur.rowcount == 1 else 409

            results = _race(pool, [lambda i=i: attempt(i) for i in range(CONTENDERS)])
            winners += sum(1 for status, _ in results if status == 200)
            seconds += [s for _, s in results]
    for conn in conns:
        conn.close()
    return winners, seconds


def main() -> None:
    [customer] = add_users("customer", 1)
    drivers = add_users("driver", CONTENDERS)
    http_jobs = _make_jobs(customer, drivers, JOBS)
    sql_jobs = _make_jobs(customer, drivers, JOBS)
    web, port = start_web(Path(tempfile.mkdtemp()), app=FLOOR_APP)
    try:
        base = f"http://127.0.0.1:{port}"
        winners, accepts, noops = http_accepts(base, web.popen.pid, http_jobs, drivers)
    finally:
        web.stop()
    floor_winners, floor_seconds = sql_accepts(sql_jobs, drivers)
    result = {"jobs": JOBS, "winners": winners, **summary_ms(accepts.seconds)}
    result["floor_p50_ms"] = summary_ms(floor_seconds)["p50_ms"]
    result["ratio_p50"] = round(result["p50_ms"] / result["floor_p50_ms"], 2)
    result["floor_winners"] = floor_winners
    noop = summary_ms(noops.seconds)
    result["noop_p50_ms"], result["noop_p99_ms"] = noop["p50_ms"], noop["p99_ms"]
    result["ratio_noop_p50"] = round(result["p50_ms"] / noop["p50_ms"], 2)
    result["web_cpu_ms_per_accept"] = round(accepts.cpu_s / len(accepts.seconds) * 1000, 2)
    result["web_cpu_ms_per_noop"] = round(noops.cpu_s / len(noops.seconds) * 1000, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
