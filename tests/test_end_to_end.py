"""The whole product through its real processes, as its users meet it: gunicorn, two
Socket.IO gateways, Celery workers, the relay, PostgreSQL, Redis and the fake APNs; drivers
connected with the python-socketio client and, for one, the official JavaScript client."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from fake_apns import FakeAPNs
from settings import PROJECT_ROOT
from tests.factories import ORIGIN, Account, Factory, HttpClient, north_of
from tests.processes import (
    Process,
    start_gateway,
    start_relay,
    start_web,
    start_workers,
    wait_until,
)
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import emit

pytestmark = pytest.mark.slow

JS_DRIVER = PROJECT_ROOT / "tests" / "js" / "driver.mjs"
# The driver's steps from accept to the end, and the status each leads to.
JOURNEY = (
    ("accept", "accepted"),
    ("arrive", "arrived"),
    ("start", "in_progress"),
    ("complete", "completed"),
)


@dataclass
class Stack:
    http: HttpClient
    gateways: list[int]
    processes: list[Process]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack")
    processes: list[Process] = []
    try:
        web, api_port = start_web(logs)
        processes.append(web)
        gateways = []
        for name in ("gateway-a", "gateway-b"):
            gateway, port = start_gateway(logs, name=name)
            processes.append(gateway)
            gateways.append(port)
        processes.extend(start_workers(logs, env=apns_env))
        processes.append(start_relay(logs))
        http = HttpClient(f"http://127.0.0.1:{api_port}")
        yield Stack(http, gateways, processes)
        http.close()
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture
def http_factory(stack: Stack) -> Factory:
    return Factory(stack.http)


@pytest.fixture
def connect(stack: Stack) -> Iterator[Callable[..., Listener]]:
    """Opens a listener for an account on gateway 0 or another."""
    listeners = Listeners()
    gateways = stack.gateways
    yield lambda account, gateway=0: listeners.open(
        gateways[gateway % len(gateways)], account.token
    )
    listeners.close()


def test_a_job_goes_from_customer_to_one_driver(
    stack: Stack, http_factory: Factory, connect, fake_apns: FakeAPNs
) -> None:
    factory, http = http_factory, stack.http
    customer = factory.customer(name="Ana")
    near = [factory.driver(at=north_of(ORIGIN, km), name=f"Near {km}") for km in (1, 5, 25)]
    far = factory.driver(at=north_of(ORIGIN, 40))
    offline = factory.driver(online=False)
    phones = {d.id: factory.device(d) for d in [*near, far, offline]}
    customer_phone = factory.device(customer)
    feeds = {d.id: connect(d, gateway=i) for i, d in enumerate([*near, far, offline])}
    customer_feed = connect(customer, gateway=1)
    # Each gateway subscribes to Redis once its first client connects; wait for both.
    for listener in feeds.values():
        wait_until(lambda listener=listener: listener.client.connected, 10, "connected")

    created = http.post(
        "/api/v1/jobs",
        json={"pickup": {"lat": ORIGIN[0], "lng": ORIGIN[1]}},
        headers=customer.headers,
    )
    assert created.status_code == 201
    job_id = created.json["id"]

    for driver, km in zip(near, (1, 5, 25), strict=True):
        [offer] = feeds[driver.id].wait_for("job:new")
        assert offer["job"]["id"] == job_id
        assert offer["distance_km"] == pytest.approx(km, abs=0.05)
        wait_until(lambda d=driver: fake_apns.received(phones[d.id]), 15, "the offer push")
    assert feeds[far.id].events == [] and feeds[offline.id].events == []
    assert fake_apns.received(phones[far.id]) == [] == fake_apns.received(phones[offline.id])

    start = threading.Barrier(len(near))

    def accept(driver: Account) -> int:
        client = HttpClient(stack.http.base_url)
        start.wait(timeout=10)
        try:
            return client.post(f"/api/v1/jobs/{job_id}/accept", headers=driver.headers).status_code
        finally:
            client.close()

    with ThreadPoolExecutor(len(near)) as pool:
        statuses = dict(zip([d.id for d in near], pool.map(accept, near), strict=True))
    assert sorted(statuses.values()) == [200, 409, 409]
    winner = next(d for d in near if statuses[d.id] == 200)

    for driver in near:
        [accepted] = feeds[driver.id].wait_for("job:accepted")
        assert accepted["job_id"] == job_id
    [status] = customer_feed.wait_for("job:status")
    assert status["status"] == "accepted" and status["driver"] == {
        "id": winner.id,
        "name": winner.name,
    }
    assert feeds[winner.id].wait_for("job:status")[0]["id"] == job_id
    wait_until(lambda: fake_apns.received(customer_phone), 15, "the customer's push")
    [push] = fake_apns.received(customer_phone)
    assert push.payload["aps"]["alert"]["title"] == "Driver on the way"
    assert push.payload["aps"]["alert"]["body"] == f"{winner.name} accepted your job."
    assert (push.payload["type"], push.payload["job_id"]) == ("job:accepted", job_id)

    feed = http.get("/api/v1/drivers/me/offers", headers=near[0].headers)
    assert feed.json == {"offers": []}  # the job left every feed


def test_a_cancelled_job_is_removed_from_every_feed(
    stack: Stack, http_factory: Factory, connect
) -> None:
    customer = http_factory.customer()
    drivers = [http_factory.driver(), http_factory.driver()]
    feeds = [connect(d, gateway=i) for i, d in enumerate(drivers)]
    job = http_factory.job(customer)
    for feed in feeds:
        feed.wait_for("job:new")
    cancelled = stack.http.post(f"/api/v1/jobs/{job['id']}/cancel", headers=customer.headers)
    assert cancelled.status_code == 200
    for feed in feeds:
        assert feed.wait_for("job:removed") == [{"job_id": job["id"], "reason": "cancelled"}]


def _listening(listener: Listener, room: str) -> None:
    """Wait until the listener's gateway relays emits to it (it subscribes to Redis only
    once its first client connects)."""
    emit_until_seen(lambda: emit("ping:test", {}, [room]), listener, "ping:test")


def test_a_job_is_carried_to_its_end_and_its_driver_takes_the_next(
    stack: Stack, http_factory: Factory, connect, fake_apns: FakeAPNs
) -> None:
    factory, http = http_factory, stack.http
    customer = factory.customer(name="Ines")
    driver = factory.driver(name="Rui")
    customer_phone = factory.device(customer)
    driver_feed = connect(driver, gateway=0)
    customer_feed = connect(customer, gateway=1)
    _listening(driver_feed, f"driver:{driver.id}")
    _listening(customer_feed, f"customer:{customer.id}")
    dropoff = north_of(ORIGIN, 3)
    job = factory.job(customer, dropoff={"lat": dropoff[0], "lng": dropoff[1]})
    [offer] = driver_feed.wait_for("job:new")
    assert offer["job"]["id"] == job["id"]

    for n, (step, status) in enumerate(JOURNEY, 1):
        answer = http.post(f"/api/v1/jobs/{job['id']}/{step}", headers=driver.headers)
        assert answer.status_code == 200 and answer.json["status"] == status, answer.json
        for feed in (customer_feed, driver_feed):
            latest = feed.wait_for("job:status", count=n)[-1]
            assert (latest["id"], latest["status"]) == (job["id"], status)
            assert latest["driver"] == {"id": driver.id, "name": "Rui"}
    statuses = [status for _, status in JOURNEY]
    for feed in (customer_feed, driver_feed):
        assert [s["status"] for s in feed.got("job:status")] == statuses
    [done] = customer_feed.got("job:status")[-1:]
    assert done["completed_at"] is not None and done["driver_location"] is None
    assert customer_feed.got("job:new") == [] and driver_feed.got("job:removed") == []
    wait_until(lambda: len(fake_apns.received(customer_phone)) == 3, 15, "the customer's pushes")
    titles = [p.payload["aps"]["alert"]["title"] for p in fake_apns.received(customer_phone)]
    assert titles == ["Driver on the way", "Your driver is here", "Job complete"]
    me = http.get("/api/v1/drivers/me", headers=driver.headers)
    assert me.status_code == 200 and me.json["current_job"] is None

    second = factory.job(customer)
    offers = driver_feed.wait_for("job:new", count=2)
    assert [o["job"]["id"] for o in offers] == [job["id"], second["id"]]
    taken = http.post(f"/api/v1/jobs/{second['id']}/accept", headers=driver.headers)
    assert taken.status_code == 200 and taken.json["driver"] == {"id": driver.id, "name": "Rui"}
    latest = customer_feed.wait_for("job:status", count=len(JOURNEY) + 1)[-1]
    assert (latest["id"], latest["status"]) == (second["id"], "accepted")
    assert driver_feed.wait_for("job:accepted", count=2)[-1]["job_id"] == second["id"]


def test_the_official_javascript_client_speaks_to_the_gateway(
    stack: Stack, http_factory: Factory
) -> None:
    customer = http_factory.customer()
    driver = http_factory.driver(at=None)
    node = subprocess.Popen(
        [
            "node",
            str(JS_DRIVER),
            f"http://127.0.0.1:{stack.gateways[1]}",
            driver.token,
            str(ORIGIN[0]),
            str(ORIGIN[1]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    lines: list[dict] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in node.stdout), daemon=True
    )
    reader.start()
    try:
        wait_until(lambda: any(r["kind"] == "ack" for r in lines), 15, "the location ack")
        assert {"kind": "ack", "event": "driver:location", "data": {"ok": True}} in lines
        job = http_factory.job(customer)
        wait_until(lambda: any(r.get("event") == "job:new" for r in lines), 15, "job:new")
        [offer] = [r["data"] for r in lines if r.get("event") == "job:new"]
        assert offer["job"]["id"] == job["id"] and offer["distance_km"] == 0
    finally:
        node.stdin.close()
        node.wait(10)
        reader.join(5)
        node.stdout.close()


def test_the_javascript_client_is_refused_without_a_valid_token(stack: Stack) -> None:
    done = subprocess.run(
        ["node", str(JS_DRIVER), f"http://127.0.0.1:{stack.gateways[0]}", "not-a-token"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["kind"] == "connect_error"
    assert record["message"].startswith("unauthorized")
