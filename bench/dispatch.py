"""Dispatch latency: 1,000 driver feeds connected (in separate client processes), 20 of them
near each job, 20 jobs/s for 30 s; from sending POST /jobs to each offered driver's `job:new`.

Scale knobs (bench.growth sets them): BENCH_DISPATCH_DRIVERS feeds connected (a multiple of
20: one cluster of 20 drivers per 20), BENCH_DISPATCH_RATE jobs a second, and
BENCH_DISPATCH_SECONDS of posting.

Floor, same run: an HTTP round trip to a trivial endpoint + one RedisManager emit reaching
a connected client + one Celery task's enqueue-to-start (from the worker's task-started event)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select, text

from bench.data import add_users, bearer, summary_ms, token_for
from bench.feeds import FeedProcesses
from models.db import engine, redis_connection, session_scope
from models.job_events import EventType, JobEvent
from models.offers import Offer
from models.positions import set_standing
from models.rooms import driver_room
from models.tracking import record_position
from tests.processes import Process, start_gateway, start_web, start_workers, wait_until
from workers.celery_app import app as celery_app
from workers.events import emit

PER_CLUSTER = 20
DRIVERS = int(os.environ.get("BENCH_DISPATCH_DRIVERS", 1_000))
CLUSTERS = DRIVERS // PER_CLUSTER
RATE_PER_S = int(os.environ.get("BENCH_DISPATCH_RATE", 20))
SECONDS = int(os.environ.get("BENCH_DISPATCH_SECONDS", 30))
FEED_PROCESSES = 4
POSTING_THREADS = max(8, RATE_PER_S // 4)  # each POST under load takes up to ~100 ms


def _cluster_center(cluster: int) -> tuple[float, float]:
    """1° apart on a grid 50 clusters high (at least 55 km at these latitudes): a job
    reaches only its own cluster."""
    return 10.0 + cluster % 50 * 1.0, cluster // 50 * 1.0


def _place(drivers: list[int]) -> dict[int, list[int]]:
    r = redis_connection()
    clusters: dict[int, list[int]] = {}
    for n, driver in enumerate(drivers):
        cluster = n // PER_CLUSTER
        lat, lng = _cluster_center(cluster)
        record_position(r, driver, lat + (n % PER_CLUSTER) * 0.001, lng)
        clusters.setdefault(cluster, []).append(driver)
    return clusters


def _retire_earlier_drivers() -> None:
    """Drivers an earlier run in the same stores placed go offline and leave the index:
    their positions stay fresh for LOCATION_STALE_S, and at the same cluster centres they
    would double the offers of each job of the next run."""
    with engine().begin() as conn:
        earlier = conn.execute(
            text("UPDATE driver_profiles SET online = false WHERE online RETURNING user_id")
        ).scalars()
        standing = dict.fromkeys(earlier, False)
    set_standing(redis_connection(), standing)


def _offers_per_job(job_ids: list[int]) -> float:
    """How many drivers each job was offered to, on average (PER_CLUSTER when only this
    run's drivers were near)."""
    with session_scope() as session:
        offers = session.scalar(select(func.count()).where(Offer.job_id.in_(job_ids))) or 0
    return round(offers / max(1, len(job_ids)), 2)


def _http_floor(base: str) -> float:
    session = requests.Session()
    seconds = []
    for _ in range(200):
        start = time.time()
        session.get(f"{base}/health", timeout=10)
        seconds.append(time.time() - start)
    session.close()
    return statistics.median(seconds)


def _emit_floor(driver: int) -> list[float]:
    sent = []
    for n in range(100):
        sent.append(time.time())
        emit("bench:ping", {"n": n}, [driver_room(driver)])
        time.sleep(0.01)
    return sent


class TaskEvents:
    """The workers' task events (Celery's, as Flower reads them) while the block runs:
    each task's received, started and succeeded times and its args, by task id."""

    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}
        self.args: dict[str, str] = {}
        self._receiver: Any = None

    def _record(self, event: dict[str, Any]) -> None:
        kind = event["type"].removeprefix("task-")
        self.times.setdefault(event["uuid"], {})[kind] = event["timestamp"]
        if kind == "received":
            self.args[event["uuid"]] = event.get("args", "")

    def __enter__(self) -> TaskEvents:
        handlers = {f"task-{k}": self._record for k in ("received", "started", "succeeded")}
        conn = celery_app.connection_for_read()
        self._conn = conn
        self._receiver = celery_app.events.Receiver(conn, handlers=handlers)
        self._listener = threading.Thread(
            target=lambda: self._receiver.capture(limit=None, timeout=None, wakeup=True),
            daemon=True,
        )
        self._listener.start()
        time.sleep(1.0)  # the receiver's queue bound before the first task
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(1.0)  # the last events on their way
        self._receiver.should_stop = True
        self._listener.join(5)
        self._conn.release()

    def since_sent(self, sent: dict[str, float], kind: str) -> list[float]:
        return [self.times[k][kind] - t for k, t in sent.items() if kind in self.times.get(k, {})]


def _enqueue_floor(samples: int = 50) -> float:
    """Enqueue-to-start of a trivial task, read from the worker's task-started events."""
    sent: dict[str, float] = {}
    with TaskEvents() as events:
        for _ in range(samples):
            sent_at = time.time()
            result = celery_app.send_task("workers.tasks.notify_status", args=(0,))  # no event 0
            sent[result.id] = sent_at
            time.sleep(0.05)
        wait_until(
            lambda: len(events.since_sent(sent, "started")) == samples, 30, "the tasks to start"
        )
    return statistics.median(events.since_sent(sent, "started"))


def _stages(
    events: TaskEvents, sent: dict[int, tuple[float, int]], arrivals: dict[tuple[int, int], float]
) -> dict[str, float]:
    """Where a job's time to its offers goes (medians, ms): from its POST to the worker
    receiving its notify_nearby, to the task starting in a pool process, the task's run,
    and from its start to each `job:new` arriving."""
    with session_scope() as session:
        rows = session.execute(
            select(JobEvent.id, JobEvent.job_id).where(JobEvent.type == EventType.created)
        )
        job_of_event = {row.id: row.job_id for row in rows}
    by_job: dict[int, dict[str, float]] = {}
    for task_id, args in events.args.items():
        event_id = int(args.strip("(),") or 0)
        if event_id in job_of_event:
            by_job[job_of_event[event_id]] = events.times[task_id]
    parts: dict[str, list[float]] = {
        "post_to_received": [], "received_to_started": [], "task_run": [],
        "started_to_job_new": [],
    }  # fmt: skip
    for job_id, times in by_job.items():
        if job_id not in sent or not {"received", "started", "succeeded"} <= times.keys():
            continue
        posted = sent[job_id][0]
        parts["post_to_received"].append(times["received"] - posted)
        parts["received_to_started"].append(times["started"] - times["received"])
        parts["task_run"].append(times["succeeded"] - times["started"])
        parts["started_to_job_new"] += [
            at - times["started"] for (job, _), at in arrivals.items() if job == job_id
        ]
    return {k: round(statistics.median(v) * 1000, 2) for k, v in parts.items() if v}


def _post_jobs(base: str, customer: int) -> dict[int, tuple[float, int]]:
    """POST RATE_PER_S jobs a second for SECONDS; job id -> (send time, cluster)."""
    headers = bearer(customer, "customer")
    sent: dict[int, tuple[float, int]] = {}
    local = threading.local()

    def post(n: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        cluster = n % CLUSTERS
        lat, lng = _cluster_center(cluster)
        start = time.time()
        answer = local.session.post(
            f"{base}/jobs", json={"pickup": {"lat": lat, "lng": lng}}, headers=headers, timeout=30
        )
        answer.raise_for_status()
        sent[answer.json()["id"]] = (start, cluster)

    begin = time.time()
    with ThreadPoolExecutor(POSTING_THREADS) as pool:
        for n in range(RATE_PER_S * SECONDS):
            time.sleep(max(0.0, begin + n / RATE_PER_S - time.time()))
            pool.submit(post, n)
    return sent


def main() -> None:
    logs = Path(tempfile.mkdtemp())
    _retire_earlier_drivers()
    [customer] = add_users("customer", 1)
    drivers = add_users("driver", CLUSTERS * PER_CLUSTER)
    processes: list[Process] = []
    feeds: FeedProcesses | None = None
    try:
        web, api_port = start_web(logs)
        gateway, gateway_port = start_gateway(logs)
        processes += [web, gateway, *start_workers(logs, concurrency=2)]
        base = f"http://127.0.0.1:{api_port}/api/v1"
        feeds = FeedProcesses(
            f"ws://127.0.0.1:{gateway_port}",
            [(d, token_for(d, "driver")) for d in drivers],
            FEED_PROCESSES,
        )
        connected = feeds.start()
        print(f"{connected} feeds connected", file=sys.stderr)
        clusters = _place(drivers)

        http_floor = _http_floor(base)
        ping_sent = _emit_floor(drivers[0])
        enqueue_floor = _enqueue_floor()
        with TaskEvents() as task_events:
            sent = _post_jobs(base, customer)
            time.sleep(5)  # let the last offers arrive
        received = feeds.stop()
    finally:
        if feeds is not None:
            feeds.kill()
        for process in reversed(processes):
            process.stop()

    pings = sorted(t for event, _, _, t in received if event == "bench:ping")
    emit_floor = statistics.median(b - a for a, b in zip(ping_sent, pings, strict=False))
    arrivals = {(p["job"]["id"], d): t for e, d, p, t in received if e == "job:new"}
    latencies, lost = [], 0
    for job_id, (start, cluster) in sent.items():
        for driver in clusters[cluster]:
            if (job_id, driver) in arrivals:
                latencies.append(arrivals[(job_id, driver)] - start)
            else:
                lost += 1
    result: dict[str, Any] = {
        **summary_ms(latencies),
        "lost": lost,
        "offers": len(latencies),
        "offers_per_job": _offers_per_job(list(sent)),
        "connections": connected,
    }
    floor = http_floor + emit_floor + enqueue_floor
    result["floor_p50_ms"] = round(floor * 1000, 2)
    result["ratio_p50"] = round(result["p50_ms"] / result["floor_p50_ms"], 2)
    result["stages_p50_ms"] = _stages(task_events, sent, arrivals)
    result["floor_parts_ms"] = {
        "http": round(http_floor * 1000, 2),
        "emit": round(emit_floor * 1000, 2),
        "enqueue_to_start": round(enqueue_floor * 1000, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
