"""`make soak`: the whole system under a steady load for SOAK_SECONDS (600 by default), checked
for anything lost or leaking.

The production process set (gunicorn web, the gateway, the dispatch worker, the push worker
pushing over HTTP/2 to a fake APNs, the relay), 1,000 driver apps connected and reporting
their positions, customers booking 20 jobs a second, drivers accepting over REST and taking
each job to completed, customers following their jobs (bench.soak_clients). Checked
(bench.soak_check): no lost offers, no lost events, no lost pushes, every server process's
RSS growth from the end of the warm-up to the end of the load under 10 %; reported beside
them: booking-to-offer p50/p99 per minute. A table on stdout, bench/soak.json, and a
non-zero exit if any check fails. Not part of `make test`.

This process makes the throwaway database and Redis prefix (as bench.run does) and runs
bench.soak_run in a child process with them in its environment (settings are read at
import). SOAK_SECONDS shortens the load (the warm-up is then a quarter of it, at most
120 s); SOAK_RATE sets the jobs booked a second (20), to tell a harness problem from an
overloaded machine; SOAK_KEEP=1 keeps the log directory (process logs, every record) after
a pass."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import redis

from bench.run import ADMIN_URL
from tests.processes import run_admin_sql

HERE = Path(__file__).resolve().parent


def main() -> int:
    run_id = uuid.uuid4().hex[:8]
    database = f"dispatch_soak_{run_id}"
    prefix = f"soak-{run_id}"
    env = {
        **os.environ,
        "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + "/" + database,
        "REDIS_PREFIX": prefix,
        "AUTO_APPROVE_DRIVERS": "true",
        "PYTHONUNBUFFERED": "1",
    }
    for unset in ("APNS_KEY_PATH", "APNS_HOST", "CELERY_BROKER_URL"):
        env.pop(unset, None)
    run_admin_sql(ADMIN_URL, f'CREATE DATABASE "{database}"')
    try:
        print(f"migrating the soak database {database}…", file=sys.stderr, flush=True)
        dispatch_cli = str(Path(sys.executable).parent / "dispatch")
        subprocess.run(
            [dispatch_cli, "migrate"], cwd=HERE.parent, env=env, check=True, stdout=sys.stderr
        )
        return subprocess.run(
            [sys.executable, "-m", "bench.soak_run"], cwd=HERE.parent, env=env
        ).returncode
    finally:
        run_admin_sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        r = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


if __name__ == "__main__":
    sys.exit(main())
