"""The Socket.IO gateway as separate processes (`python -m realtime`): who may connect, that
events reach only their own rooms, across gateways, and that drivers' reports are checked;
then the gateway under an outsider's probes and its stores' faults (issue 9, points 4-7 and
the gateway's CORS): reserved event names from clients, a Redis restart under connected
sockets, Engine.IO sessions that never sign in, a database that refuses or never answers,
and foreign browser origins. The python-socketio client, raw Engine.IO over websockets and
raw HTTP; Redis and PostgreSQL servers that a test breaks are its own."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from models.db import redis_connection
from models.positions import drivers_near
from models.rooms import socketio_channel
from settings import settings
from tests.factories import ORIGIN, Factory
from tests.processes import PrivateRedis, Process, free_port, start_gateway, wait_until
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import PublishingRedisManager, emit

pytestmark = pytest.mark.slow

AUTH_TIMEOUT_S = 2.0  # SOCKET_AUTH_TIMEOUT_S of the gateways started here
CONNECT_TIMEOUT_S = 2.0  # SOCKET_CONNECT_TIMEOUT_S
SLACK_S = 2.0  # scheduling and process start-up, on a loaded test machine
GATEWAY_ENV = {
    "SOCKET_AUTH_TIMEOUT_S": str(AUTH_TIMEOUT_S),
    "SOCKET_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    "ALLOWED_ORIGINS": "",  # the default: no browser origin
}
ENGINE_IO_PATH = "/socket.io/?EIO=4&transport="


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, int]]:
    process, port = start_gateway(tmp_path_factory.mktemp("gateway"), GATEWAY_ENV)
    yield process, port
    process.stop()


@pytest.fixture
def listen(gateway: tuple[Process, int]) -> Iterator[Callable[..., Listener]]:
    """Opens a listener for an account on this module's gateway, or on `port`."""
    listeners = Listeners()
    yield lambda account, port=None: listeners.open(port or gateway[1], account.token)
    listeners.close()


# --- sign-in, rooms and reports ---------------------------------------------------------


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


def test_one_emit_to_many_rooms_reaches_each_socket_in_them_once(listen, factory: Factory) -> None:
    """The gateway's own delivery (realtime.gateway.LocalDelivery, not python-socketio's
    task per socket): every socket of every room listed, once, though its room is listed
    twice or it shares the room with another socket; none outside them."""
    first, second, outsider = factory.driver(), factory.driver(), factory.driver()
    feeds = [listen(first), listen(first), listen(second)]
    outside = listen(outsider)
    for feed in feeds:
        emit_until_seen(
            lambda: emit("bench:probe", {}, [f"driver:{first.id}", f"driver:{second.id}"]),
            feed,
            "bench:probe",
        )
    rooms = [f"driver:{first.id}", f"driver:{second.id}", f"driver:{first.id}"]
    emit("job:accepted", {"job_id": 7}, rooms)
    for feed in feeds:
        feed.wait_for("job:accepted")
    time.sleep(0.3)
    assert [feed.got("job:accepted") for feed in feeds] == [[{"job_id": 7}]] * 3
    assert outside.events == []


def test_a_client_offering_compression_gets_none(gateway: tuple[Process, int]) -> None:
    """permessage-deflate keeps a zlib state of ~256 KiB a connection; socket.io-client (ws)
    and Starscream offer it by default, and the gateway declines."""
    with connect(
        f"ws://127.0.0.1:{gateway[1]}{ENGINE_IO_PATH}websocket",
        open_timeout=5,
        proxy=None,
        compression="deflate",
    ) as ws:
        assert str(ws.recv(timeout=5)).startswith("0{")
        assert ws.request is not None and ws.response is not None
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


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
    near = drivers_near(redis_connection(), *ORIGIN, 1)
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


# --- 4. reserved event names ---------------------------------------------------------------


def test_a_client_cannot_rerun_connect_with_another_users_token(
    gateway: tuple[Process, int], listen, factory: Factory
) -> None:
    """python-socketio runs the connect handler for a client event named `connect`: with
    (environ, auth) as its arguments, A's socket would join driver:B and report as B."""
    process, _ = gateway
    a, b = factory.driver(at=None), factory.driver(at=None)
    as_a, as_b = listen(a), listen(b)

    # Acknowledged (so handled) before anything below; what the answer is, is checked last.
    as_a.call("connect", ({}, {"token": b.token}))

    # An emit to driver:B reaches B's socket and not A's.
    emit_until_seen(lambda: emit("job:new", {"probe": 1}, [f"driver:{b.id}"]), as_b, "job:new")
    time.sleep(0.3)  # only to prove that nothing reaches A
    assert as_a.got("job:new") == []
    assert as_a.client.connected

    # A's position is still A's.
    assert as_a.call("driver:location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}) == {"ok": True}
    near = drivers_near(redis_connection(), *ORIGIN, 1)
    assert [candidate.driver_id for candidate in near] == [a.id]

    # Each refusal is acknowledged to a client that asked for an acknowledgement.
    for name in ("connect", "disconnect", "connect_error", "message", "newListener"):
        ack = as_a.call(name, ({}, {"token": b.token}))
        assert ack == {
            "ok": False,
            "error": {"code": "forbidden", "message": f"The event name {name!r} is reserved."},
        }
    assert as_a.client.connected

    # Logged once for the socket, as one line without a traceback.
    assert process.log().count(f"sent the reserved event 'connect' (driver {a.id})") == 1
    assert "Traceback" not in process.log()


# --- 5. a Redis restart under connected sockets ------------------------------------------


@pytest.mark.parametrize("outage_s", [12, 0])
def test_after_a_redis_outage_clients_are_told_to_reload_and_the_next_emit_arrives(
    tmp_path: Path, factory: Factory, outage_s: float
) -> None:
    """12 s: past python-socketio's old backoff (1 + 2 + 4 s). 0: a restart at once, which
    a subscriber reconnecting by itself would get through unnoticed, though the events
    published meanwhile are lost all the same."""
    with contextlib.ExitStack() as cleanup:
        redis_server = PrivateRedis(tmp_path)
        cleanup.callback(redis_server.stop)
        redis_server.start()
        gateway, port = start_gateway(tmp_path, {**GATEWAY_ENV, "REDIS_URL": redis_server.url})
        cleanup.callback(gateway.stop)
        driver, customer = factory.driver(), factory.customer()
        to_driver = Listener(port, driver.token)
        cleanup.callback(to_driver.close)
        to_customer = Listener(port, customer.token)
        cleanup.callback(to_customer.close)
        publisher = PublishingRedisManager(
            redis_server.url, channel=socketio_channel(), write_only=True
        )
        room = f"driver:{driver.id}"

        # The gateway subscribes when it starts, not when its first client connects: once
        # it says so, the first emit arrives.
        gateway.wait_for_log("subscribed to Redis channel")
        publisher.emit("job:new", {"job": {"id": 1}}, to=room)
        cleanup.callback(publisher.redis.close)
        to_driver.wait_for("job:new", 1, 5)

        redis_server.stop()
        if outage_s:
            gateway.wait_for_log("Redis subscription lost")
            time.sleep(outage_s)  # the outage
        redis_server.start()
        back = time.monotonic()

        # Every socket is told that it missed events, promptly...
        reload = to_driver.wait_for("feed:reload", 1, 10)
        assert time.monotonic() - back < 2 + 3 + SLACK_S  # a 2 s backoff at most
        assert reload == [{"reason": "events_missed"}]
        assert to_customer.wait_for("feed:reload", 1, 5) == [{"reason": "events_missed"}]
        assert "Redis subscription restored after" in gateway.log()
        # ...and only once the gateway listens again: the first emit after it arrives.
        publisher.emit("job:new", {"job": {"id": 2}}, to=room)
        assert to_driver.wait_for("job:new", 2, 5)[1] == {"job": {"id": 2}}
        assert to_driver.client.connected and to_customer.client.connected


# --- 6. Engine.IO sessions that never sign in ------------------------------------------------


def _raw_session(port: int, origin: str | None = None) -> ClientConnection:
    """An Engine.IO 4 websocket session, opened and not yet connected to a namespace."""
    ws = connect(
        f"ws://127.0.0.1:{port}{ENGINE_IO_PATH}websocket",
        origin=origin,  # type: ignore[arg-type]
        open_timeout=5,
        proxy=None,
        compression=None,
        legacy=True,
    )
    opened = str(ws.recv(timeout=5))
    assert opened.startswith("0{"), opened
    return ws


def _seconds_until_closed(ws: ClientConnection, timeout_s: float) -> float:
    """Hold the session like a live client (answering pings) until the server closes it."""
    started = time.monotonic()
    deadline = started + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = ws.recv(timeout=left)
        except ConnectionClosed:
            return time.monotonic() - started
        except TimeoutError:
            break
        if message == "2":
            ws.send("3")
    ws.close()
    raise AssertionError(f"the session was still open after {timeout_s}s")


def test_a_session_that_never_sends_connect_is_closed(
    gateway: tuple[Process, int], listen, factory: Factory
) -> None:
    signed_in = listen(factory.driver(at=None))
    raw = _raw_session(gateway[1])
    waited = _seconds_until_closed(raw, AUTH_TIMEOUT_S + SLACK_S)
    assert waited >= AUTH_TIMEOUT_S - 0.5

    # A client that signed in is not touched, past its own deadline too.
    assert signed_in.client.connected
    assert signed_in.call("driver:location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}) == {"ok": True}


def test_a_polling_session_that_never_sends_connect_is_closed(gateway: tuple[Process, int]) -> None:
    port = gateway[1]
    opened = _handshake(port, None)
    sid = json.loads(opened.text[1:])["sid"]
    started = time.monotonic()
    # A long poll: the first thing the session sends is its Engine.IO CLOSE packet.
    poll = f"http://127.0.0.1:{port}{ENGINE_IO_PATH}polling&sid={sid}"
    assert requests.get(poll, timeout=AUTH_TIMEOUT_S + SLACK_S).text == "1"
    assert time.monotonic() - started >= AUTH_TIMEOUT_S - 0.5
    assert requests.get(poll, timeout=5).status_code == 400  # the session is gone


def test_a_session_refused_at_connect_is_closed_too(gateway: tuple[Process, int]) -> None:
    raw = _raw_session(gateway[1])
    raw.send('40{"token":"forged.token.value"}')
    refused = str(raw.recv(timeout=5))
    assert refused.startswith("44{") and "unauthorized" in refused
    _seconds_until_closed(raw, AUTH_TIMEOUT_S + SLACK_S)


def test_a_session_that_leaves_the_namespace_is_closed_too(
    gateway: tuple[Process, int], factory: Factory
) -> None:
    """Signed in, then a Socket.IO DISCONNECT with the Engine.IO session kept open."""
    raw = _raw_session(gateway[1])
    raw.send("40" + json.dumps({"token": factory.driver(at=None).token}))
    assert str(raw.recv(timeout=5)).startswith('40{"sid"')
    raw.send("41")
    _seconds_until_closed(raw, AUTH_TIMEOUT_S + SLACK_S)


# --- 7. a database that refuses or never answers ------------------------------------------


def _refusal(port: int, token: str) -> tuple[list[Any], float]:
    """Connect with a valid token; the connect_error payloads seen, and the seconds taken."""
    refusals: list[Any] = []
    client = socketio.Client(reconnection=False)
    client.on("connect_error", lambda data=None: refusals.append(data))
    started = time.monotonic()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(
            f"http://127.0.0.1:{port}",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=10,
        )
    return refusals, time.monotonic() - started


def _database_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/dispatch"


@pytest.mark.parametrize("database", ["refusing", "silent"])
def test_a_connect_during_a_database_outage_is_refused_in_bounded_time(
    tmp_path: Path, factory: Factory, database: str
) -> None:
    """`refusing`: nothing listens on the port (connection refused at once). `silent`: a
    listener of this test's own that takes the TCP connection and never answers, as a
    PostgreSQL behind a dead network path would."""
    driver = factory.driver(at=None)
    with contextlib.ExitStack() as cleanup:
        silent = cleanup.enter_context(socket.socket())
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1] if database == "silent" else free_port()
        gateway, gateway_port = start_gateway(
            tmp_path, {**GATEWAY_ENV, "DATABASE_URL": _database_url(port)}
        )
        cleanup.callback(gateway.stop)
        for _ in range(2):  # the second try finds the same answer (no stuck state)
            refusals, seconds = _refusal(gateway_port, driver.token)
            assert len(refusals) == 1
            assert refusals[0]["message"].startswith("service_unavailable")
            assert seconds < CONNECT_TIMEOUT_S + SLACK_S
        assert "Traceback" not in gateway.log()


# --- 9. browser origins ----------------------------------------------------------------


def _handshake(port: int, origin: str | None) -> requests.Response:
    headers = {"Origin": origin} if origin is not None else {}
    return requests.get(
        f"http://127.0.0.1:{port}{ENGINE_IO_PATH}polling", headers=headers, timeout=5
    )


def test_no_browser_origin_is_allowed_by_default(gateway: tuple[Process, int]) -> None:
    port = gateway[1]
    foreign = _handshake(port, "https://evil.example")
    assert foreign.status_code == 400
    assert "Access-Control-Allow-Origin" not in foreign.headers
    assert "Access-Control-Allow-Credentials" not in foreign.headers
    with pytest.raises(InvalidStatus):
        _raw_session(port, origin="https://evil.example")

    # Native apps: no Origin at all, or (Starscream, under Socket.IO-Client-Swift) the
    # gateway's own address as the Origin.
    for origin in (None, f"wss://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        answer = _handshake(port, origin)
        assert answer.status_code == 200, (origin, answer.text)
        assert answer.text.startswith("0{")
        assert answer.headers.get("Access-Control-Allow-Credentials") != "true"
    _raw_session(port, origin=f"wss://127.0.0.1:{port}").close()


def test_configured_origins_are_allowed_and_no_others(tmp_path: Path) -> None:
    allowed = "https://ops.example.com"
    gateway, port = start_gateway(
        tmp_path, {**GATEWAY_ENV, "ALLOWED_ORIGINS": f" {allowed}/ , https://other.example.com"}
    )
    try:
        answer = _handshake(port, allowed)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Access-Control-Allow-Origin"] == allowed
        # Sign-in is a token in the Socket.IO auth payload, never a cookie.
        assert "Access-Control-Allow-Credentials" not in answer.headers
        assert _handshake(port, "https://other.example.com").status_code == 200
        for foreign in ("https://evil.example", "https://ops.example.com.evil.example", "null"):
            refused = _handshake(port, foreign)
            assert refused.status_code == 400, foreign
            assert "Access-Control-Allow-Origin" not in refused.headers
        _raw_session(port, origin=allowed).close()
    finally:
        gateway.stop()


def test_a_reserved_event_before_connect_is_dropped(gateway: tuple[Process, int]) -> None:
    """An event packet on a session that never connected, or with no event name at all,
    leaves nothing behind but one log line (no traceback)."""
    raw = _raw_session(gateway[1])
    raw.send('42["connect",{},{"token":"x"}]')
    raw.send("42[]")
    raw.send("42[7]")
    _seconds_until_closed(raw, AUTH_TIMEOUT_S + SLACK_S)
    assert "Traceback" not in gateway[0].log()
