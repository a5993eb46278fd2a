"""The Socket.IO gateway as separate uvicorn processes, driven by the python-socketio client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from models.db import redis_connection
from models.positions import drivers_near
from models.rooms import socketio_channel
from settings import settings
from tests.factories import ORIGIN, Factory
from tests.processes import PrivateRedis, Process, start_gateway, wait_until
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import PublishingRedisManager, emit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, int]]:
    process, port = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield process, port
    process.stop()


@pytest.fixture
def listen(gateway: tuple[Process, int]) -> Iterator[Callable[..., Listener]]:
    """Opens a listener for an account on this module's gateway, or on `port`."""
    listeners = Listeners()
    yield lambda account, port=None: listeners.open(port or gateway[1], account.token)
    listeners.close()


@pytest.mark.parametrize("token", [None, "", "forged.token.value"])
def test_connection_without_a_valid_token_is_refused(gateway, token) -> None:
    refusals: list[Any] = []
    client = socketio.Client(reconnection=False)
    client.on("connect_error", lambda data=None: refusals.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(
            f"http://127.0.0.1:{gateway[1]}",
            auth={"token": token} if token is not None else None,
            transports=["websocket"],
            wait_timeout=10,
        )
    assert len(refusals) == 1
    assert refusals[0]["message"].startswith("unauthorized")


def test_events_reach_only_their_own_room(listen, factory: Factory) -> None:
    driver, other = factory.driver(), factory.driver()
    customer = factory.customer()
    to_driver, to_other, to_customer = listen(driver), listen(other), listen(customer)

    emit_until_seen(
        lambda: emit("job:new", {"n": 1}, [f"driver:{driver.id}"]), to_driver, "job:new"
    )
    emit_until_seen(
        lambda: emit("job:status", {"n": 2}, [f"customer:{customer.id}"]), to_customer, "job:status"
    )
    time.sleep(0.3)
    assert to_other.events == []
    assert to_driver.got("job:status") == [] and to_customer.got("job:new") == []


def test_clients_cannot_reach_other_rooms(listen, factory: Factory) -> None:
    sender, target = factory.driver(), factory.driver()
    from_sender, to_target = listen(sender), listen(target)
    for event in ("join", "enter_room", "job:new", "message"):
        from_sender.client.emit(event, {"room": f"driver:{target.id}", "data": "spoof"})
    emit_until_seen(lambda: emit("ping:test", {}, [f"driver:{target.id}"]), to_target, "ping:test")
    assert [name for name, _ in to_target.events if name != "ping:test"] == []


def test_driver_location_is_acknowledged_and_indexed(listen, factory: Factory) -> None:
    driver = factory.driver(at=None)
    client = listen(driver)
    assert client.call("driver:location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}) == {"ok": True}
    near = drivers_near(redis_connection(), *ORIGIN, 1, settings.location_stale_s)
    assert [c.driver_id for c in near] == [driver.id]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"lat": 91, "lng": 0}, "lat"),
        ({"lat": 0, "lng": -181}, "lng"),
        ({"lat": "38.7", "lng": 0}, "lat"),
        ({"lat": 0}, "lng"),
        ({"lat": 0, "lng": 0, "speed": 3}, "speed"),
        ([0, 0], "body"),
        ("here", "body"),
    ],
)
def test_bad_locations_are_refused_and_not_written(listen, factory: Factory, payload, field):
    driver = factory.driver(at=None)
    ack = listen(driver).call("driver:location", payload)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "validation_error"
    assert set(ack["error"]["fields"]) == {field}
    assert redis_connection().zscore(settings.redis_key("drivers", "seen"), driver.id) is None


def test_a_customer_cannot_report_a_location(listen, factory: Factory) -> None:
    ack = listen(factory.customer()).call("driver:location", {"lat": 1.0, "lng": 2.0})
    assert ack == {
        "ok": False,
        "error": {"code": "forbidden", "message": "Only a driver reports a location."},
    }


def test_two_gateways_share_rooms_through_redis(tmp_path: Path, listen, factory) -> None:
    second, second_port = start_gateway(tmp_path, name="gateway-2")
    one, two = factory.driver(), factory.driver()
    on_first, on_second = listen(one), Listener(second_port, two.token)
    try:
        rooms = [f"driver:{one.id}", f"driver:{two.id}"]
        emit_until_seen(
            lambda: emit("job:accepted", {"job_id": 1}, rooms), on_second, "job:accepted"
        )
        wait_until(lambda: on_first.got("job:accepted"), 10, "the first gateway's client")
    finally:
        on_second.close()
        second.stop()


def test_gateway_recovers_its_redis_subscription_after_a_restart(
    tmp_path: Path, factory: Factory
) -> None:
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    gateway, port = start_gateway(tmp_path, {"REDIS_URL": redis_server.url}, name="gateway-r")
    driver = factory.driver()
    listener = Listener(port, driver.token)
    publisher = PublishingRedisManager(
        redis_server.url, channel=socketio_channel(), write_only=True
    )
    try:
        room = f"driver:{driver.id}"
        emit_until_seen(lambda: publisher.emit("before", {}, to=room), listener, "before")
        redis_server.stop()
        redis_server.start()
        emit_until_seen(lambda: publisher.emit("after", {}, to=room), listener, "after", 30)
    finally:
        listener.close()
        publisher.redis.close()
        gateway.stop()
        redis_server.stop()
