"""Engine.IO sockets that write to their websocket without a task of their own.

python-engineio gives every websocket a writer task that waits on the socket's queue (a
task for `queue.get()` and a timer inside `wait_for`, renewed after every packet), a reader
that starts a task for every message it waits for, and a task that sleeps until the next
ping. Each packet to a client went onto the queue, woke the writer, and went through
uvicorn's `send`: on a fan-out of `job:accepted` to 1,000 drivers, 110-130 µs of the
gateway's CPU a driver, most of it asyncio's, and ~9 KB of every idle connection in tasks,
timers and the queue (bench/gateway.py at 10,000 sockets: 36 KB a connection, 27 KB here;
20-40 µs a driver here, nearly all of it the send itself).

Here, when the websocket takes a write at once (uvicorn's connection is open and its
transport not paused by a slow reader) and nothing is queued before it, a packet is
written to the transport there and then, as the websocket frame built once for every
recipient of a fan-out. Otherwise it waits on the queue, and a writer task, started then
and ended when the queue is empty, sends it through uvicorn's `send` (which waits while the
transport is paused): packets reach a socket in the order they were sent, and a slow client
holds up no other. The queue itself is made when something waits in it and dropped when it
is empty. The reader waits under one timeout, and the next ping is a timer.

Overridden python-engineio 4.15 internals (pinned in setup.cfg): `AsyncSocket.send`,
`schedule_ping`, and `_websocket_handler`, whose upgrade from polling is engineio's code as
it is. Read of uvicorn 0.54's websocket connection
(`uvicorn.protocols.websockets.wsproto_impl.WSProtocol`, reached as the owner of the ASGI
`send`): `writable`, `close_sent`, `disconnected`, `transport` and its config's
`ws_per_message_deflate`. tests/test_gateway_delivery.py fails on other versions of either.
Under another server, or with compression on, every packet goes the queue's way."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any, cast

from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

log = logging.getLogger(__name__)

_FIN = 0x80
_TEXT = 0x1
_BINARY = 0x2
PING = packet.Packet(packet.PING)


def websocket_frame(message: str | bytes) -> bytes:
    """`message` as one final, unmasked websocket frame (RFC 6455 section 5.2), a server's
    frame without extensions: the bytes wsproto makes of it."""
    if isinstance(message, str):
        opcode, payload = _TEXT, message.encode()
    else:
        opcode, payload = _BINARY, message
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


PING_FRAME = websocket_frame(PING.encode())


def _takes_writes(connection: WSProtocol) -> bool:
    """A write now goes out in order and at once: open, and not paused by its reader."""
    return (
        connection.writable.is_set()
        and not connection.close_sent
        and not connection.disconnected
        and not connection.transport.is_closing()
    )


class GatewaySocket(AsyncSocket):
    """An Engine.IO session of the gateway (see the module's docstring)."""

    connected: bool
    last_ping: float | None
    _outbox: asyncio.Queue[Any] | None = None
    _websocket: Any = None  # engineio's ASGI websocket, once it carries the session
    _connection: WSProtocol | None = None  # uvicorn's, while packets may skip the queue
    _writer: asyncio.Task[None] | None = None

    @classmethod
    def adopt(cls, session: AsyncSocket) -> GatewaySocket:
        """Make an Engine.IO session just opened (its OPEN packet queued, no transport
        handler run yet) one of these: python-engineio makes its sessions itself."""
        queue = session.__dict__.pop("queue")
        session.__class__ = cls
        adopted = cast(GatewaySocket, session)
        adopted._outbox = queue
        return adopted

    @property
    def queue(self) -> asyncio.Queue[Any]:
        """What waits to be sent (the polling transport's, and a blocked websocket's)."""
        if self._outbox is None:
            self._outbox = asyncio.Queue()
        return self._outbox

    @queue.setter
    def queue(self, queue: asyncio.Queue[Any]) -> None:
        self._outbox = queue

    async def send(self, pkt: packet.Packet) -> None:
        if await self.check_ping_timeout():
            self.put(pkt)

    def put(self, pkt: packet.Packet, frame: bytes | None = None) -> None:
        """Send `pkt` (whose websocket frame `frame` is, if given): written now if the
        websocket takes it and nothing waits before it, else queued. Never waits."""
        connection = self._connection
        if connection is not None and self._writer is None and _takes_writes(connection):
            connection.transport.write(frame or websocket_frame(pkt.encode()))
            return
        self.queue.put_nowait(pkt)
        self._start_writer()

    def close_transport(self) -> None:
        """Send nothing more: the websocket is closed after what is queued (a waiting
        polling request gets its answer)."""
        self.queue.put_nowait(None)
        self._start_writer()

    def _start_writer(self) -> None:
        if self._websocket is not None and self._writer is None:
            self._writer = asyncio.ensure_future(self._write_queued())

    async def _write_queued(self) -> None:
        """Send what is queued, in order; at None or a failed send, close the websocket
        and write no more (as engineio's writer does). Ends when the queue is empty."""
        queue = self.queue
        try:
            while not queue.empty():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:
                    break
                await self._websocket.send(pkt.encode())
            else:
                self._writer = None
                self._outbox = None
                return
        except Exception:  # the connection is gone (engineio's writer stops on anything)
            log.debug("Engine.IO session %s: websocket send failed", self.sid, exc_info=True)
        self._connection = None
        websocket, self._websocket = self._websocket, None
        await websocket.close()  # self._writer stays set: no other writer starts

    def schedule_ping(self) -> None:
        """engineio's, with a timer in place of a task that sleeps."""
        if self.last_ping:
            self.last_ping = None
            asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.put(PING, PING_FRAME)

    def _carried_by(self, websocket: Any) -> None:
        """From now on packets go to `websocket`, after what is queued."""
        self._websocket = websocket
        connection = getattr(websocket.asgi_send, "__self__", None)
        if isinstance(connection, WSProtocol) and not connection.config.ws_per_message_deflate:
            self._connection = connection
        if self._outbox is not None and not self._outbox.empty():
            self._start_writer()
        else:
            self._outbox = None

    async def _websocket_handler(self, ws: Any) -> None:
        """engineio's: the same upgrade from polling, then the reader (under one timeout
        a message, no task) and no writer task."""
        if self.connected:
            # the socket was already connected, so this is an upgrade (engineio's code)
            self.upgrading = True  # hold packet sends during the upgrade
            try:
                pkt = await self._receive_from(ws)
            except OSError:
                return
            decoded_pkt = packet.Packet(encoded_packet=pkt)
            if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != "probe":
                self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
                self.upgrading = False
                return
            await ws.send(packet.Packet(packet.PONG, data="probe").encode())
            await self.queue.put(packet.Packet(packet.NOOP))  # end poll
            try:
                pkt = await self._receive_from(ws)
            except OSError:
                self.upgrading = False
                return
            decoded_pkt = packet.Packet(encoded_packet=pkt)
            if decoded_pkt.packet_type != packet.UPGRADE:
                self.upgraded = False
                self.server.logger.info(
                    "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                    self.sid,
                    pkt,
                )
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True
        self._carried_by(ws)
        await self._read(ws)
        self.close_transport()
        if self._writer is not None:
            await self._writer
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _read(self, ws: Any) -> None:
        """Hand the client's packets on until it goes or says nothing for a ping interval
        and timeout."""
        idle_s = self.server.ping_interval + self.server.ping_timeout
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    received = await self._receive_from(ws)
            except (asyncio.CancelledError, OSError, ValueError):  # gone, silent or too large
                return
            if received is None:  # closed by the client
                return
            try:
                await self.receive(packet.Packet(encoded_packet=received))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                self.server.logger.info("Receive error -- socket is closed")
                return
            except Exception:
                self.server.logger.exception("Unknown receive error")

    async def _receive_from(self, ws: Any) -> Any:
        received = await ws.wait()
        if received and len(received) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return received
