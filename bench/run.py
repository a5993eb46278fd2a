"""`make bench`: create a throwaway database and Redis prefix, run every benchmark in its own
process (`python -m bench.<name>`, which prints its figures as one JSON line last), print a
table and write bench/results.json.

Progress goes to stderr as it happens: each benchmark's start and end (`[2/7] accept: done
in 21.4 s`), and every line a benchmark writes to its stderr (its own progress: feeds
connected, phases, rates), prefixed with its name. The table goes to stdout at the end."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import redis

from tests.processes import run_admin_sql

BENCHMARKS = ["dispatch", "accept", "push", "nearby", "gateway", "booking", "location", "growth"]
# Run this many times, each figure the median of the runs (every run kept under "runs"): the
# end-to-end latencies move with what else the machine does.
REPEATS = {"dispatch": 3}
HERE = Path(__file__).resolve().parent
ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BENCHMARK_TIMEOUT_S = 240
# bench.growth runs a dozen benchmarks' points one after the other, each under
# BENCHMARK_TIMEOUT_S of its own: about 15 minutes on a quiet machine, 35 on a busy one.
TIMEOUT_S = {"growth": 2_400}
STOP_GRACE_S = 15
STILL_RUNNING_EVERY_S = 30


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _relay(stream: IO[str], prefix: str) -> None:
    """Show a benchmark's stderr as it comes, each line under its name."""
    for line in stream:
        _progress(f"{prefix}{line.rstrip()}")


def stop_tree(child: subprocess.Popen[Any]) -> None:
    """End a benchmark and every process under it: the servers it started run in sessions
    of their own (tests.processes), which killing the benchmark alone leaves running."""
    try:
        tree = [psutil.Process(child.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=STOP_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    child.wait()


def _wait(child: subprocess.Popen[str], tag: str, started: float, timeout_s: float) -> str | None:
    """Wait for a benchmark, saying every STILL_RUNNING_EVERY_S that it still runs (most
    have phases that print nothing); why it failed, or None."""
    deadline = started + timeout_s
    while True:
        try:
            code = child.wait(min(STILL_RUNNING_EVERY_S, max(deadline - time.monotonic(), 0)))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                stop_tree(child)
                return f"no result in {timeout_s} s"
            _progress(f"{tag}: still running, {time.monotonic() - started:.0f} s")
            continue
        return None if code == 0 else f"exit {code}"


def run_one(name: str, position: str, env: dict[str, str]) -> dict[str, object]:
    """Run `bench.<name>` in its own process, its figures from its last stdout line."""
    tag = f"[{position}] {name}"
    _progress(f"{tag}: starting…")
    started = time.monotonic()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=HERE.parent,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
        )
        assert child.stderr is not None
        relay = threading.Thread(target=_relay, args=(child.stderr, f"    {name}: "), daemon=True)
        relay.start()
        failure = _wait(child, tag, started, TIMEOUT_S.get(name, BENCHMARK_TIMEOUT_S))
        relay.join(5)
        stdout.seek(0)
        printed = stdout.read()
    seconds = round(time.monotonic() - started, 1)
    if failure is not None:
        _progress(f"{tag}: failed ({failure}) after {seconds} s")
        sys.stderr.write(printed[-2000:])
        return {"error": failure, "seconds": seconds}
    result = json.loads(printed.strip().splitlines()[-1])
    result["seconds"] = seconds
    _progress(f"{tag}: done in {seconds} s")
    return result


def median_of(runs: list[dict[str, object]]) -> dict[str, object]:
    """One benchmark's runs as one result: each number the median of the runs, anything
    else as the first run has it, and the runs themselves under "runs"."""
    merged: dict[str, object] = {}
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        merged[key] = statistics.median(numbers) if len(numbers) == len(runs) else first
    return {**merged, "runs": runs}


def run_benchmark(name: str, position: str, env: dict[str, str]) -> dict[str, object]:
    """`bench.<name>` once, or REPEATS[name] times merged by `median_of`; a failed run fails it."""
    runs = [
        run_one(name, f"{position} run {n}" if REPEATS.get(name, 1) > 1 else position, env)
        for n in range(1, REPEATS.get(name, 1) + 1)
    ]
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    return runs[0] if len(runs) == 1 else median_of(runs)


@contextlib.contextmanager
def throwaway_stores(kind: str) -> Iterator[dict[str, str]]:
    """A migrated database and a Redis prefix of their own (`dispatch_<kind>_<id>`,
    `<kind>-<id>`) for one run: the environment to run it in; both removed afterwards."""
    run_id = uuid.uuid4().hex[:8]
    database = f"dispatch_{kind}_{run_id}"
    prefix = f"{kind}-{run_id}"
    run_admin_sql(ADMIN_URL, f'CREATE DATABASE "{database}"')
    env = {
        **os.environ,
        "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + "/" + database,
        "REDIS_PREFIX": prefix,
        "AUTO_APPROVE_DRIVERS": "true",
        "PYTHONUNBUFFERED": "1",
    }
    for unset in ("APNS_KEY_PATH", "APNS_HOST", "CELERY_BROKER_URL"):
        env.pop(unset, None)
    try:
        dispatch_cli = str(Path(sys.executable).parent / "dispatch")
        _progress(f"migrating the {kind} database {database}…")
        subprocess.run(
            [dispatch_cli, "migrate"], cwd=HERE.parent, env=env, check=True, stdout=sys.stderr
        )
        yield env
    finally:
        run_admin_sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        r = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def main() -> int:
    only = sys.argv[1:] or BENCHMARKS
    with throwaway_stores("bench") as env:
        results = {
            name: run_benchmark(name, f"{number}/{len(only)}", env)
            for number, name in enumerate(only, start=1)
        }
    report = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'benchmark':<10} figures")
    for name, figures in results.items():
        shown = ", ".join(f"{k}={v}" for k, v in figures.items() if k != "runs")
        print(f"{name:<10} {shown}")
    print("\nwritten to bench/results.json")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
