"""The soak itself (`python -m bench.soak` runs it with its own database and Redis prefix):
set-up, the load, the drain, the checks, the table and bench/soak.json.

- Set-up: DRIVERS drivers in CLUSTERS clusters of PER_CLUSTER (bench.soak_clients places
  them) and CUSTOMERS customers (bench.data), one APNs device token each; the fake APNs
  (bench.soak_apns) and the Procfile's processes with its settings: web (gunicorn, 2
  workers × 8 threads), the gateway, the dispatch worker (concurrency 2), the push worker
  (concurrency 1), the relay.
- Load: DRIVER_PROCESSES processes of driver apps and CUSTOMER_PROCESSES of customer apps
  (bench.soak_clients); once every driver is online with a position, the customers book
  RATE_PER_S jobs a second for SOAK_SECONDS. Every RSS_EVERY_S, the RSS of every server
  process (psutil, each process tree: gunicorn's and Celery's children too).
- Drain: no more bookings; wait until every job has ended (completed or cancelled) and
  the outbox has nothing left to announce or push, then SETTLE_S for the last deliveries.
- Checks (bench.soak_check): lost offers, lost events, lost pushes, and RSS growth per
  process from the end of the warm-up to the end of the load below RSS_GROWTH_LIMIT
  (median of the samples RSS_WINDOW_S either side of the warm-up's end, against the
  median of the last RSS_WINDOW_S of the load). Also failed: fewer than BOOKED_AT_LEAST
  of the jobs due booked (a starved load generator makes an easier soak), any unexpected
  HTTP answer, a socket dropped, a server process that died, a job that never ended."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bench.data import add_users, percentile, token_for
from bench.run import machine
from bench.soak_apns import APNsProcess
from bench.soak_check import (
    Observed,
    check_events,
    check_offers,
    check_pushes,
    latency_by_minute,
)
from bench.soak_clients import CLUSTERS, PER_CLUSTER, Control, run_customers, run_drivers
from models.db import engine
from settings import settings
from tests.processes import Process, start_gateway, start_relay, start_web, start_worker

DRIVERS = CLUSTERS * PER_CLUSTER
CUSTOMERS = 500
DRIVER_PROCESSES = 4
CUSTOMER_PROCESSES = 2
RATE_PER_S = float(os.environ.get("SOAK_RATE", 20))
SECONDS = float(os.environ.get("SOAK_SECONDS", 600))
WARM_UP_S = min(120.0, SECONDS / 4)
RSS_EVERY_S = 5.0
RSS_WINDOW_S = 30.0
RSS_GROWTH_LIMIT = 0.10
VACUUM_EVERY_S = 60.0
BOOKED_AT_LEAST = 0.95  # else the load generators (or the API) fell behind: an easier soak
READY_TIMEOUT_S = 240.0
DRAIN_TIMEOUT_S = 180.0
SETTLE_S = 3.0
PROGRESS_EVERY_S = 30.0
HERE = Path(__file__).resolve().parent
_STARTED = time.monotonic()


def _progress(what: str) -> None:
    print(f"{time.monotonic() - _STARTED:6.1f} s  {what}", file=sys.stderr, flush=True)


# --- set-up ------------------------------------------------------------------------------------


def device_token(user_id: int) -> str:
    return f"{user_id:064x}"


def _add_devices(users: list[int]) -> None:
    """One active production token each, as POST /devices leaves it."""
    with engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO device_tokens (user_id, token, platform, environment, active,"
                " created_at, updated_at) SELECT u, lpad(to_hex(u), 64, '0'), 'ios',"
                " 'production', true, now(), now() FROM unnest(CAST(:users AS int[])) AS u"
            ),
            {"users": users},
        )


def _start_servers(logs: Path, apns_env: dict[str, str]) -> tuple[dict[str, Process], int, int]:
    """The Procfile's processes (its concurrency), pushing to the fake APNs."""
    web, api_port = start_web(logs, apns_env)
    gateway, ws_port = start_gateway(logs, apns_env)
    servers = {"web": web, "gateway": gateway}
    servers["worker"] = start_worker(logs, apns_env, "worker", 2, "dispatch")
    servers["pushworker"] = start_worker(logs, apns_env, "pushworker", 1, "push")
    servers["relay"] = start_relay(logs, apns_env)
    return servers, api_port, ws_port


class Clients:
    """The driver and customer app processes."""

    def __init__(
        self, logs: Path, api_port: int, ws_port: int, drivers: list[int], customers: list[int]
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.out = context.Queue()
        self.go, self.stop = context.Event(), context.Event()
        self.logs = logs
        self.controls: list[Control] = []
        self.children: list[Any] = []
        self.counts: dict[str, dict[str, int]] = {}
        common = {"api_url": f"http://127.0.0.1:{api_port}", "ws_url": f"ws://127.0.0.1:{ws_port}"}
        driver_rows = [[d, token_for(d, "driver"), n // PER_CLUSTER] for n, d in enumerate(drivers)]
        customer_rows = [[c, token_for(c, "customer"), 0] for c in customers]
        for role, rows, processes, target in (
            ("drivers", driver_rows, DRIVER_PROCESSES, run_drivers),
            ("customers", customer_rows, CUSTOMER_PROCESSES, run_customers),
        ):
            for index in range(processes):
                name = f"{role}-{index + 1}"
                members = logs / f"{name}.members.json"
                members.write_text(json.dumps(rows[index::processes]))
                control = Control(
                    **common,
                    members_file=str(members),
                    records_file=str(logs / f"{name}.records.json"),
                    name=name,
                    go=self.go,
                    stop=self.stop,
                    out=self.out,
                    seconds=SECONDS,
                    rate_per_s=RATE_PER_S,
                    index=index,
                    processes=processes,
                )
                self.controls.append(control)
                self.children.append(context.Process(target=target, args=(control,), daemon=True))

    def start(self) -> None:
        for child in self.children:
            child.start()
        self.wait_for_all("ready", READY_TIMEOUT_S)

    def wait_for_all(self, kind: str, timeout_s: float) -> None:
        waiting = {c.name for c in self.controls}
        deadline = time.monotonic() + timeout_s
        while waiting:
            try:
                kind_got, name, value = self.next(deadline)
            except TimeoutError:
                pairs = zip(self.controls, self.children, strict=True)
                exits = {control.name: child.exitcode for control, child in pairs}
                raise TimeoutError(
                    f"no {kind!r} in {timeout_s:.0f} s from {sorted(waiting)} "
                    f"(exit codes, None while running: {exits})"
                ) from None
            if kind_got == kind:
                waiting.discard(name)
                _progress(f"{name}: {kind} {value if value is not None else ''}")

    def next(self, deadline: float) -> tuple[str, str, Any]:
        """The next message that is not progress (progress is kept for `progress_line`)."""
        while True:
            try:
                kind, name, value = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("the client processes did not answer in time") from None
            if kind == "failed":
                raise RuntimeError(f"client process {name} failed: {value}")
            if kind != "progress":
                return kind, name, value
            self.counts[name] = value

    def poll(self, seconds: float) -> None:
        """Take progress (and failures) for `seconds`."""
        try:
            self.next(time.monotonic() + seconds)
        except TimeoutError:
            return
        raise RuntimeError("a client process stopped during the load")

    def progress_line(self) -> str:
        total: Counter[str] = Counter()
        for counts in self.counts.values():
            total.update(counts)
        shown = ("book_201", "job:new", "accept_200", "accept_409", "complete_200", "cancel_200",
                 "reports", "reports_failed", "transport_errors")  # fmt: skip
        return ", ".join(f"{k} {total[k]}" for k in shown if total[k])

    def finish(self) -> dict[str, dict[str, list[Any]]]:
        """Stop every app; their records merged by role."""
        self.stop.set()
        self.wait_for_all("done", 120)
        for child in self.children:
            child.join(10)
        merged: dict[str, dict[str, list[Any]]] = {"drivers": {}, "customers": {}}
        for control in self.controls:
            role = control.name.split("-")[0]
            records = json.loads(Path(control.records_file).read_text())
            for name, rows in records.items():
                merged[role].setdefault(name, []).extend(rows)
        return merged

    def kill(self) -> None:
        for child in self.children:
            if child.is_alive():
                child.kill()
                child.join(5)


# --- autovacuum's stand-in ---------------------------------------------------------------------


class Vacuum(threading.Thread):
    """What autovacuum does in production, where the server runs it: every VACUUM_EVERY_S,
    `VACUUM (ANALYZE)` of the soak's database, when this server's autovacuum is off (as on
    the shared test machines). Without it a job's five updates and every driver's standing
    changes leave dead rows that no one reclaims, and the system slows as the run goes on,
    which a deployment would not."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.passes: list[float] = []  # each pass's seconds
        self.failures: list[str] = []  # each failed pass's error: said, and the next one tried

    @staticmethod
    def needed() -> bool:
        with engine().connect() as conn:
            return conn.execute(text("SHOW autovacuum")).scalar_one() == "off"

    def run(self) -> None:
        while not self.halt.wait(VACUUM_EVERY_S):
            began = time.monotonic()
            try:
                with engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM (ANALYZE)"))
            except SQLAlchemyError as exc:
                self.failures.append(str(exc).splitlines()[0])
                _progress(f"VACUUM failed (tried again in {VACUUM_EVERY_S:.0f} s): {exc}")
                continue
            self.passes.append(time.monotonic() - began)


# --- RSS ---------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Every RSS_EVERY_S, the RSS and CPU time of each process and of each of its children
    (named `web`, `web/<pid>` …)."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[str, list[tuple[float, int, float]]] = {}  # at, RSS, CPU seconds
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(RSS_EVERY_S)

    def sample(self) -> None:
        at = time.time()
        for name, pid in self.pids.items():
            try:
                leader = psutil.Process(pid)
                tree = [(name, leader)]
                tree += [(f"{name}/{p.pid}", p) for p in leader.children(recursive=True)]
                for label, process in tree:
                    cpu = process.cpu_times()
                    self.samples.setdefault(label, []).append(
                        (at, process.memory_info().rss, cpu.user + cpu.system)
                    )
            except psutil.NoSuchProcess:
                continue


def rss_growth(
    samples: dict[str, list[tuple[float, int, float]]], warm_at: float, end_at: float
) -> dict[str, dict[str, Any]]:
    """Per process: median RSS around the warm-up's end, over the last window of the load;
    and its CPU use over the load (% of one core)."""
    growth: dict[str, dict[str, Any]] = {}
    for label, series in samples.items():
        warm = [r for t, r, _ in series if abs(t - warm_at) <= RSS_WINDOW_S]
        end = [r for t, r, _ in series if end_at - RSS_WINDOW_S <= t <= end_at]
        if not warm or not end:
            growth[label] = {"error": "not sampled through the load"}
            continue
        warm_mb, end_mb = statistics.median(warm) / 2**20, statistics.median(end) / 2**20
        (first_at, _, first_cpu), (last_at, _, last_cpu) = series[0], series[-1]
        growth[label] = {
            "warm_mb": round(warm_mb, 1),
            "end_mb": round(end_mb, 1),
            "growth_pct": round((end_mb / warm_mb - 1) * 100, 1),
            "cpu_pct": round((last_cpu - first_cpu) / max(last_at - first_at, 1e-9) * 100, 1),
        }
    return growth


# --- the run -----------------------------------------------------------------------------------


def _unfinished() -> tuple[int, int]:
    """Jobs not ended yet, and outbox rows not announced or with a push still owed."""
    with engine().connect() as conn:
        jobs = conn.execute(
            text(
                "SELECT count(*) FROM jobs"
                " WHERE status NOT IN ('completed', 'cancelled', 'expired')"
            )
        ).scalar_one()
        owed = conn.execute(
            text(
                "SELECT count(*) FROM job_events"
                " WHERE announced_at IS NULL OR push_due_at IS NOT NULL"
            )
        ).scalar_one()
    return int(jobs), int(owed)


def _drain() -> float:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (left := _unfinished()) != (0, 0) and time.monotonic() < deadline:
        time.sleep(1.0)
    _progress(f"drained: {left[0]} jobs not ended, {left[1]} announcements or pushes owed")
    time.sleep(SETTLE_S)
    return time.time()


def _database_rows() -> dict[str, list[Any]]:
    with engine().connect() as conn:
        jobs = conn.execute(text("SELECT id, customer_id, status, driver_id FROM jobs")).all()
        events = conn.execute(
            text(
                "SELECT job_id, type, extract(epoch FROM at)::float8,"
                " extract(epoch FROM announced_at)::float8, data FROM job_events ORDER BY id"
            )
        ).all()
        offers = conn.execute(
            text("SELECT job_id, driver_id, round, closed_at IS NOT NULL FROM offers")
        ).all()
    return {
        "jobs": [list(r) for r in jobs],
        "job_events": [list(r) for r in events],
        "offers": [list(r) for r in offers],
    }


def _load(clients: Clients, servers: dict[str, Process], sampler: RssSampler) -> float:
    """Book for SECONDS; returns when the load began."""
    load_start = time.time()
    clients.go.set()
    sampler.start()
    while time.time() < load_start + SECONDS:
        clients.poll(min(PROGRESS_EVERY_S, load_start + SECONDS - time.time()))
        dead = [name for name, s in servers.items() if not s.alive()]
        if dead:
            raise RuntimeError(f"server processes died: {', '.join(dead)}")
        latest = list(sampler.samples.items())
        rss = sum(v[-1][1] for k, v in latest if k.split("/")[0] in servers) / 2**20
        _progress(
            f"load {time.time() - load_start:4.0f} s: {clients.progress_line()};"
            f" servers' RSS {rss:.0f} MB"
        )
    return load_start


def soak(logs: Path) -> tuple[Observed, dict[str, Any]]:
    drivers = add_users("driver", DRIVERS)
    customers = add_users("customer", CUSTOMERS)
    _add_devices(drivers + customers)
    apns = APNsProcess(logs / "apns")
    servers: dict[str, Process] = {}
    clients: Clients | None = None
    try:
        servers, api_port, ws_port = _start_servers(logs, apns.environment())
        _progress("servers up; starting the apps")
        clients = Clients(logs, api_port, ws_port, drivers, customers)
        clients.start()
        sampler = RssSampler(
            {name: s.popen.pid for name, s in servers.items()}
            | {c.name: p.pid for c, p in zip(clients.controls, clients.children, strict=True)}
        )
        vacuum = Vacuum()
        if vacuum.needed():
            _progress(
                f"this server's autovacuum is off: the soak vacuums every {VACUUM_EVERY_S:.0f} s"
            )
            vacuum.start()
        load_start = _load(clients, servers, sampler)
        load_end = time.time()
        sampler.halt.set()
        vacuum.halt.set()
        _progress("load over; draining")
        drained_at = _drain()
        alive = {name: s.alive() for name, s in servers.items()}
        records = clients.finish()
        pushes = apns.stop()
        rows = _database_rows()
    except BaseException:
        for server in servers.values():
            sys.stderr.write(f"--- {server.name} log (end)\n{server.log()[-2000:]}\n")
        raise
    finally:
        if clients is not None:
            clients.kill()
        for server in reversed(list(servers.values())):
            server.stop()
        apns.kill()
    observed = Observed(
        drivers=records["drivers"],
        customers=records["customers"],
        pushes=pushes,
        cluster_of={d: n // PER_CLUSTER for n, d in enumerate(drivers)},
        user_of_token={device_token(u): u for u in drivers + customers},
        location_stale_s=settings.location_stale_s,
        load_start=load_start,
        drained_at=drained_at,
        **rows,
    )
    usage = rss_growth(sampler.samples, load_start + WARM_UP_S, load_end)
    rss = {
        "growth": {k: v for k, v in usage.items() if k.split("/")[0] in servers},
        "clients_cpu_pct": {
            k: v.get("cpu_pct") for k, v in usage.items() if k.split("/")[0] not in servers
        },
        "samples": {
            label: [
                [round(t - load_start, 1), round(r / 2**20, 1), round(c, 2)] for t, r, c in series
            ]
            for label, series in sampler.samples.items()
        },
        "alive": alive,
        "vacuum_passes_s": [round(seconds, 2) for seconds in vacuum.passes],
        "vacuum_failures": vacuum.failures,
    }
    return observed, rss


# --- the report --------------------------------------------------------------------------------


def _checks(
    observed: Observed, rss: dict[str, Any]
) -> tuple[list[tuple[str, bool, str]], dict[str, Any]]:
    offers = check_offers(observed)
    o, e, p = offers["counts"], check_events(observed), check_pushes(observed)
    latencies = [s for _, s in offers["latencies"]]
    errors = observed.drivers["http_errors"] + observed.customers["http_errors"]
    disconnects = observed.drivers["disconnects"] + observed.customers["disconnects"]
    not_ended = [j for j in observed.jobs if j[2] not in ("completed", "cancelled", "expired")]
    growth = rss["growth"]
    growths = {label: g.get("growth_pct", float("inf")) for label, g in growth.items()}
    worst = max(growths, key=lambda label: growths[label])
    booked, target = len(observed.customers["bookings"]), round(RATE_PER_S * SECONDS)
    rows: list[tuple[str, bool, str]] = [
        (
            "bookings kept up with the rate",
            booked >= BOOKED_AT_LEAST * target,
            f"{booked:,} of {target:,} booked",
        ),
        (
            "lost offers",
            o["lost"] + o["never_dispatched"] + o["unbooked"] == 0,
            f"{o['lost']} of {o['expected']:,} expected ({o['certainly_dispatchable']:,}"
            f" certainly dispatchable, {o['not_offered']} of them not offered;"
            f" {o['undelivered']} offers undelivered; {o['never_dispatched']} jobs never"
            f" dispatched)",
        ),
        (
            "offered once, never to a busy driver",
            o["duplicates"] + o["to_busy"] == 0,
            f"{o['duplicates']} duplicates, {o['to_busy']} to drivers on a job",
        ),
        (
            "lost events",
            e["lost"] == 0,
            f"{e['lost']}: job:status to customers {e['customer_status_lost']} of"
            f" {e['customer_status_expected']:,}, to drivers {e['driver_status_lost']} of"
            f" {e['driver_status_expected']:,}, last not final"
            f" {e['customer_status_stale'] + e['driver_status_stale']};"
            f" left the feeds {e['feed_lost']} of {e['feed_expected']:,}",
        ),
        (
            "lost pushes",
            p["lost"] + p["not_200"] == 0,
            f"{p['lost']} of {p['expected']:,} expected ({p['lost_offer_pushes']} offer pushes"
            f" of {p['offer_pushes_expected']:,}); {p['not_200']} answered other than 200",
        ),
        (
            f"RSS growth < {RSS_GROWTH_LIMIT:.0%} per process",
            all(g < RSS_GROWTH_LIMIT * 100 for g in growths.values()),
            f"worst {worst} {growths[worst]} %",
        ),
        ("HTTP answers as expected", not errors, f"{len(errors)} unexpected"),
        ("sockets stayed up", not disconnects, f"{len(disconnects)} dropped"),
        ("server processes alive", all(rss["alive"].values()), str(rss["alive"])),
        ("every job ended", not not_ended, f"{len(not_ended)} not ended of {len(observed.jobs):,}"),
    ]
    figures = {
        "offers": dict(o),
        "events": dict(e),
        "pushes": dict(p),
        "booking_to_offer": {
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
            "by_minute": latency_by_minute(
                offers["latencies"],
                [row[3] for row in observed.customers["bookings"]],
                observed.load_start,
            ),
        },
        "http_errors": errors[:20],
        "disconnects": disconnects[:20],
        "client_counts": _client_counts(observed),
    }
    return rows, figures


def _client_counts(observed: Observed) -> dict[str, int]:
    total: Counter[str] = Counter()
    for role in (observed.drivers, observed.customers):
        for counts in role.get("counts", []):
            total.update(counts)
    return dict(sorted(total.items()))


def _print(rows: list[tuple[str, bool, str]], figures: dict[str, Any], rss: dict[str, Any]) -> None:
    print(f"\nsoak: {SECONDS:.0f} s at {RATE_PER_S:g} jobs/s,", end=" ")
    print(f"{DRIVERS:,} drivers, {CUSTOMERS} customers")
    print(f"\n{'check':<44} {'':4} detail")
    for name, ok, detail in rows:
        print(f"{name:<44} {'PASS' if ok else 'FAIL':4} {detail}")
    print(f"\n{'process':<22} {'warm MB':>8} {'end MB':>8} {'growth':>8} {'CPU':>8}")
    for label, g in sorted(rss["growth"].items()):
        if "error" in g:
            print(f"{label:<22} {g['error']}")
        else:
            print(
                f"{label:<22} {g['warm_mb']:>8} {g['end_mb']:>8} {g['growth_pct']:>7} %"
                f" {g['cpu_pct']:>6} %"
            )
    clients = ", ".join(f"{k} {v} %" for k, v in sorted(rss["clients_cpu_pct"].items()))
    print(f"load generators' CPU: {clients}")
    latency = figures["booking_to_offer"]
    print(f"\nbooking to offer: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
    print(f"{'minute':>6} {'jobs':>6} {'offers':>8} {'p50 ms':>10} {'p99 ms':>10}")
    for m in latency["by_minute"]:
        print(
            f"{m['minute']:>6} {m['jobs']:>6,} {m['offers']:>8,}"
            f" {m['p50_ms'] or '-':>10} {m['p99_ms'] or '-':>10}"
        )


def main() -> int:
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    _progress(f"logs and records in {logs}")
    observed, rss = soak(logs)
    (logs / "observed.json").write_text(json.dumps(observed.to_json()))
    rows, figures = _checks(observed, rss)
    passed = all(ok for _, ok, _ in rows)
    report = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "seconds": SECONDS,
            "warm_up_s": WARM_UP_S,
            "rate_per_s": RATE_PER_S,
            "drivers": DRIVERS,
            "customers": CUSTOMERS,
            "vacuum_passes_s": rss["vacuum_passes_s"],  # empty: the server's autovacuum ran
            "vacuum_failures": rss["vacuum_failures"],
        },
        "passed": passed,
        "checks": [{"check": n, "passed": ok, "detail": d} for n, ok, d in rows],
        **figures,
        "rss": rss,
    }
    (HERE / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    _print(rows, figures, rss)
    print("\nwritten to bench/soak.json")
    if passed and os.environ.get("SOAK_KEEP") != "1":
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"logs and records kept in {logs}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
