"""The client side of HTTP/2 (RFC 9113) for a stream of pushes, without h2's state machines.

h2 gave every push a stream object walked through its state machine for each frame sent and
received, validated and re-encoded the headers it was told not to touch, built an event object
for every frame, and logged each step: ~three quarters of the sender loop's CPU per push. A push
is one request (HEADERS, then its JSON body in DATA) and one answer (HEADERS, and a JSON body
for an error), so `PushConnection` keeps per stream only its send window, the body still held
back by flow control, and the answer so far; `receive_data` returns what the protocol acts on
(`Answered`, `Reset`, `ConcurrencyLimit`, `Terminated`).

It asks the server to keep no dynamic table for its answers (SETTINGS_HEADER_TABLE_SIZE 0):
then only an answer's `:status` is ever decoded (each answer's `apns-id` is unique, so a table
saved nothing but cost a Huffman decoding of every one).

What it does of HTTP/2 besides: the preface and SETTINGS (the peer's applied and acknowledged:
table size, concurrency, initial window, frame size), PING answered, flow control both ways
(received DATA acknowledged at half a window; a body larger than the peer's window waits for
its WINDOW_UPDATE), header blocks split into CONTINUATION and reassembled from them, padding,
RST_STREAM, GOAWAY, and any violation by the peer answered with GOAWAY. Headers are coded with
hpack's tables (workers/apns/push_headers.py)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from hpack import HPACKError

from workers.apns.push_headers import AnswerHeaderDecoder, PushHeaderEncoder, SharedHeaders

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME_SIZE = 16_384
LARGEST_MAX_FRAME_SIZE = 2**24 - 1
MAX_HEADER_LIST_SIZE = 65_536

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
CANCEL, COMPRESSION_ERROR = 0x8, 0x9

_FRAME_HEADER = struct.Struct(">BHBBL")  # length as 8 + 16 bits, type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_STREAM_ID_MASK = 0x7FFF_FFFF


class Answered(NamedTuple):
    """The final answer on a stream, complete: its status and body."""

    stream_id: int
    status: int
    body: bytes


class Reset(NamedTuple):
    """A stream ended without an answer: reset by the peer, or by us for a malformed answer."""

    stream_id: int
    error_code: int


class ConcurrencyLimit(NamedTuple):
    """The peer's SETTINGS_MAX_CONCURRENT_STREAMS."""

    streams: int


class Terminated(NamedTuple):
    """The connection is over: the peer sent GOAWAY, or broke the protocol (then we did)."""

    error_code: int
    last_stream_id: int
    by_peer: bool


Event = Answered | Reset | ConcurrencyLimit | Terminated


class ProtocolViolation(Exception):
    """The peer broke HTTP/2: a connection error (RFC 9113 5.4.1) with this code."""

    def __init__(self, error_code: int, why: str) -> None:
        super().__init__(why)
        self.error_code = error_code


class _Stream:
    """A request of ours: its send window, the body flow control holds back, its answer."""

    __slots__ = ("window", "held", "sent_all", "status", "body", "unacknowledged")

    def __init__(self, window: int) -> None:
        self.window = window
        self.held = b""
        self.sent_all = False
        self.status = 0
        self.body: bytearray | None = None
        self.unacknowledged = 0


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


class PushConnection:
    """A client HTTP/2 connection that sends requests and reads their answers; sans I/O like
    h2's: `receive_data` takes what the socket read, `data_to_send` gives what to write."""

    def __init__(self) -> None:
        self.encoder = PushHeaderEncoder()
        self.decoder = AnswerHeaderDecoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self.streams: dict[int, _Stream] = {}
        self.outbound = bytearray()
        self.inbound = b""
        self.send_window = DEFAULT_WINDOW
        self.initial_stream_window = DEFAULT_WINDOW
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.unacknowledged = 0  # DATA received on the connection since its last WINDOW_UPDATE
        self.header_block: tuple[int, int, bytearray] | None = None  # awaiting CONTINUATION
        self.terminated = False
        self.peer_settings_received = False  # the server's preface: its first SETTINGS

    def initiate_connection(self) -> None:
        settings = _SETTING.pack(SETTINGS_HEADER_TABLE_SIZE, 0)
        settings += _SETTING.pack(SETTINGS_ENABLE_PUSH, 0)
        settings += _SETTING.pack(SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE)
        self.outbound += PREFACE + frame(SETTINGS, 0, 0, settings)

    def data_to_send(self) -> bytes:
        data = bytes(self.outbound)
        self.outbound.clear()
        return data

    def send_request(self, stream_id: int, headers: Iterable[Any], body: bytes) -> None:
        """HEADERS (and CONTINUATION if need be), then `body` as DATA ending the stream, as far
        as the peer's windows allow; the rest follows its WINDOW_UPDATEs."""
        self._send(stream_id, self.encoder.encode(headers), body)

    def send_push(
        self, stream_id: int, path: bytes, apns_id: bytes, shared: SharedHeaders, body: bytes
    ) -> None:
        """`send_request` for a push: `shared` is what its fan-out has in common (see
        PushHeaderEncoder.encode_push)."""
        self._send(stream_id, self.encoder.encode_push(path, apns_id, shared), body)

    def _send(self, stream_id: int, block: bytes, body: bytes) -> None:
        stream = _Stream(self.initial_stream_window)
        self.streams[stream_id] = stream
        if len(block) <= self.max_frame_size:
            self.outbound += frame(HEADERS, END_HEADERS, stream_id, block)
        else:
            self._send_split_headers(stream_id, block)
        stream.held = body
        self._send_held(stream_id, stream)

    def _send_split_headers(self, stream_id: int, block: bytes) -> None:
        size = self.max_frame_size
        pieces = [block[i : i + size] for i in range(0, len(block), size)]
        self.outbound += frame(HEADERS, 0, stream_id, pieces[0])
        for piece in pieces[1:-1]:
            self.outbound += frame(CONTINUATION, 0, stream_id, piece)
        self.outbound += frame(CONTINUATION, END_HEADERS, stream_id, pieces[-1])

    def _send_held(self, stream_id: int, stream: _Stream) -> None:
        """As much of the held body as the windows and the frame size allow; the last DATA
        frame ends the stream (an empty body is one empty DATA frame)."""
        held = stream.held
        while True:
            size = max(0, min(len(held), stream.window, self.send_window, self.max_frame_size))
            if size == 0 and held:
                break
            end = size == len(held)
            self.outbound += frame(DATA, END_STREAM if end else 0, stream_id, held[:size])
            stream.window -= size
            self.send_window -= size
            held = held[size:]
            if end:
                stream.sent_all = True
                break
        stream.held = held

    def _send_all_held(self) -> None:
        for stream_id, stream in self.streams.items():
            if not stream.sent_all:
                self._send_held(stream_id, stream)
                if self.send_window <= 0:
                    break

    def receive_data(self, data: bytes) -> list[Event]:
        """Every complete frame in what was read so far; the events the protocol acts on."""
        events: list[Event] = []
        if self.terminated:
            return events
        buffer = self.inbound + data if self.inbound else data
        view, start, end = memoryview(buffer), 0, len(buffer)
        try:
            while end - start >= 9:
                high, low, frame_type, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, start)
                length = high << 16 | low
                if length > DEFAULT_MAX_FRAME_SIZE:
                    raise ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - start - 9 < length:
                    break
                payload = view[start + 9 : start + 9 + length]
                start += 9 + length
                self._receive_frame(frame_type, flags, stream_id & _STREAM_ID_MASK, payload, events)
        except ProtocolViolation as violation:
            self._terminate(violation.error_code, str(violation).encode())
            events.append(Terminated(violation.error_code, 0, by_peer=False))
            self.inbound = b""
            return events
        self.inbound = buffer[start:] if start < end else b""
        return events

    def _receive_frame(
        self, frame_type: int, flags: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if self.header_block is not None and frame_type != CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block not continued")
        if frame_type == HEADERS:
            self._receive_headers(flags, stream_id, payload, events)
        elif frame_type == DATA:
            self._receive_data(flags, stream_id, payload, events)
        elif frame_type == CONTINUATION:
            self._receive_continuation(flags, stream_id, payload, events)
        elif frame_type == WINDOW_UPDATE:
            self._receive_window_update(stream_id, payload, events)
        elif frame_type == SETTINGS:
            self._receive_settings(flags, stream_id, payload, events)
        elif frame_type == PING:
            self._receive_ping(flags, stream_id, payload)
        elif frame_type == RST_STREAM:
            self._receive_reset(stream_id, payload, events)
        elif frame_type == GOAWAY:
            self._receive_goaway(stream_id, payload, events)
        elif frame_type == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        elif frame_type == PRIORITY and len(payload) != 5:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
        # any other type is ignored (RFC 9113 4.1)

    @staticmethod
    def _unpadded(flags: int, payload: memoryview) -> memoryview:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolViolation(PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1 : len(payload) - payload[0]]

    def _receive_headers(
        self, flags: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        fragment = self._unpadded(flags, payload)
        if flags & PRIORITY_FLAG:
            fragment = fragment[5:]
        if flags & END_HEADERS:
            self._receive_header_block(stream_id, flags & END_STREAM, fragment, events)
        else:
            self.header_block = (stream_id, flags & END_STREAM, bytearray(fragment))

    def _receive_continuation(
        self, flags: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if self.header_block is None or self.header_block[0] != stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION without a header block")
        _, end_stream, block = self.header_block
        block += payload
        if flags & END_HEADERS:
            self.header_block = None
            self._receive_header_block(stream_id, end_stream, block, events)

    def _receive_header_block(
        self, stream_id: int, end_stream: int, block: bytearray | memoryview, events: list[Event]
    ) -> None:
        """Decoded whatever the stream (the table must follow every block), then read."""
        try:
            status = self.decoder.status(bytes(block))
        except HPACKError as error:
            why = f"a header block hpack refused: {error}"
            raise ProtocolViolation(COMPRESSION_ERROR, why) from error
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream already reset, or an answer given up on
        if not stream.status:
            if len(status) != 3 or not status.isdigit():
                self._reset(stream_id, PROTOCOL_ERROR, events)
                return
            if status[0] != ord("1"):  # an informational answer is followed by the real one
                stream.status = int(status)
        if end_stream:
            self._answer(stream_id, stream, events)

    def _receive_data(
        self, flags: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        self.unacknowledged += len(payload)
        if self.unacknowledged > DEFAULT_WINDOW:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        if self.unacknowledged >= DEFAULT_WINDOW // 2:
            self.outbound += frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.unacknowledged))
            self.unacknowledged = 0
        data = self._unpadded(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.status:
            self._reset(stream_id, PROTOCOL_ERROR, events)
            return
        if stream.body is None:
            stream.body = bytearray(data)
        else:
            stream.body += data
        if flags & END_STREAM:
            self._answer(stream_id, stream, events)
            return
        stream.unacknowledged += len(payload)
        if stream.unacknowledged >= DEFAULT_WINDOW // 2:
            self.outbound += frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacknowledged))
            stream.unacknowledged = 0

    def _answer(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        if not stream.status:
            self._reset(stream_id, PROTOCOL_ERROR, events)
            return
        del self.streams[stream_id]
        if not stream.sent_all:  # answered before the whole request left: stop sending it
            self.outbound += frame(RST_STREAM, 0, stream_id, _U32.pack(CANCEL))
        body = bytes(stream.body) if stream.body is not None else b""
        events.append(Answered(stream_id, stream.status, body))

    def _reset(self, stream_id: int, error_code: int, events: list[Event]) -> None:
        """A stream error of the peer's (RFC 9113 5.4.2): the stream reset and given up."""
        del self.streams[stream_id]
        self.outbound += frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))
        events.append(Reset(stream_id, error_code))

    def _receive_window_update(
        self, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & _STREAM_ID_MASK
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "a connection window past 2^31-1")
            self._send_all_held()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self._reset(stream_id, PROTOCOL_ERROR, events)
            return
        stream.window += increment
        if stream.window > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR, events)
        elif not stream.sent_all:
            self._send_held(stream_id, stream)

    def _receive_settings(
        self, flags: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if stream_id != 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, offset)
            self._apply_setting(setting, value, events)
        self.peer_settings_received = True
        self.outbound += frame(SETTINGS, ACK, 0)
        self._send_all_held()

    def _apply_setting(self, setting: int, value: int, events: list[Event]) -> None:
        if setting == SETTINGS_HEADER_TABLE_SIZE:
            self.encoder.header_table_size = value
        elif setting == SETTINGS_MAX_CONCURRENT_STREAMS:
            events.append(ConcurrencyLimit(value))
        elif setting == SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "an initial window past 2^31-1")
            delta = value - self.initial_stream_window
            self.initial_stream_window = value
            for stream in self.streams.values():
                stream.window += delta
                if stream.window > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
        elif setting == SETTINGS_MAX_FRAME_SIZE:
            if not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_MAX_FRAME_SIZE:
                raise ProtocolViolation(PROTOCOL_ERROR, f"a maximum frame size of {value}")
            self.max_frame_size = value
        elif setting == SETTINGS_ENABLE_PUSH and value > 1:
            raise ProtocolViolation(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")

    def _receive_ping(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self.outbound += frame(PING, ACK, 0, bytes(payload))

    def _receive_reset(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if self.streams.pop(stream_id, None) is not None:
            events.append(Reset(stream_id, _U32.unpack(payload)[0]))

    def _receive_goaway(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if stream_id != 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "GOAWAY too short")
        last_stream_id, error_code = _GOAWAY.unpack_from(payload)
        events.append(Terminated(error_code, last_stream_id & _STREAM_ID_MASK, by_peer=True))

    def _terminate(self, error_code: int, why: bytes) -> None:
        """GOAWAY for a violation by the peer; nothing is read or answered after it. The last
        stream is 0: a client takes no stream the server opened."""
        self.terminated = True
        payload = _GOAWAY.pack(0, error_code) + why
        self.outbound += frame(GOAWAY, 0, 0, payload)
