"""The soak's clients: driver apps and customer apps, a few hundred per process.

Each app is what the real one does, over the real interfaces: a Socket.IO connection
(bench.location's raw Engine.IO 4 / Socket.IO 5 client over `websockets`) and REST calls
(httpx). Every socket event's arrival is recorded with `time.time()` on receipt.

- A driver goes online (PUT /drivers/me/availability), reports its position over the socket
  (`driver:location`, acknowledged, one outstanding) every LOCATION_EVERY_S ±10 %, and on a
  `job:new` while free takes it with the chance ACCEPT_CHANCE after a think of THINK_S,
  if the job is still in its feed (no `job:accepted` / `job:removed` came meanwhile); it
  then takes an accepted job through arrive, start and complete, free again after.
- A customer books (POST /jobs with an Idempotency-Key, so a retry after a dropped
  connection books nothing twice), follows its jobs (`job:status`, `job:driver_location`),
  and cancels one it still sees pending CANCEL_AFTER_S after booking.

The parent process sets `go` (customers start booking, for `seconds`) and `stop`; each
process then writes its records (plain lists, JSON) to its file and says "done"."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.location import BASE_LAT, HANDSHAKES_IN_FLIGHT, Arrival, Socket

CLUSTERS = 50
PER_CLUSTER = 20  # drivers 1 km apart around each centre; centres 1° (88 km) apart
LOCATION_EVERY_S = 5.0
ACCEPT_CHANCE = 0.2
THINK_S = (1.0, 3.0)
TO_PICKUP_S = (2.0, 4.0)
AT_PICKUP_S = (1.0, 2.0)
RIDE_S = (3.0, 5.0)
CANCEL_AFTER_S = 20.0
REST_TIMEOUT_S = 30.0
REST_ATTEMPTS = 3  # a connection gunicorn closed as idle just as a request went out
REST_CONNECTIONS = 32
PROGRESS_EVERY_S = 30.0
FINISH_WAIT_S = 20.0
DISPATCH_EVERY_S = 0.02


def cluster_center(cluster: int) -> tuple[float, float]:
    return BASE_LAT, -20.0 + cluster * 1.0


def pickup_of(cluster: int) -> dict[str, float]:
    lat, lng = cluster_center(cluster)
    return {"lat": lat + 0.01, "lng": lng}


def dropoff_of(cluster: int) -> dict[str, float]:
    lat, lng = cluster_center(cluster)
    return {"lat": lat + 0.03, "lng": lng + 0.02}


@dataclass
class Member:
    """One app: its user, bearer token, and (a driver) its cluster."""

    user_id: int
    token: str
    cluster: int = 0


@dataclass
class Control:
    """What the parent process shares with a client process."""

    api_url: str
    ws_url: str
    members_file: str
    records_file: str
    name: str
    go: Any  # multiprocessing Event: customers start booking
    stop: Any  # multiprocessing Event: everyone stops
    out: Any  # multiprocessing Queue: ("ready" | "progress" | "done" | "failed", name, value)
    seconds: float = 0.0
    rate_per_s: float = 0.0
    index: int = 0  # a customer process books jobs index, index + processes, …
    processes: int = 1


class _App:
    """What driver and customer processes share: sockets, REST, records, progress."""

    def __init__(self, control: Control, members: Sequence[Member], role: str) -> None:
        self.control = control
        self.arrivals: list[Arrival] = []
        self.members = {m.user_id: m for m in members}
        self.sockets = {
            m.user_id: Socket(
                (role, m.user_id, m.token, cluster_center(m.cluster)[1]), self.arrivals
            )
            for m in members
        }
        self.http = httpx.AsyncClient(
            base_url=control.api_url + "/api/v1",
            timeout=REST_TIMEOUT_S,
            limits=httpx.Limits(
                max_connections=REST_CONNECTIONS, max_keepalive_connections=REST_CONNECTIONS
            ),
        )
        self.counts: Counter[str] = Counter()
        self.records: dict[str, list[Any]] = {"events": [], "http_errors": [], "disconnects": []}
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(
        self, method: str, path: str, user_id: int, expected: Sequence[int], **kwargs: Any
    ) -> tuple[int, Any]:
        """One REST call, again on a transport error; an answer not in `expected` is
        recorded as an error. Returns the status (0: no answer) and the JSON body."""
        headers = {"Authorization": f"Bearer {self.members[user_id].token}"}
        headers.update(kwargs.pop("headers", {}))
        for _ in range(REST_ATTEMPTS):
            try:
                answer = await self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                self.counts["transport_errors"] += 1
                failure = repr(exc)
                continue
            body = answer.json() if answer.content else None
            if answer.status_code not in expected:
                self.records["http_errors"].append(
                    [method, path, answer.status_code, answer.text[:300], time.time()]
                )
            return answer.status_code, body
        self.records["http_errors"].append([method, path, 0, failure, time.time()])
        return 0, None

    async def bounded(self, calls: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> None:
        gate = asyncio.Semaphore(limit)

        async def one(call: Callable[[], Awaitable[Any]]) -> None:
            async with gate:
                await call()

        await asyncio.gather(*(one(c) for c in calls))

    async def connect_all(self) -> None:
        gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

        async def connect(sock: Socket) -> None:
            async with gate:
                await sock.connect(self.control.ws_url)
            self.spawn(self.listen(sock))

        await asyncio.gather(*(connect(s) for s in self.sockets.values()))

    async def listen(self, sock: Socket) -> None:
        try:
            await sock.read()
            why = "closed"
        except (OSError, websockets.WebSocketException) as exc:
            why = repr(exc)
        if not self.stopping:
            self.records["disconnects"].append([sock.user_id, time.time(), why])

    def on_event(self, user_id: int, event: str, payload: Any, at: float) -> None:
        raise NotImplementedError

    async def dispatch_arrivals(self) -> None:
        """Hand each received event to `on_event` (its arrival time was taken on receipt)."""
        while not self.stopping:
            if self.arrivals:
                batch = self.arrivals[:]
                del self.arrivals[: len(batch)]
                for user_id, message, at in batch:
                    event, payload = json.loads(message[2:])[:2]
                    self.on_event(user_id, event, payload, at)
            await asyncio.sleep(DISPATCH_EVERY_S)

    async def report_progress(self) -> None:
        while not self.stopping:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self.control.out.put(("progress", self.control.name, dict(self.counts)))

    async def wait_for(self, flag: Any) -> None:
        while not flag.is_set():
            await asyncio.sleep(0.1)

    async def finish(self) -> None:
        await self.wait_for(self.control.stop)
        await asyncio.sleep(DISPATCH_EVERY_S * 5)  # the last arrivals handed on
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()
        # Bounded: a task or a close stuck on a socket the server stopped reading must not
        # keep the records from the checks (it is counted instead).
        not_stopped = await _within(FINISH_WAIT_S, list(self.tasks))
        not_closed = await _within(
            FINISH_WAIT_S, [s.ws.close() for s in self.sockets.values() if s.ws is not None]
        )
        await _within(FINISH_WAIT_S, [self.http.aclose()])
        if not_stopped or not_closed:
            self.counts["not_stopped"] += not_stopped + not_closed
        self.records["counts"] = [dict(self.counts)]
        Path(self.control.records_file).write_text(json.dumps(self.records))


async def _within(timeout_s: float, work: Sequence[Awaitable[Any]]) -> int:
    """Wait at most `timeout_s` for all of `work`; how many did not end (each is cancelled)."""
    if not work:
        return 0
    tasks = [asyncio.ensure_future(w) for w in work]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    return len(pending)


@dataclass
class _Driver:
    member: Member
    busy: bool = False  # thinking about an offer, or on a job
    feed: set[int] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)


class DriverApps(_App):
    """Records: `events` [event, driver, job, detail, at] (detail: the status of a
    `job:status`, the reason of a `job:removed`); `reports` [driver, sent, acked] of every
    acknowledged report; `attempts` [driver, job, sent, answered, status] of every accept;
    `trips` [driver, job, accept sent, accept answered, last step, its sent, its answered,
    its status] of every job won (the last step: `complete`, or the one refused with 409)."""

    def __init__(self, control: Control, members: Sequence[Member]) -> None:
        super().__init__(control, members, "driver")
        self.drivers = {m.user_id: _Driver(m, rng=random.Random(m.user_id)) for m in members}
        for name in ("reports", "attempts", "trips"):
            self.records[name] = []

    async def run(self) -> None:
        await self.bounded([partial(self.go_online, d) for d in self.drivers], REST_CONNECTIONS)
        await self.connect_all()
        self.spawn(self.dispatch_arrivals())
        await asyncio.gather(*(self.report(d) for d in self.drivers))  # one each, acked
        for driver in self.drivers.values():
            self.spawn(self.keep_reporting(driver))
        self.spawn(self.report_progress())
        self.control.out.put(("ready", self.control.name, len(self.drivers)))
        await self.finish()

    async def go_online(self, driver_id: int) -> None:
        await self.call("PUT", "/drivers/me/availability", driver_id, (200,), json={"online": True})

    async def report(self, driver_id: int) -> None:
        user_id, _, sent, acked, ok = await self.sockets[driver_id].report()
        if ok and acked is not None:
            self.records["reports"].append([user_id, sent, acked])
            self.counts["reports"] += 1
        else:
            self.counts["reports_failed"] += 1

    async def keep_reporting(self, driver: _Driver) -> None:
        next_at = time.time() + driver.rng.uniform(0, LOCATION_EVERY_S)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            await self.report(driver.member.user_id)
            jitter = driver.rng.uniform(0.9, 1.1)
            next_at = max(next_at + LOCATION_EVERY_S * jitter, time.time())

    def on_event(self, user_id: int, event: str, payload: Any, at: float) -> None:
        driver = self.drivers[user_id]
        if event == "job:new":
            job_id, detail = payload["job"]["id"], None
            driver.feed.add(job_id)
            if not driver.busy and driver.rng.random() < ACCEPT_CHANCE:
                driver.busy = True
                self.spawn(self.consider(driver, job_id))
        elif event in ("job:accepted", "job:removed"):
            job_id, detail = payload["job_id"], payload.get("reason")
            driver.feed.discard(job_id)
        elif event == "job:status":
            job_id, detail = payload["id"], payload["status"]
        else:
            return
        self.counts[event] += 1
        self.records["events"].append([event, user_id, job_id, detail, at])

    async def consider(self, driver: _Driver, job_id: int) -> None:
        driver_id = driver.member.user_id
        try:
            await asyncio.sleep(driver.rng.uniform(*THINK_S))
            if job_id not in driver.feed:
                return
            sent = time.time()
            status, _ = await self.call("POST", f"/jobs/{job_id}/accept", driver_id, (200, 409))
            answered = time.time()
            self.records["attempts"].append([driver_id, job_id, sent, answered, status])
            self.counts[f"accept_{status}"] += 1
            if status == 200:
                await self.take(driver, job_id, sent, answered)
        finally:
            driver.busy = False

    async def take(self, driver: _Driver, job_id: int, accept_sent: float, accepted: float) -> None:
        """Arrive, start and complete, each after its while; a 409 (the customer cancelled)
        ends the job there."""
        driver_id = driver.member.user_id
        for step, wait in (("arrive", TO_PICKUP_S), ("start", AT_PICKUP_S), ("complete", RIDE_S)):
            await asyncio.sleep(driver.rng.uniform(*wait))
            sent = time.time()
            status, _ = await self.call("POST", f"/jobs/{job_id}/{step}", driver_id, (200, 409))
            answered = time.time()
            self.counts[f"{step}_{status}"] += 1
            if status != 200 or step == "complete":
                self.records["trips"].append(
                    [driver_id, job_id, accept_sent, accepted, step, sent, answered, status]
                )
                return


class CustomerApps(_App):
    """Records: `bookings` [job, customer, cluster, sent, answered]; `events` [event,
    customer, job, detail, at] (detail: the status of a `job:status`); `cancels` [customer,
    job, sent, answered, status]."""

    def __init__(self, control: Control, members: Sequence[Member]) -> None:
        super().__init__(control, members, "customer")
        self.customers = [m.user_id for m in members]
        self.seen_status: dict[int, str] = {}
        for name in ("bookings", "cancels"):
            self.records[name] = []

    async def run(self) -> None:
        await self.connect_all()
        self.spawn(self.dispatch_arrivals())
        self.spawn(self.report_progress())
        self.control.out.put(("ready", self.control.name, len(self.customers)))
        await self.wait_for(self.control.go)
        self.spawn(self.book_for(self.control.seconds))
        await self.finish()

    async def book_for(self, seconds: float) -> None:
        """Open loop: job n at begin + n / rate, whether earlier bookings were answered or not."""
        control = self.control
        begin, n = time.time(), control.index
        while (due := begin + n / control.rate_per_s) < begin + seconds:
            await asyncio.sleep(max(0.0, due - time.time()))
            customer = self.customers[(n // control.processes) % len(self.customers)]
            self.spawn(self.book(n, customer, n % CLUSTERS))
            n += control.processes

    async def book(self, n: int, customer: int, cluster: int) -> None:
        body = {"pickup": pickup_of(cluster), "dropoff": dropoff_of(cluster)}
        sent = time.time()
        status, job = await self.call(
            "POST",
            "/jobs",
            customer,
            (200, 201),
            json=body,
            headers={"Idempotency-Key": f"soak-{n}"},
        )
        answered = time.time()
        self.counts[f"book_{status}"] += 1
        if status not in (200, 201):
            return
        self.records["bookings"].append([job["id"], customer, cluster, sent, answered])
        await asyncio.sleep(max(0.0, sent + CANCEL_AFTER_S - time.time()))
        if self.seen_status.get(job["id"], "pending") == "pending":
            await self.cancel(customer, job["id"])

    async def cancel(self, customer: int, job_id: int) -> None:
        sent = time.time()
        status, _ = await self.call(
            "POST", f"/jobs/{job_id}/cancel", customer, (200, 409), json={"reason": "waited"}
        )
        self.records["cancels"].append([customer, job_id, sent, time.time(), status])
        self.counts[f"cancel_{status}"] += 1

    def on_event(self, user_id: int, event: str, payload: Any, at: float) -> None:
        if event == "job:status":
            job_id, detail = payload["id"], payload["status"]
            self.seen_status[job_id] = detail
        elif event == "job:driver_location":
            job_id, detail = payload["job_id"], None
        else:
            return
        self.counts[event] += 1
        self.records["events"].append([event, user_id, job_id, detail, at])


def _members(path: str) -> list[Member]:
    return [Member(*row) for row in json.loads(Path(path).read_text())]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _run(app: DriverApps | CustomerApps) -> None:
    try:
        await app.run()
    except (OSError, RuntimeError, websockets.WebSocketException, httpx.HTTPError) as exc:
        app.control.out.put(("failed", app.control.name, repr(exc)))
        raise
    app.control.out.put(("done", app.control.name, None))


def run_drivers(control: Control) -> None:
    """Process entry point: a share of the driver apps."""
    _raise_fd_limit()
    asyncio.run(_run(DriverApps(control, _members(control.members_file))))


def run_customers(control: Control) -> None:
    """Process entry point: a share of the customer apps, booking their share of the rate."""
    _raise_fd_limit()
    asyncio.run(_run(CustomerApps(control, _members(control.members_file))))
