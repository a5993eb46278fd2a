"""`make bench`: create a throwaway database and Redis prefix, run every benchmark in its own
process (`python -m bench.<name>`, which prints its figures as one JSON line last), print a
table and write bench/results.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from tests.processes import run_admin_sql

BENCHMARKS = ["dispatch", "accept", "push", "nearby", "gateway", "booking", "location"]
HERE = Path(__file__).resolve().parent
ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _run_one(name: str, env: dict[str, str]) -> dict[str, object]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}"],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        return {"error": f"exit {done.returncode}", "seconds": seconds}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = seconds
    return result


def main() -> int:
    only = sys.argv[1:] or BENCHMARKS
    run_id = uuid.uuid4().hex[:8]
    database = f"dispatch_bench_{run_id}"
    run_admin_sql(ADMIN_URL, f'CREATE DATABASE "{database}"')
    env = {
        **os.environ,
        "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + "/" + database,
        "REDIS_PREFIX": f"bench-{run_id}",
        "AUTO_APPROVE_DRIVERS": "true",
        "PYTHONUNBUFFERED": "1",
    }
    for unset in ("APNS_KEY_PATH", "APNS_HOST", "CELERY_BROKER_URL"):
        env.pop(unset, None)
    try:
        dispatch_cli = str(Path(sys.executable).parent / "dispatch")
        subprocess.run(
            [dispatch_cli, "migrate"], cwd=HERE.parent, env=env, check=True, capture_output=True
        )
        results = {name: _run_one(name, env) for name in only}
    finally:
        run_admin_sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        r = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for key in r.scan_iter(match=f"bench-{run_id}:*", count=1000):
            r.delete(key)
        r.close()
    report = {
        "machine": _machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'benchmark':<10} figures")
    for name, figures in results.items():
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        print(f"{name:<10} {shown}")
    print("\nwritten to bench/results.json")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
