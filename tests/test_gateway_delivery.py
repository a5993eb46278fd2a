"""How the gateway writes to its websockets (realtime.engine.GatewaySocket): a packet goes to
the websocket at once when it takes it and nothing waits before it, else behind the others
on the session's queue, sent by a writer task while the client reads.

Through a gateway process: a client that stops reading still gets every event, in order,
while events keep coming, and holds up no other client; one that vanishes with events
waiting is let go; one still on long-polling gets its event by poll. Then a session on
python-engineio and uvicorn in this process, where the test plays the transport's flow
control (`pause_writing`, `resume_writing`): what is queued goes first, nothing is written
while paused, a session whose client is gone with packets queued is closed, pings go out
while answered and a silent client is closed. Raw websocket clients, which read only when
the test says."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import version
from typing import Any, Self

import engineio
import pytest
import requests
import uvicorn
from engineio import packet
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Message

from models.rooms import driver_room
from realtime.engine import GatewaySocket, websocket_frame
from tests.factories import Factory
from tests.processes import Process, free_port, start_gateway
from tests.sockets import Listener, Listeners, emit_until_seen
from workers.events import emit

pytestmark = pytest.mark.slow

PAD = "x" * 60_000  # ~6 MB for 100 events: more than a client's socket and the kernel hold
EVENTS = 100
SLACK_S = 5.0
PING_S = 0.3  # the in-process server's ping interval and timeout


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, int]]:
    process, port = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield process, port
    process.stop()


@pytest.fixture
def listen(gateway: tuple[Process, int]) -> Iterator[Any]:
    listeners = Listeners()
    yield lambda account: listeners.open(gateway[1], account.token)
    listeners.close()


class RawClient:
    """An Engine.IO client over a bare socket with a small receive buffer: it reads only when
    told to, so the server's writes to it back up."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        opened = self.recv()
        assert opened.startswith("0{"), opened
        self.sid = json.loads(opened[1:])["sid"]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _read(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        return chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += self._read()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def _frame(self) -> tuple[int, bytes]:
        """The next frame's first byte and payload (a server's frames are unmasked)."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first, self._take(length)

    def recv(self) -> str:
        """The next message: a text one, whole (the servers here do not fragment)."""
        first, payload = self._frame()
        assert first == 0x81, f"not a final text frame: {first:#x}"
        return payload.decode()

    def nothing_within(self, seconds: float) -> bool:
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable and not self.buffer

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def reset(self) -> None:
        """Gone at once, as a phone losing its network: a TCP reset, nothing more read."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def closed_by_server(self) -> bool:
        """Reads what is left until the server closes the websocket: whether it did in time."""
        try:
            while self._frame()[0] != 0x88:
                pass
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return True


class RawDriver(RawClient):
    """A driver signed in to the gateway (Socket.IO CONNECT with its token)."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(port)
        self.send("40" + json.dumps({"token": token}))
        assert self.recv().startswith("40")

    def events(self, name: str, count: int) -> list[Any]:
        """The next `count` events `name` (answering pings, skipping other events)."""
        got: list[Any] = []
        while len(got) < count:
            message = self.recv()
            if message == "2":
                self.send("3")
            elif message.startswith("42"):
                event, *arguments = json.loads(message[2:])
                if event == name:
                    got.append(arguments[0])
        return got


def _path_live(slow: RawDriver, slow_id: int, fast: Listener, fast_id: int) -> None:
    """Both reached through the gateway's Redis subscription (events before it are lost)."""
    emit_until_seen(lambda: emit("bench:probe", {}, [driver_room(fast_id)]), fast, "bench:probe")
    emit("bench:probe", {}, [driver_room(slow_id)])
    slow.events("bench:probe", 1)


def _emit_numbered(rooms: list[str], pause_s: float = 0.0) -> None:
    for n in range(EVENTS):
        emit("job:new", {"n": n, "pad": PAD}, rooms)
        time.sleep(pause_s)


def test_a_client_that_stops_reading_gets_every_event_in_order_and_holds_up_no_one(
    gateway: tuple[Process, int], listen, factory: Factory
) -> None:
    slow_account, fast_account = factory.driver(at=None), factory.driver(at=None)
    fast = listen(fast_account)
    with RawDriver(gateway[1], slow_account.token) as slow:
        _path_live(slow, slow_account.id, fast, fast_account.id)
        rooms = [driver_room(slow_account.id), driver_room(fast_account.id)]

        # While the slow client reads nothing, the other gets every event.
        _emit_numbered(rooms)
        got = fast.wait_for("job:new", EVENTS, timeout_s=30)
        assert [event["n"] for event in got] == list(range(EVENTS))

        # Events keep coming while it reads, now and then: its websocket takes writes,
        # then not, then again; each waits for the ones before it.
        publisher = threading.Thread(target=_emit_numbered, args=(rooms, 0.01))
        publisher.start()
        numbers = []
        for n in range(2 * EVENTS):
            numbers.append(slow.events("job:new", 1)[0]["n"])
            if n % 10 == 0:
                time.sleep(0.05)
        publisher.join()
        assert numbers == list(range(EVENTS)) * 2
    assert [event["n"] for event in fast.wait_for("job:new", 2 * EVENTS)] == numbers


def test_a_client_gone_with_events_waiting_is_let_go_and_others_still_get_theirs(
    gateway: tuple[Process, int], listen, factory: Factory
) -> None:
    process, port = gateway
    gone_account, fast_account = factory.driver(at=None), factory.driver(at=None)
    fast = listen(fast_account)
    with RawDriver(port, gone_account.token) as gone:
        _path_live(gone, gone_account.id, fast, fast_account.id)
        rooms = [driver_room(gone_account.id), driver_room(fast_account.id)]
        _emit_numbered(rooms)
        fast.wait_for("job:new", EVENTS, timeout_s=30)
        gone.reset()
    _emit_numbered(rooms)
    got = fast.wait_for("job:new", 2 * EVENTS, timeout_s=30)
    assert [event["n"] for event in got] == list(range(EVENTS)) * 2
    process.wait_for_log(f"driver {gone_account.id} disconnected", timeout_s=SLACK_S)
    assert "Traceback" not in process.log()


def test_a_session_still_on_long_polling_gets_a_fan_outs_event_at_its_next_poll(
    gateway: tuple[Process, int], listen, factory: Factory
) -> None:
    """socket.io-client's first transport: no websocket to write to, the packet is queued
    for the poll."""
    polling_account, other_account = factory.driver(at=None), factory.driver(at=None)
    other = listen(other_account)
    handshake = f"http://127.0.0.1:{gateway[1]}/socket.io/?EIO=4&transport=polling"
    poll = f"{handshake}&sid={json.loads(requests.get(handshake, timeout=5).text[1:])['sid']}"
    sign_in = "40" + json.dumps({"token": polling_account.token})
    assert requests.post(poll, data=sign_in, timeout=5).text == "OK"
    assert requests.get(poll, timeout=5).text.startswith("40{")
    emit_until_seen(
        lambda: emit("bench:probe", {}, [driver_room(other_account.id)]), other, "bench:probe"
    )
    rooms = [driver_room(polling_account.id), driver_room(other_account.id)]
    emit("job:accepted", {"job_id": 7}, rooms)
    assert requests.get(poll, timeout=10).text == '42["job:accepted",{"job_id":7}]'
    assert other.wait_for("job:accepted") == [{"job_id": 7}]


# --- the sessions themselves, served by uvicorn in this process ------------------------------


class Served:
    """python-engineio served by uvicorn with wsproto as `python -m realtime` serves it (each
    session made a GatewaySocket when it opens, as the gateway does; pings every `ping_s`), and
    one RawClient connected to it: its session and uvicorn's connection."""

    eio: engineio.AsyncServer
    client: RawClient
    session: GatewaySocket
    connection: Any  # uvicorn's WSProtocol


@contextlib.asynccontextmanager
async def served(ping_s: float = 60) -> AsyncIterator[Served]:
    this = Served()
    this.eio = eio = engineio.AsyncServer(
        async_mode="asgi", ping_interval=ping_s, ping_timeout=ping_s, logger=False
    )

    def adopt(sid: str, environ: dict[str, Any]) -> None:
        GatewaySocket.adopt(eio.sockets[sid])

    eio.on("connect", adopt)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            engineio.ASGIApp(eio, engineio_path="socket.io"),
            host="127.0.0.1",
            port=port,
            ws="wsproto",
            http="h11",
            ws_per_message_deflate=False,
            ws_ping_interval=None,
            lifespan="off",
            log_config=None,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        await _until(lambda: server.started)
        with await asyncio.to_thread(RawClient, port) as this.client:
            this.session = eio.sockets[this.client.sid]
            (this.connection,) = server.server_state.connections
            yield this
    finally:
        server.should_exit = True
        await serving
        await eio.shutdown()


async def _until(condition: Callable[[], object], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def _message(text: str) -> packet.Packet:
    return packet.Packet(packet.MESSAGE, text)


async def _packets_keep_their_order_and_wait_for_a_slow_reader() -> None:
    async with served() as it:
        it.session.put(_message("a"))
        assert await asyncio.to_thread(it.client.recv) == "4a"

        it.connection.pause_writing()  # as its transport does when the client reads slowly
        it.session.put(_message("b"))
        it.session.put(_message("c"))
        assert await asyncio.to_thread(it.client.nothing_within, 0.3)
        it.connection.resume_writing()  # caught up: what is queued goes first
        it.session.put(_message("d"))
        assert [await asyncio.to_thread(it.client.recv) for _ in "bcd"] == ["4b", "4c", "4d"]

        it.session.put(_message("e"))  # nothing queued any more: at once again
        assert await asyncio.to_thread(it.client.recv) == "4e"


def test_a_sessions_packets_keep_their_order_and_wait_while_its_client_reads_slowly() -> None:
    asyncio.run(_packets_keep_their_order_and_wait_for_a_slow_reader())


async def _client_gone_with_packets_queued() -> None:
    async with served() as it:
        it.connection.pause_writing()
        for n in range(3):
            it.session.put(_message(str(n)))
        it.client.reset()
        await _until(lambda: it.session.closed and it.client.sid not in it.eio.sockets)


def test_a_session_whose_client_is_gone_with_packets_queued_is_closed(caplog) -> None:
    caplog.set_level(logging.ERROR)
    asyncio.run(_client_gone_with_packets_queued())
    assert caplog.records == []


async def _pinged_and_closed_when_unanswered() -> None:
    async with served(PING_S) as it:
        for _ in range(3):
            assert await asyncio.to_thread(it.client.recv) == "2"
            it.client.send("3")
        assert it.client.sid in it.eio.sockets
        assert await asyncio.to_thread(it.client.recv) == "2"
        assert await asyncio.to_thread(it.client.closed_by_server)  # unanswered: closed
        await _until(lambda: it.client.sid not in it.eio.sockets)


def test_a_session_is_pinged_while_it_answers_and_closed_when_it_stops() -> None:
    asyncio.run(_pinged_and_closed_when_unanswered())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("kind", [str, bytes])
def test_a_fan_outs_frame_is_the_frame_wsproto_makes(size: int, kind: type) -> None:
    """LocalDelivery builds an event's websocket frame once and writes it to each socket;
    it must be the frame uvicorn (wsproto, no extensions) would have sent that socket."""
    message = ("é" + "a" * size)[:size] if kind is str else bytes(i % 256 for i in range(size))
    server = Connection(ConnectionType.SERVER)
    assert websocket_frame(message) == server.send(Message(data=message))


def test_the_libraries_whose_internals_the_gateway_uses_are_the_versions_it_was_written_for():
    """realtime.engine overrides python-engineio's socket internals and reads uvicorn's
    websocket connection (see its docstring): another version needs them checked again."""
    assert version("python-engineio").startswith("4.15.")
    assert version("uvicorn").startswith("0.54.")
    assert version("wsproto").startswith("1.")
