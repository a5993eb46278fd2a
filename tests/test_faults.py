"""The fault suite: the real processes (gunicorn, Celery workers, the relay, Socket.IO gateways)
on a PostgreSQL cluster and Redis servers this module starts for itself, and the fake APNs,
with one of them failing while the apps go on using the service.

- Redis restarted (empty) under a steady load of new jobs: no job is lost, REST answers
  201 or a 503 in the contract's error shape, the sockets are told to reload their feed.
- PostgreSQL refusing connections: 503 `service_unavailable` at once, socket connects
  refused (not hung), and everything works again once it is back, with no restart.
- APNs down for a while: `job:new` is not held back; the pushes arrive once APNs is back.
- A gateway SIGKILLed: its client reconnects to the other one and reloads its feed.

The apps are emulated as the contract asks them to behave (`DriverApp`): the feed loaded by
GET /drivers/me/offers on start, after every reconnect and whenever the gateway says events
were missed, and `job:new` added to it as it comes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
import requests
import socketio

from fake_apns import Behaviour, FakeAPNs
from models.rooms import socketio_channel
from tests.factories import ORIGIN, PASSWORD, Account, Factory, HttpClient
from tests.private_postgres import PrivatePostgres
from tests.processes import (
    BIN,
    PrivateRedis,
    Process,
    start_gateway,
    start_relay,
    start_web,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.slow

API = "/api/v1"
TEMPLATE_DB = "dispatch_faults_template"
# A gateway that lost its Redis subscription says so: the socket missed events, and the
# app reloads its feed (as after a reconnect, which a closed socket would also cause).
FEED_RELOAD = "feed:reload"
OTHER_EVENTS = frozenset({"job:accepted", "job:removed", "job:status", "job:driver_location"})
REQUEST_TIMEOUT_S = 5.0  # an answer slower than this is a hang
PROMPT_S = 3.0  # what "at once" means for an answer during an outage
PICKUP = {"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}}
LOCATION = {"lat": ORIGIN[0], "lng": ORIGIN[1]}


# --- servers and processes of this module's own ---


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster for this module, with a template database migrated by
    `dispatch migrate`; each test gets a copy."""
    server = PrivatePostgres()
    try:
        server.init().start()
        url = server.create_database(TEMPLATE_DB)
        migrated = subprocess.run(
            [str(BIN / "dispatch"), "migrate"],
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_database(cluster: PrivatePostgres, request: pytest.FixtureRequest) -> str:
    if not cluster.running():
        cluster.start()  # a test that stopped it and failed
    name = f"faults_{request.node.name.removeprefix('test_')[:40]}"
    return cluster.create_database(name, TEMPLATE_DB)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


@pytest.fixture
def env(own_database: str, own_redis: PrivateRedis) -> dict[str, str]:
    """The environment of every process of a test: its own database and Redis, and a
    sweep that re-drives an event one second overdue."""
    return {"DATABASE_URL": own_database, "REDIS_URL": own_redis.url, "RELAY_AFTER_S": "1"}


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test started, all stopped at its end, side by side (gunicorn alone
    takes seconds to stop)."""
    started: list[Process] = []
    yield started
    if started:
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(Process.stop, started))


@dataclass
class Stack:
    api_url: str
    web: Process
    gateways: dict[str, tuple[Process, int]]


def start_stack(
    log_dir: Path,
    env: dict[str, str],
    processes: list[Process],
    *,
    worker_env: dict[str, str] | None = None,
    queues: tuple[str, ...] = ("dispatch", "push"),
    relay: bool = True,
    gateways: tuple[str, ...] = ("gateway",),
) -> Stack:
    """The web API, a Celery worker per queue (as `start_workers`), the relay and gateways, all
    started side by side; each one that started is in `processes`, even if another failed."""
    workers = {"dispatch": "worker", "push": "pushworker"}
    with ThreadPoolExecutor(8) as pool:
        web = pool.submit(start_web, log_dir, env)
        others = [
            pool.submit(start_worker, log_dir, worker_env or env, workers[queue], 1, queue)
            for queue in queues
        ]
        if relay:
            others.append(pool.submit(start_relay, log_dir, env))
        by_name = {name: pool.submit(start_gateway, log_dir, env, name) for name in gateways}
    started: list[Future[Any]] = [web, *others, *by_name.values()]
    for future in started:
        if future.exception() is None:
            result = future.result()
            processes.append(result[0] if isinstance(result, tuple) else result)
    for future in started:
        future.result()  # the first failure, if any
    web_process, port = web.result()
    return Stack(
        f"http://127.0.0.1:{port}",
        web_process,
        {name: future.result() for name, future in by_name.items()},
    )


@pytest.fixture
def pushing_stack(
    tmp_path: Path, env: dict[str, str], apns_env: dict[str, str], processes: list[Process]
) -> Stack:
    """The whole stack on the test's own stores, its workers pushing to the fake APNs."""
    return start_stack(tmp_path, env, processes, worker_env={**env, **apns_env})


@pytest.fixture
def apps() -> Iterator[list[DriverApp]]:
    opened: list[DriverApp] = []
    yield opened
    for app in opened:
        app.close()


def gateway_subscribed(redis_url: str) -> bool:
    """Whether a gateway listens on the socket channel (python-socketio subscribes once its
    first client has connected; what is published before reaches nobody)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        [(_, subscribers)] = client.pubsub_numsub(socketio_channel())
        return int(subscribers) >= 1
    except redis.RedisError:
        return False
    finally:
        client.close()


def fatal_lines(process: Process) -> str:
    """What a process that died said about it (its CRITICAL lines), or its last words."""
    log = process.log()
    fatal = [line for line in log.splitlines() if "CRITICAL" in line]
    return "\n".join(fatal) if fatal else log[-2000:]


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(url, connect_timeout=3)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def notified_offers(url: str) -> dict[int, set[int]]:
    """Each job's drivers whose offer went out (`job:new` published), every job listed."""
    rows = sql(
        url,
        "SELECT j.id, o.driver_id FROM jobs j LEFT JOIN offers o"
        " ON o.job_id = j.id AND o.notified_at IS NOT NULL",
    )
    offered: dict[int, set[int]] = {}
    for job_id, driver_id in rows:
        offered.setdefault(job_id, set())
        if driver_id is not None:
            offered[job_id].add(driver_id)
    return offered


# --- HTTP as a client with a deadline sees it ---


@dataclass(frozen=True)
class Reply:
    """One HTTP exchange: the status (None if it failed or timed out), body, and time."""

    at: float
    status: int | None
    body: Any
    content_type: str
    elapsed_s: float
    error: str | None = None


def call(session: requests.Session, method: str, url: str, **kwargs: Any) -> Reply:
    kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
    start = time.monotonic()
    try:
        response = session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        return Reply(start, None, None, "", time.monotonic() - start, repr(exc))
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = response.text
    return Reply(
        start,
        response.status_code,
        body,
        response.headers.get("Content-Type", ""),
        time.monotonic() - start,
    )


def assert_unavailable(reply: Reply) -> None:
    """A 503 in the contract's error shape, and nothing else."""
    assert reply.status == 503, reply
    assert reply.content_type.startswith("application/json"), reply
    assert list(reply.body) == ["error"], reply
    error = reply.body["error"]
    assert error["code"] == "service_unavailable", reply
    assert isinstance(error["message"], str) and error["message"].strip(), reply
    assert list(error) == ["code", "message"], reply


class Steady:
    """Calls `action` every `interval_s` on a thread of its own until `stop()`, keeping
    each result: the load that goes on while a server fails."""

    def __init__(self, action: Callable[[], list[Reply]], interval_s: float) -> None:
        self.replies: list[Reply] = []
        self._action = action
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            replies = self._action()
            with self._lock:
                self.replies.extend(replies)
            next_at = max(next_at + self._interval_s, time.monotonic())

    def between(self, start: float, end: float) -> list[Reply]:
        with self._lock:
            return [reply for reply in self.replies if start <= reply.at < end]

    def stop(self) -> list[Reply]:
        self._stopping.set()
        self._thread.join(REQUEST_TIMEOUT_S * 3)
        assert not self._thread.is_alive(), "the load did not stop"
        with self._lock:
            return list(self.replies)


# --- the driver app ---


class DriverApp:
    """A driver app on a real python-socketio client. It connects to the first of
    `gateways` that takes it (python-socketio has no list of URLs to reconnect to; the
    app has), loads its feed by GET /drivers/me/offers on start, after every reconnect and
    whenever the gateway sends `feed:reload`, and adds each `job:new` to it. Clearing
    `may_reconnect` holds a reconnect back, as an app's reconnection delay would."""

    def __init__(self, api_url: str, gateways: list[int], driver: Account) -> None:
        self.api_url = api_url
        self.gateways = gateways
        self.driver = driver
        self.pushed: set[int] = set()  # job ids that came as `job:new`
        self.loaded: set[int] = set()  # job ids that came in a reload
        self.signals: list[tuple[float, str]] = []  # (when, FEED_RELOAD or "disconnect")
        self.unknown: list[str] = []  # events outside the contract
        self.reloads: list[float] = []
        self.connects: list[tuple[float, int]] = []  # (when, gateway port)
        self.may_reconnect = threading.Event()
        self.may_reconnect.set()
        self._lock = threading.Lock()
        self._owed_reload = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._http = requests.Session()
        self.client = self._connect()
        assert self.client is not None, f"driver {driver.id} could not connect to {gateways}"
        assert self._reload(), "the feed did not load on start"
        self._thread = threading.Thread(target=self._run, name=f"app-{driver.id}", daemon=True)
        self._thread.start()

    @property
    def known(self) -> set[int]:
        with self._lock:
            return self.pushed | self.loaded

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def signals_after(self, moment: float) -> list[str]:
        with self._lock:
            return [what for at, what in self.signals if at >= moment]

    def reloads_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at in self.reloads if at >= moment)

    def _connect(self) -> socketio.Client | None:
        for port in self.gateways:
            client = socketio.Client(reconnection=False)
            client.on("job:new", self._job_new)
            client.on("*", self._other_event)
            client.on("disconnect", self._disconnected)
            try:
                client.connect(
                    f"http://127.0.0.1:{port}",
                    auth={"token": self.driver.token},
                    transports=["websocket"],
                    wait_timeout=REQUEST_TIMEOUT_S,
                )
            except socketio.exceptions.ConnectionError:
                continue
            with self._lock:
                self.connects.append((time.monotonic(), port))
            return client
        return None

    def _job_new(self, offer: dict[str, Any]) -> None:
        with self._lock:
            self.pushed.add(offer["job"]["id"])

    def _other_event(self, event: str, data: Any = None) -> None:
        if event == FEED_RELOAD:
            self._signal(event)
        elif event not in OTHER_EVENTS:
            with self._lock:
                self.unknown.append(event)

    def _disconnected(self, reason: Any = None) -> None:
        if not self._stopping.is_set():
            self._signal("disconnect")

    def _signal(self, what: str) -> None:
        with self._lock:
            self.signals.append((time.monotonic(), what))
        self._owed_reload.set()
        self._wake.set()

    def _reload(self) -> bool:
        reply = call(
            self._http, "GET", f"{self.api_url}{API}/drivers/me/offers", headers=self.driver.headers
        )
        if reply.status != 200:
            return False
        with self._lock:
            self.loaded.update(offer["job"]["id"] for offer in reply.body["offers"])
            self.reloads.append(time.monotonic())
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not self.connected:
                if not self.may_reconnect.is_set():
                    continue
                self.client = self._connect()
                if self.client is None:
                    continue
                self._owed_reload.set()
            if self._owed_reload.is_set() and self._reload():
                self._owed_reload.clear()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(REQUEST_TIMEOUT_S * 3)
        if self.client is not None and self.client.connected:
            self.client.disconnect()
        self._http.close()


def connect_refusal(port: int, token: str) -> tuple[list[Any], float, bool]:
    """A socket connect: (what `connect_error` brought, seconds taken, connected?)."""
    refusals: list[Any] = []
    client = socketio.Client(reconnection=False)
    client.on("connect_error", lambda data=None: refusals.append(data))
    start = time.monotonic()
    try:
        client.connect(
            f"http://127.0.0.1:{port}",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=10,
        )
    except socketio.exceptions.ConnectionError:
        pass
    connected = client.connected
    elapsed = time.monotonic() - start
    client.disconnect()
    return refusals, elapsed, connected


# --- the faults ---


def test_redis_restarted_under_load_loses_no_job_and_sockets_reload(
    pushing_stack: Stack,
    processes: list[Process],
    own_redis: PrivateRedis,
    own_database: str,
    fake_apns: FakeAPNs,
    apps: list[DriverApp],
) -> None:
    web, api_url = pushing_stack.web, pushing_stack.api_url
    gateway, gateway_port = pushing_stack.gateways["gateway"]
    http = HttpClient(api_url)
    factory = Factory(http)
    customer = factory.customer()
    drivers = [factory.driver() for _ in range(3)]
    # One phone that APNs answers slowly: the push worker is always in the middle of a
    # task (not acknowledged yet, as late acks go) when Redis goes away.
    fake_apns.behave(factory.device(drivers[0]), Behaviour(delay_s=1.5))
    http.close()
    apps.extend(DriverApp(api_url, [gateway_port], driver) for driver in drivers)
    wait_until(lambda: gateway_subscribed(own_redis.url), 10, "the gateway to subscribe")

    jobs_http, drivers_http = requests.Session(), requests.Session()

    def create_job() -> list[Reply]:
        url = f"{api_url}{API}/jobs"
        return [call(jobs_http, "POST", url, json=PICKUP, headers=customer.headers)]

    def report_positions() -> list[Reply]:
        url = f"{api_url}{API}/drivers/me/location"
        return [call(drivers_http, "PUT", url, json=LOCATION, headers=d.headers) for d in drivers]

    positions = Steady(report_positions, 0.25)  # what the driver apps do all day
    jobs = Steady(create_job, 0.25)
    try:
        wait_until(lambda: all(app.pushed for app in apps), 15, "job:new before the outage")
        outage_start = time.monotonic()
        own_redis.stop()
        time.sleep(4)  # the outage: the load goes on
        own_redis.start()  # empty: it keeps nothing on disk, as production's cache
        outage_end = time.monotonic()
        wait_until(lambda: len(jobs.between(outage_end, time.monotonic())) >= 8, 20, "load after")
    finally:
        job_replies = jobs.stop()
    try:
        for process in processes:
            assert process.alive(), f"{process.name} died with Redis: {fatal_lines(process)}"
        created = {r.body["id"] for r in job_replies if r.status == 201}
        in_outage = jobs.between(outage_start, outage_end)
        assert [r for r in in_outage if r.status == 201], f"none created in the outage: {in_outage}"

        # REST during the outage: 201 (no Redis needed) or a 503 in the error shape, at once.
        for reply in job_replies + positions.between(outage_start, outage_end):
            assert reply.error is None and reply.elapsed_s < PROMPT_S, reply
            assert reply.status in (201, 204, 503), reply
            if reply.status == 503:
                assert_unavailable(reply)
        assert "could not enqueue notify_nearby" in web.log()

        # No job lost: every job in the database (each one answered 201, none behind a 503)
        # is offered to every driver, `job:new` published; the sweep re-drove the outage's.
        def all_offered() -> bool:
            offered = notified_offers(own_database)
            return set(offered) == created and all(
                ids == {d.id for d in drivers} for ids in offered.values()
            )

        try:
            wait_until(all_offered, 60, "every job offered to every driver")
        except TimeoutError:
            lost = {j: ids for j, ids in notified_offers(own_database).items() if len(ids) < 3}
            pytest.fail(f"{len(lost)} of {len(created)} jobs lost (offered to): {lost}")
        unannounced = "SELECT count(*) FROM job_events WHERE announced_at IS NULL"
        assert sql(own_database, unannounced) == [(0,)]

        # Each socket was told it missed events, reloaded, and so knows every job.
        try:
            wait_until(lambda: all(created <= app.known for app in apps), 30, "complete feeds")
        except TimeoutError:
            pytest.fail(
                "; ".join(
                    f"driver {app.driver.id}'s app misses jobs {sorted(created - app.known)}, "
                    f"told to reload: {app.signals_after(outage_start)}"
                    for app in apps
                )
                + f"\n{gateway.log()[-2000:]}"
            )
        for app in apps:
            assert app.signals_after(outage_start), (
                f"the gateway never told driver {app.driver.id}'s socket to reload"
                f"\n{gateway.log()[-2000:]}"
            )
            assert app.reloads_after(outage_start) >= 1
            assert app.unknown == []
            assert app.connected
    finally:
        positions.stop()
        jobs_http.close()
        drivers_http.close()


def test_postgres_refusing_connections_is_a_prompt_503_and_recovers_without_restarts(
    tmp_path: Path,
    env: dict[str, str],
    cluster: PrivatePostgres,
    processes: list[Process],
) -> None:
    stack = start_stack(tmp_path, env, processes, queues=(), relay=False)
    web, api_url = stack.web, stack.api_url
    gateway, gateway_port = stack.gateways["gateway"]
    http = HttpClient(api_url)
    factory = Factory(http)
    customer, driver = factory.customer(), factory.driver()
    http.close()
    session = requests.Session()
    login = {"email": customer.email, "password": PASSWORD}

    def rest_calls() -> list[Reply]:
        """What the apps keep doing: each needs the database."""
        return [
            call(session, "GET", f"{api_url}{API}/jobs", headers=customer.headers),
            call(session, "POST", f"{api_url}{API}/jobs", json=PICKUP, headers=customer.headers),
            call(session, "GET", f"{api_url}{API}/drivers/me/offers", headers=driver.headers),
            call(session, "POST", f"{api_url}{API}/auth/login", json=login),
        ]

    try:
        assert [r.status for r in rest_calls()] == [200, 201, 200, 200]
        refusals, _, connected = connect_refusal(gateway_port, driver.token)
        assert connected and refusals == []
        jobs_before = sql(env["DATABASE_URL"], "SELECT id FROM jobs")

        cluster.stop()
        for _ in range(3):  # several rounds: each gunicorn worker and pooled connection
            for reply in rest_calls():
                assert reply.error is None, reply
                assert reply.elapsed_s < PROMPT_S, reply
                assert_unavailable(reply)

        refusals, elapsed, connected = connect_refusal(gateway_port, driver.token)
        assert not connected
        assert elapsed < PROMPT_S, (
            f"the socket connect hung {elapsed:.1f}s\n{gateway.log()[-2000:]}"
        )
        assert len(refusals) == 1, f"no connect_error: {refusals}\n{gateway.log()[-2000:]}"
        [refusal] = refusals
        message = refusal.get("message", "") if isinstance(refusal, dict) else str(refusal)
        assert message.strip(), refusal
        # A database outage is not the user's fault: an app told "unauthorized" signs out.
        assert not message.startswith("unauthorized"), refusal
    finally:
        if not cluster.running():
            cluster.start()

    def answers_again() -> bool:
        return call(session, "GET", f"{api_url}{API}/jobs", headers=customer.headers).status == 200

    try:
        wait_until(answers_again, 20, "the API to answer again once PostgreSQL is back")
        assert [r.status for r in rest_calls()] == [200, 201, 200, 200]
        refusals, _, connected = connect_refusal(gateway_port, driver.token)
        assert connected and refusals == []
        # Nothing written while it was down beyond what was answered 201 before and after.
        jobs_after = sql(env["DATABASE_URL"], "SELECT id FROM jobs")
        assert len(jobs_after) == len(jobs_before) + 1
        assert web.alive() and gateway.alive(), "a process died instead of recovering"
    finally:
        session.close()


def test_apns_down_for_a_while_delays_no_job_new_and_pushes_arrive_after(
    pushing_stack: Stack, env: dict[str, str], fake_apns: FakeAPNs, apps: list[DriverApp]
) -> None:
    api_url = pushing_stack.api_url
    gateway_port = pushing_stack.gateways["gateway"][1]
    database = env["DATABASE_URL"]
    http = HttpClient(api_url)
    factory = Factory(http)
    customer = factory.customer()
    drivers = [factory.driver() for _ in range(2)]
    phones = {driver.id: factory.device(driver) for driver in drivers}
    apps.extend(DriverApp(api_url, [gateway_port], driver) for driver in drivers)
    wait_until(lambda: gateway_subscribed(env["REDIS_URL"]), 10, "the gateway to subscribe")

    try:
        fake_apns.down()
        job_ids = [factory.job(customer)["id"] for _ in range(3)]
        # Not held back by the pushes that fail meanwhile: at once, while APNs is down.
        wait_until(lambda: all(set(job_ids) <= app.pushed for app in apps), PROMPT_S, "job:new")
        assert fake_apns.received() == []

        def failed_twice() -> bool:
            rows = sql(
                database,
                "SELECT count(*) FROM job_events WHERE type = 'offered' AND push_attempts >= 2",
            )
            return rows == [(len(job_ids),)]

        wait_until(failed_twice, 30, "each offer's push to fail twice while APNs is down")
        assert fake_apns.received() == []
    finally:
        fake_apns.up()
        http.close()

    def delivered() -> dict[tuple[str, int], int]:
        counts: dict[tuple[str, int], int] = {}
        for push in fake_apns.received():
            if push.status == 200:
                key = (push.token, push.payload.get("job_id", 0))
                counts[key] = counts.get(key, 0) + 1
        return counts

    owed = {(phone, job_id) for phone in phones.values() for job_id in job_ids}
    wait_until(lambda: owed <= set(delivered()), 45, "every offer's push once APNs is back")
    assert delivered() == dict.fromkeys(owed, 1), "a push delivered twice"
    for push in fake_apns.received():
        assert push.payload["type"] == "job:new"
        assert push.headers["apns-collapse-id"] == f"job-{push.payload['job_id']}"
    wait_until(
        lambda: (
            sql(database, "SELECT count(*) FROM job_events WHERE push_due_at IS NOT NULL") == [(0,)]
        ),
        10,
        "no push owed",
    )


def test_a_killed_gateway_s_clients_reconnect_to_the_other_and_reload(
    tmp_path: Path,
    env: dict[str, str],
    own_redis: PrivateRedis,
    own_database: str,
    processes: list[Process],
    apps: list[DriverApp],
) -> None:
    stack = start_stack(
        tmp_path, env, processes, queues=("dispatch",), relay=False, gateways=("doomed", "other")
    )
    api_url = stack.api_url
    doomed, doomed_port = stack.gateways["doomed"]
    other_port = stack.gateways["other"][1]
    http = HttpClient(api_url)
    factory = Factory(http)
    customer, driver = factory.customer(), factory.driver()
    app = DriverApp(api_url, [doomed_port, other_port], driver)
    apps.append(app)
    try:
        assert app.connects[-1][1] == doomed_port
        wait_until(lambda: gateway_subscribed(own_redis.url), 10, "the gateway to subscribe")
        first = factory.job(customer)["id"]
        wait_until(lambda: first in app.pushed, 10, "job:new through the first gateway")

        app.may_reconnect.clear()  # the app's reconnection delay
        os.killpg(doomed.popen.pid, signal.SIGKILL)
        doomed.popen.wait(10)
        wait_until(lambda: not app.connected, 10, "the client to notice the gateway died")
        missed = factory.job(customer)["id"]  # offered while the driver is not connected
        wait_until(lambda: notified_offers(own_database).get(missed) == {driver.id}, 15, "offer")
        killed_at = time.monotonic()
        app.may_reconnect.set()

        wait_until(lambda: app.connected and app.reloads_after(killed_at) >= 1, 15, "a reload")
        assert app.connects[-1][1] == other_port
        assert missed in app.loaded and missed not in app.pushed
        wait_until(lambda: gateway_subscribed(own_redis.url), 10, "the other to subscribe")
        later = factory.job(customer)["id"]
        wait_until(lambda: later in app.pushed, 10, "job:new through the other gateway")
        assert app.known >= {first, missed, later}
    finally:
        http.close()
