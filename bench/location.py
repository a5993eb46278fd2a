"""The location path: 1,000 driver sockets reporting positions to ONE gateway process while
200 of them are on accepted jobs whose customers (200 more sockets) follow them live.

Set-up: 1,000 drivers and 200 customers (bench.data), 200 jobs inserted as `accepted`
(driver_profiles.current_job_id set, an announced `accepted` job event each), and each
on-job driver's tracking target written by `models.tracking.sync_tracking` with the job row
and the event's id as version, exactly as the announcing worker does after an accept.

The clients (CLIENT_PROCESSES processes, raw Engine.IO 4 / Socket.IO 5 over `websockets`, as
in bench.gateway) each hold a quarter of the drivers and customers. A driver emits
`driver:location` with an ack, at most one report outstanding (the next waits for the ack,
as a phone does), every interval ±10 % from a random start. The report's sequence number
per driver is encoded in its latitude (38.0 + seq × 1e-4), so a customer's
`job:driver_location` (which carries the reported lat/lng) names the report it came from.

Phases, one after the other on the same sockets:
- `trivial`: each customer emits `driver:location` once a second; the gateway answers
  `forbidden` before any Redis call: Socket.IO into and out of the gateway, nothing more.
- `steady`: every driver every 2 s (500 reports/s offered), WARM_UP_S, then MEASURE_S
  measured (30 s; BENCH_LOCATION_MEASURE_S sets it).
- `ceiling`: every driver every CEILING_INTERVAL_S (2,000/s offered, 4× the steady load);
  the reports acked per second here is the gateway's ceiling, the figure "reports per second
  one gateway takes" (`reports_per_s`).
- `trivial_ceiling`: the customers' rejected events as fast as the gateway answers them.

Figures per load phase: reports acked per second in the measured window, ack latency
p50/p99, report-to-customer latency p50/p99 (the driver's time.time() before the send to the
customer's time.time() on receipt; one machine), the gateway's CPU time per report (user +
system, all its threads, /proc), and `lost`: reports the throttle had to let through that
reached no customer. A report is due when it was sent at least 1 s after the ack of the
driver's last report that produced an update (the throttle key is SET inside the script,
between send and ack, with PX 1000), so a due report certainly found the throttle expired.
Every update is also checked: sent to its job's customer, explained by a report, delivered
once, at least 1 s after the job's previous one. `sql_during_reports` counts database
backends other than the benchmark's own that ran a statement during the steady phase
(pg_stat_activity.query_start): the hot path asks the database nothing.

Floors, same run:
- throughput (`floor_per_s`): the same gateway's ceiling for the trivial event, on the same
  sockets and load generators: what Socket.IO alone lets one gateway take. Beside it
  (`redis_floor`), EVALSHA of the report script + PUBLISH of the message python-socketio
  publishes per update, one after the other from one process: the Redis work alone.
- latency (`floor_p50_ms`): the trivial event's ack round trip p50 (into and out of the
  gateway) + that EVALSHA + PUBLISH p50 (the Redis work between).

And the report script in isolation: µs per `record_position` call (EVAL), beside a bare
EVALSHA of it and a PING; Redis round trips and SQL statements per call, counted."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import redis
import websockets
from sqlalchemy import event, text

from bench.data import add_users, summary_ms, token_for
from models.db import engine, redis_connection, session_scope
from models.jobs import Job
from models.rooms import customer_room
from models.tracking import (
    _REPORT_SCRIPT,
    UPDATES_EVERY_MS,
    record_position,
    report_script_call,
    sync_tracking,
)
from settings import settings
from tests.processes import Process, start_gateway

DRIVERS = 1_000
ON_JOB = 200
CLIENT_PROCESSES = 4
HANDSHAKES_IN_FLIGHT = 32
CONNECT_TIMEOUT_S = 60.0
ACK_TIMEOUT_S = 10.0
STEADY_INTERVAL_S = 2.0
CEILING_INTERVAL_S = 0.5
TRIVIAL_CEILING_INTERVAL_S = 0.02  # 200 customers: up to 10,000 trivial events a second
WARM_UP_S = 5.0
MEASURE_S = float(os.environ.get("BENCH_LOCATION_MEASURE_S", 30.0))
CEILING_WARM_UP_S = 2.0
CEILING_MEASURE_S = 8.0
TRIVIAL_S = 3.0
TRIVIAL_CEILING_S = 4.0
JITTER = 0.1
THROTTLE_S = UPDATES_EVERY_MS / 1000
THROTTLE_MARGIN_S = 0.005  # Redis expires keys to the millisecond
BASE_LAT = 38.0
LAT_STEP = 1e-4
PICKUP = (38.05, -9.05)
FLOOR_CALLS = 5_000
ISOLATION_CALLS = 2_000

Member = tuple[str, int, str, float]  # role, user id, bearer token, longitude it reports
Report = tuple[int, int, float, float | None, bool]  # user, seq, sent, acked (or None), ok
Arrival = tuple[int, str, float]  # customer id, raw Socket.IO packet, time.time() on receipt


# --- the clients -------------------------------------------------------------------------------


def lat_of(seq: int) -> float:
    return BASE_LAT + seq * LAT_STEP


def seq_of(lat: float) -> int:
    return round((lat - BASE_LAT) / LAT_STEP)


class Socket:
    """One Socket.IO client: answers pings, resolves acks, keeps the events it receives."""

    def __init__(self, member: Member, arrivals: list[Arrival]) -> None:
        self.role, self.user_id, self.token, self.lng = member
        self.arrivals = arrivals
        self.pending: dict[int, asyncio.Future[tuple[bool, float]]] = {}
        self.seq = 0
        self.ws: Any = None

    async def connect(self, url: str) -> None:
        self.ws = await websockets.connect(
            f"{url}/socket.io/?EIO=4&transport=websocket",
            compression=None,
            proxy=None,
            ping_interval=None,  # the gateway pings (Engine.IO), the client answers
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=2**16,
        )
        opened = str(await self.ws.recv())
        if not opened.startswith("0"):
            raise RuntimeError(f"Engine.IO open expected, got {opened[:80]!r}")
        await self.ws.send("40" + json.dumps({"token": self.token}))
        joined = str(await self.ws.recv())
        if not joined.startswith("40"):
            raise RuntimeError(f"{self.role} {self.user_id} refused: {joined[:200]}")

    async def read(self) -> None:
        async for message in self.ws:
            if message == "2":
                await self.ws.send("3")
            elif message.startswith("43"):  # 43<id>[{"ok": …}]
                at = time.time()
                bracket = message.index("[")
                waiter = self.pending.pop(int(message[2:bracket]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((json.loads(message[bracket:])[0].get("ok") is True, at))
            elif message.startswith("42"):
                self.arrivals.append((self.user_id, message, time.time()))

    async def report(self) -> Report:
        """One `driver:location` with an ack; its latitude carries its sequence number."""
        self.seq += 1
        seq = self.seq
        waiter: asyncio.Future[tuple[bool, float]] = asyncio.get_running_loop().create_future()
        self.pending[seq] = waiter
        packet = json.dumps(["driver:location", {"lat": lat_of(seq), "lng": self.lng}])
        sent = time.time()
        await self.ws.send(f"42{seq}{packet}")
        try:
            ok, acked = await asyncio.wait_for(waiter, ACK_TIMEOUT_S)
        except TimeoutError:
            self.pending.pop(seq, None)
            return (self.user_id, seq, sent, None, False)
        return (self.user_id, seq, sent, acked, ok)


async def _report_every(
    sock: Socket, interval: float, start_at: float, end_at: float, out: list[Report]
) -> None:
    """Closed loop: one report outstanding at most, the next `interval` ±10 % later."""
    rng = random.Random(sock.user_id)
    next_at = start_at + rng.uniform(0, interval)
    while next_at < end_at:
        await asyncio.sleep(max(0.0, next_at - time.time()))
        out.append(await sock.report())
        next_at = max(next_at + interval * rng.uniform(1 - JITTER, 1 + JITTER), time.time())


async def _client(url: str, members: Sequence[Member], commands: Any, out: Any) -> None:
    arrivals: list[Arrival] = []
    sockets = [Socket(m, arrivals) for m in members]
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def connect(sock: Socket) -> None:
        async with gate:
            await sock.connect(url)

    try:
        await asyncio.gather(*(connect(s) for s in sockets))
    except (OSError, RuntimeError, websockets.WebSocketException) as exc:
        out.put(("failed", repr(exc)))
        return
    readers = [asyncio.create_task(s.read()) for s in sockets]
    out.put(("connected", len(sockets)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, commands.get)
        if command[0] == "stop":
            break
        if command[0] == "collect":
            out.put(("arrivals", arrivals[:]))
            arrivals.clear()
            continue
        _, name, role, interval, start_at, end_at = command
        reports: list[Report] = []
        await asyncio.gather(
            *(
                _report_every(s, interval, start_at, end_at, reports)
                for s in sockets
                if s.role == role
            )
        )
        out.put(("reports", (name, reports)))
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(s.ws.close() for s in sockets), return_exceptions=True)


def _client_process(url: str, members_file: str, share: slice, commands: Any, out: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    members: list[Member] = [
        (role, user_id, token, lng)
        for role, user_id, token, lng in json.loads(Path(members_file).read_text())[share]
    ]
    asyncio.run(_client(url, members, commands, out))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Clients:
    """CLIENT_PROCESSES processes, each holding every CLIENT_PROCESSES-th member (so each
    has its share of drivers on jobs and of customers)."""

    def __init__(self, url: str, members_file: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.out = context.Queue()
        self.commands = [context.Queue() for _ in range(CLIENT_PROCESSES)]
        self.processes = [
            context.Process(
                target=_client_process,
                args=(url, str(members_file), slice(i, None, CLIENT_PROCESSES), q, self.out),
                daemon=True,
            )
            for i, q in enumerate(self.commands)
        ]

    def _gather(self, kind: str, timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        values: list[Any] = []
        while len(values) < len(self.processes):
            try:
                got, value = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the clients did not send {kind!r} in time") from None
            if got == "failed":
                raise RuntimeError(f"a client could not connect: {value}")
            if got != kind:
                raise RuntimeError(f"expected {kind!r} from a client, got {got!r}")
            values.append(value)
        return values

    def connect(self) -> int:
        for process in self.processes:
            process.start()
        return sum(self._gather("connected", CONNECT_TIMEOUT_S + 30))

    def run(
        self, name: str, role: str, interval: float, seconds: float, gateway_pid: int
    ) -> tuple[float, list[Report], float]:
        """Every `role` socket reports every `interval` for `seconds` from a common start;
        returns the start, every report, and the gateway's CPU seconds meanwhile."""
        start_at = time.time() + 0.5
        cpu_before = cpu_seconds(gateway_pid)
        for commands in self.commands:
            commands.put(("run", name, role, interval, start_at, start_at + seconds))
        batches = self._gather("reports", seconds + ACK_TIMEOUT_S + 30)
        cpu = cpu_seconds(gateway_pid) - cpu_before
        return start_at, [r for _, reports in batches for r in reports], cpu

    def arrivals(self) -> list[Arrival]:
        for commands in self.commands:
            commands.put(("collect",))
        return [a for batch in self._gather("arrivals", 30) for a in batch]

    def close(self) -> None:
        for commands in self.commands:
            commands.put(("stop",))
        for process in self.processes:
            process.join(10)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


_STARTED = time.monotonic()


def _progress(what: str) -> None:
    print(f"{time.monotonic() - _STARTED:5.1f} s  {what}", file=sys.stderr)


# --- set-up ------------------------------------------------------------------------------------


def _jobs_on(drivers: Sequence[int], customers: Sequence[int]) -> dict[int, tuple[int, int]]:
    """One accepted job per (driver, customer) pair, as the accept leaves it, and the
    driver's tracking target written as the worker writes it. Job id -> (driver, customer)."""
    pairs = list(zip(drivers, customers, strict=True))
    with engine().begin() as conn:
        jobs = conn.execute(
            text(
                "INSERT INTO jobs (status, customer_id, driver_id, pickup_lat, pickup_lng,"
                " created_at, accepted_at, expires_at)"
                " SELECT 'accepted', c, d, :lat, :lng, now(), now(), now() + interval '1 hour'"
                " FROM unnest(CAST(:drivers AS int[]), CAST(:customers AS int[])) AS p(d, c)"
                " RETURNING id, driver_id, customer_id"
            ),
            {
                "lat": PICKUP[0],
                "lng": PICKUP[1],
                "drivers": [d for d, _ in pairs],
                "customers": [c for _, c in pairs],
            },
        ).all()
        conn.execute(
            text(
                "UPDATE driver_profiles p SET current_job_id = j.id FROM jobs j"
                " WHERE j.driver_id = p.user_id AND j.status = 'accepted'"
            )
        )
        events = conn.execute(
            text(
                "INSERT INTO job_events (job_id, type, at, actor_id, actor_role, data,"
                " announced_at, push_attempts)"
                " SELECT id, 'accepted', now(), driver_id, 'driver',"
                " json_build_object('driver_id', driver_id, 'round', 1), now(), 0"
                " FROM jobs WHERE status = 'accepted' RETURNING job_id, id"
            )
        ).all()
    with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("jobs", "job_events", "driver_profiles"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))  # nothing left for autovacuum
    version = {job_id: event_id for job_id, event_id in events}
    r = redis_connection()
    with session_scope() as session:
        for job_id, driver_id, _ in jobs:
            job = session.get(Job, job_id)
            assert job is not None
            sync_tracking(r, job, version[job_id], [driver_id])
    return {job_id: (driver_id, customer_id) for job_id, driver_id, customer_id in jobs}


# --- the load phases ----------------------------------------------------------------------------


def _deliveries(
    arrivals: Sequence[Arrival], reports: Sequence[Report], jobs: dict[int, tuple[int, int]]
) -> tuple[dict[tuple[int, int], float], dict[str, Any]]:
    """Each `job:driver_location` matched to the report it came from: (driver, seq) ->
    the customer's receipt; and the checks: updates to the wrong customer, updates no
    report explains, a report delivered twice, other events, the shortest gap between
    two updates of a job (by the gateway's `at`: the throttle allows no less than 1 s)."""
    sent = {(r[0], r[1]) for r in reports}
    delivered: dict[tuple[int, int], float] = {}
    checks = dict.fromkeys(("misrouted", "unmatched", "duplicates", "other_events"), 0)
    update_times: dict[int, list[float]] = {}
    for customer, packet, at in arrivals:
        name, *args = json.loads(packet[2:])
        if name != "job:driver_location":
            checks["other_events"] += 1
            continue
        payload = args[0]
        driver, expected_customer = jobs.get(payload["job_id"], (None, None))
        if driver is None or customer != expected_customer:
            checks["misrouted"] += 1
            continue
        key = (driver, seq_of(payload["lat"]))
        if key not in sent:
            checks["unmatched"] += 1
            continue
        checks["duplicates"] += key in delivered
        delivered[key] = at
        server_at = datetime.fromisoformat(payload["at"]).timestamp()
        update_times.setdefault(payload["job_id"], []).append(server_at)
    gaps = [b - a for times in update_times.values() for a, b in pairwise(sorted(times))]
    return delivered, {**checks, "min_update_gap_ms": round(min(gaps) * 1000) if gaps else None}


def _due(
    reports: Sequence[Report], delivered: dict[tuple[int, int], float], on_job: set[int]
) -> set[tuple[int, int]]:
    """The reports of drivers on jobs that certainly found the throttle expired: sent at
    least 1 s after the ack of the driver's last report that produced an update (or was
    due to), since the script sets the throttle between a report's send and its ack."""
    by_driver: dict[int, list[Report]] = {}
    for report in reports:
        if report[0] in on_job and report[4] and report[3] is not None:
            by_driver.setdefault(report[0], []).append(report)
    due = set()
    for driver_reports in by_driver.values():
        last_update_acked = float("-inf")
        for driver, seq, sent, acked, _ in sorted(driver_reports, key=lambda r: r[1]):
            if sent - last_update_acked >= THROTTLE_S + THROTTLE_MARGIN_S:
                due.add((driver, seq))
            if (driver, seq) in delivered or (driver, seq) in due:
                last_update_acked = acked or 0.0
    return due


def _summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p99 in ms; None for both when nothing was measured (a phase whose reports
    waited longer than its window)."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    return {**summary_ms(seconds)}


def _phase_figures(
    reports: Sequence[Report],
    delivered: dict[tuple[int, int], float],
    due: set[tuple[int, int]],
    window: tuple[float, float],
    interval: float,
    cpu_s: float,
) -> dict[str, Any]:
    start, end = window
    acks, to_customer, acked_in_window = [], [], 0
    for driver, seq, sent, acked, ok in reports:
        if not ok or acked is None:
            continue
        acked_in_window += start <= acked < end
        if start <= sent < end:
            acks.append(acked - sent)
            if (driver, seq) in delivered:
                to_customer.append(delivered[(driver, seq)] - sent)
    keys = {(r[0], r[1]) for r in reports}
    return {
        "offered_per_s": round(DRIVERS / interval),
        "acked_per_s": round(acked_in_window / (end - start)),
        "ack": _summary(acks),
        "to_customer": _summary(to_customer),
        "updates": len(keys & delivered.keys()),
        "due": len(keys & due),
        "lost": len((keys & due) - delivered.keys()),
        "unacked": sum(1 for r in reports if not r[4]),
        "gateway_cpu_us_per_report": round(cpu_s / len(reports) * 1e6),
    }


def _sql_since(moment: float) -> int:
    """Database backends other than this one that ran a statement since `moment`."""
    with engine().connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND query_start >= to_timestamp(:moment)"
            ),
            {"moment": moment},
        ).scalar_one()


def _load(
    url: str, members_file: Path, jobs: dict[int, tuple[int, int]], gateway_pid: int
) -> dict[str, Any]:
    clients = _Clients(url, members_file)
    try:
        connected = clients.connect()
        _progress(f"{connected} sockets connected")
        _, trivial, _ = clients.run("trivial", "customer", 1.0, TRIVIAL_S, gateway_pid)
        phases = []
        for name, interval, warm_up, seconds in (
            ("steady", STEADY_INTERVAL_S, WARM_UP_S, MEASURE_S),
            ("ceiling", CEILING_INTERVAL_S, CEILING_WARM_UP_S, CEILING_MEASURE_S),
        ):
            start, reports, cpu = clients.run(
                name, "driver", interval, warm_up + seconds, gateway_pid
            )
            _progress(f"{name}: {len(reports)} reports")
            if name == "steady":
                sql_during_reports = _sql_since(start)
            window = (start + warm_up, start + warm_up + seconds)
            phases.append((name, reports, window, interval, cpu))
        start, flood, flood_cpu = clients.run(
            "trivial_ceiling",
            "customer",
            TRIVIAL_CEILING_INTERVAL_S,
            CEILING_WARM_UP_S + TRIVIAL_CEILING_S,
            gateway_pid,
        )
        arrivals = clients.arrivals()  # seconds after the last report: all are in
    finally:
        clients.close()
    answers = {}  # (sent, answered) of each trivial event, all answered `forbidden`
    for name, events in (("trivial", trivial), ("trivial_ceiling", flood)):
        answers[name] = [(r[2], r[3]) for r in events if r[3] is not None and not r[4]]
        if len(answers[name]) != len(events):
            raise RuntimeError(f"{name}: not every event was answered `forbidden`")
    every_report = [r for _, reports, *_ in phases for r in reports]
    delivered, checks = _deliveries(arrivals, every_report, jobs)
    due = _due(every_report, delivered, {driver for driver, _ in jobs.values()})
    figures: dict[str, Any] = {
        "connections": connected,
        "sql_during_reports": sql_during_reports,
        **checks,
    }
    for name, reports, window, interval, cpu in phases:
        figures[name] = _phase_figures(reports, delivered, due, window, interval, cpu)
    measured_from = start + CEILING_WARM_UP_S
    answered = [
        at for _, at in answers["trivial_ceiling"] if 0 <= at - measured_from < TRIVIAL_CEILING_S
    ]
    figures["trivial"] = {
        "ack": summary_ms([at - sent for sent, at in answers["trivial"]]),
        "ceiling_per_s": round(len(answered) / TRIVIAL_CEILING_S),
        "gateway_cpu_us_per_event": round(flood_cpu / len(flood) * 1e6),
    }
    return figures


# --- floors and the script in isolation -----------------------------------------------------------


class _CountingConnection(redis.Connection):
    """Counts what is written to Redis: one write per command (or per pipeline)."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _CountingConnection.writes += 1
        super().send_packed_command(command, check_health)


def _report_args(driver_id: int, lat: float, lng: float) -> tuple[list[str], list[Any]]:
    return report_script_call(driver_id, lat, lng, time.time())


def _redis_floor(drivers: Sequence[int], customers: dict[int, int]) -> dict[str, Any]:
    """EVALSHA of the report script + PUBLISH of an update's message, one after the other."""
    r = redis_connection()
    sha = r.script_load(_REPORT_SCRIPT)
    channel = settings.redis_key("bench", "location-floor")  # nobody listens: no delivery
    seconds = []
    began = time.perf_counter()
    for n in range(FLOOR_CALLS):
        driver = drivers[n % len(drivers)]
        start = time.perf_counter()
        keys, args = _report_args(driver, lat_of(n), -9.0)
        r.evalsha(sha, len(keys), *keys, *args)
        message = {
            "method": "emit",
            "event": "job:driver_location",
            "data": [{"job_id": 1, "lat": lat_of(n), "lng": -9.0, "at": "", "distance_km": 1.0}],
            "binary": False,
            "namespace": "/",
            "room": customer_room(customers[driver]),
            "skip_sid": None,
            "callback": None,
            "host_id": "bench",
        }
        r.publish(channel, json.dumps(message))
        seconds.append(time.perf_counter() - start)
    return {
        "per_s": round(FLOOR_CALLS / (time.perf_counter() - began)),
        "p50_ms": round(statistics.median(seconds) * 1000, 3),
    }


def _isolation(drivers: Sequence[int]) -> dict[str, Any]:
    """record_position alone: µs a call beside EVALSHA and PING; writes to Redis and SQL
    statements a call, counted."""
    pool = redis.ConnectionPool.from_url(
        settings.redis_url, connection_class=_CountingConnection, decode_responses=True
    )
    r = redis.Redis(connection_pool=pool)
    sha = r.script_load(_REPORT_SCRIPT)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    def timed(call: Any) -> tuple[float, int]:
        writes_before = _CountingConnection.writes
        seconds = []
        for n in range(ISOLATION_CALLS):
            start = time.perf_counter()
            call(drivers[n % len(drivers)], lat_of(n))
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds), _CountingConnection.writes - writes_before

    def evalsha(driver: int, lat: float) -> None:
        keys, args = _report_args(driver, lat, -9.0)
        r.evalsha(sha, len(keys), *keys, *args)

    r.ping()
    timed(lambda d, lat: record_position(r, d, lat, -9.0))  # warm
    event.listen(engine(), "before_cursor_execute", count)
    try:
        record_s, record_writes = timed(lambda d, lat: record_position(r, d, lat, -9.0))
    finally:
        event.remove(engine(), "before_cursor_execute", count)
    evalsha_s, _ = timed(evalsha)
    ping_s, _ = timed(lambda d, lat: r.ping())
    r.close()
    pool.disconnect()
    return {
        "record_position_us": round(record_s * 1e6, 1),
        "evalsha_us": round(evalsha_s * 1e6, 1),
        "ping_us": round(ping_s * 1e6, 1),
        "redis_writes_per_report": record_writes / ISOLATION_CALLS,
        "sql_per_report": statements / ISOLATION_CALLS,
    }


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    drivers = add_users("driver", DRIVERS)
    customers = add_users("customer", ON_JOB)
    on_job = drivers[:: DRIVERS // ON_JOB][:ON_JOB]  # spread over every client process
    jobs = _jobs_on(on_job, customers)
    _progress(f"{len(drivers)} drivers, {len(customers)} customers, {len(jobs)} jobs tracked")
    members: list[Member] = [
        ("driver", d, token_for(d, "driver"), -9.0 - n * 1e-3) for n, d in enumerate(drivers)
    ] + [("customer", c, token_for(c, "customer"), -9.0) for c in customers]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-location-"))
    members_file = log_dir / "members.json"
    members_file.write_text(json.dumps(members))
    gateway: Process | None = None
    try:
        gateway, port = start_gateway(log_dir)
        _progress("gateway listening")
        load = _load(f"ws://127.0.0.1:{port}", members_file, jobs, gateway.popen.pid)
        if not gateway.alive():
            raise RuntimeError("the gateway exited")
    except Exception:
        if gateway is not None:
            sys.stderr.write(gateway.log()[-3000:])
        raise
    finally:
        if gateway is not None:
            gateway.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    customer_of = {driver: customer for driver, customer in jobs.values()}
    redis_floor = _redis_floor(on_job, customer_of)
    _progress("Redis floor measured")
    steady, ceiling, trivial = load["steady"], load["ceiling"], load["trivial"]
    if steady["to_customer"]["p50_ms"] is None:
        raise RuntimeError("no job:driver_location reached a customer in the steady phase")
    floor_p50_ms = trivial["ack"]["p50_ms"] + redis_floor["p50_ms"]
    result = {
        "reports_per_s": ceiling["acked_per_s"],
        "floor_per_s": trivial["ceiling_per_s"],
        "ratio_per_s": round(ceiling["acked_per_s"] / trivial["ceiling_per_s"], 2),
        # What one core of gateway takes, from its CPU time: steadier than the ceiling on a
        # machine shared with the load generators.
        "reports_per_cpu_s": round(1e6 / ceiling["gateway_cpu_us_per_report"]),
        "steady_per_s": steady["acked_per_s"],
        "to_customer_p50_ms": steady["to_customer"]["p50_ms"],
        "to_customer_p99_ms": steady["to_customer"]["p99_ms"],
        "floor_p50_ms": round(floor_p50_ms, 2),
        "ratio_p50": round(steady["to_customer"]["p50_ms"] / floor_p50_ms, 2),
        "lost": steady["lost"] + ceiling["lost"],
        "redis_floor": redis_floor,
        **load,
        "script": _isolation(on_job),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
