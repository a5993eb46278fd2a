"""HPACK (RFC 7541) for pushes: hpack's tables, with its per-header costs cut where pushes pay
them on every request and every answer.

Sending. Every push of a fan-out sends the same headers except two: `:path` (the device token)
and `apns-id`. hpack's encoder gives each header a linear search of the tables, Huffman-codes
every literal in pure Python, and indexes every new value. `PushHeaderEncoder` sends the
per-push values as literals without indexing (the dynamic table is left alone) and uncoded;
every other header goes through hpack (indexed once, then a one-byte reference), and that
reference is remembered until the table changes. The provider token is indexed like any other
constant header, as nghttp2 does for long values: it is no guessable secret, and nothing an
attacker controls shares this compression context.

Receiving. APNs Huffman-codes each answer's `apns-id` and indexes it, so hpack decoded every
answer in full (a nibble at a time, logging every field and integer) to keep its dynamic table
in step, though only `:status` is read. `AnswerHeaderDecoder.status` reads the status on
hpack's header table, with hpack's checks, and decodes only the values it must; with no
dynamic table for answers (SETTINGS_HEADER_TABLE_SIZE 0) that is none but the status. Its
Huffman decoding goes a byte at a time, each (state, byte) step worked out once from hpack's
own nibble table and remembered."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.hpack import encode_integer
from hpack.huffman_table import (
    HUFFMAN_COMPLETE,
    HUFFMAN_EMIT_SYMBOL,
    HUFFMAN_FAIL,
    HUFFMAN_TABLE,
)

PER_PUSH_HEADERS = frozenset({b":path", b"apns-id"})
_LITERAL_NAMES = {b":path": b"\x04"}  # RFC 7541 Appendix A: :path is static entry 4
_INDEXED = 0x80  # the first bit of an indexed header field (RFC 7541 6.1)
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1
SHARED_BLOCKS_KEPT = 16
SharedHeaders = list[tuple[bytes, bytes]]
REMEMBERED_NAMES = 64


def _length(number: int) -> bytes:
    return bytes((number,)) if number < 0x7F else bytes(encode_integer(number, 7))


def literal_without_indexing(name: bytes, value: bytes) -> bytes:
    """RFC 7541 6.2.2: the field as it is, the decoder's dynamic table untouched."""
    prefix = _LITERAL_NAMES.get(name)
    if prefix is None:
        prefix = b"\x00" + _length(len(name)) + name
    return prefix + _length(len(value)) + value


class PushHeaderEncoder(Encoder):
    """hpack's Encoder, with the per-push headers left out of the dynamic table and the
    encoding of every other header remembered while the table stays as it is; `encode_push`
    remembers the whole encoding of the headers a fan-out's pushes share."""

    def __init__(self) -> None:
        super().__init__()
        self.references: dict[tuple[bytes, bytes], bytes] = {}
        self.table_changes = 0  # counts the times the remembered encodings were forgotten
        self.shared_blocks: dict[int, tuple[SharedHeaders, int, bytes]] = {}

    def encode_push(self, path: bytes, apns_id: bytes, shared: SharedHeaders) -> bytes:
        """The header block of one push: `:path`, then `shared` (the pseudo-headers and
        headers its fan-out has in common, pseudo-headers first), then `apns-id`. The encoding
        of `shared` is remembered (by identity: keep the same list) while the table stays as
        it is."""
        size_update = self._size_update()
        remembered = self.shared_blocks.get(id(shared))
        if (
            remembered is not None
            and remembered[0] is shared
            and remembered[1] == self.table_changes
        ):
            block = remembered[2]
        else:
            changes = self.table_changes
            block = self.encode(shared)
            if self.table_changes == changes:  # references only: valid while the table holds
                if len(self.shared_blocks) >= SHARED_BLOCKS_KEPT:
                    self.shared_blocks.clear()
                self.shared_blocks[id(shared)] = (shared, changes, block)
        return (
            size_update
            + literal_without_indexing(b":path", path)
            + block
            + literal_without_indexing(b"apns-id", apns_id)
        )

    def _size_update(self) -> bytes:
        """The table size updates owed since the peer's last SETTINGS_HEADER_TABLE_SIZE (they
        open the next block); entries may have been evicted, so no remembered encoding holds."""
        if not self.header_table.resized:
            return b""
        self.references.clear()
        self.table_changes += 1
        self.header_table.resized = False
        return self._encode_table_size_change()

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """`headers`: (name, value) pairs of bytes, names lowercase."""
        block = [self._size_update()]
        for name, value in headers:
            if name in PER_PUSH_HEADERS:
                block.append(literal_without_indexing(name, value))
                continue
            encoded = self.references.get((name, value))
            if encoded is None:
                encoded = self.add((name, value), False, huffman)
                if encoded[0] & _INDEXED:
                    self.references[(name, value)] = encoded
                else:  # added to the table: every dynamic index moved by one
                    self.references.clear()
                    self.table_changes += 1
            block.append(encoded)
        return b"".join(block)


_huffman_steps: dict[int, tuple[int, int, bytes]] = {}  # state << 8 | byte: the step taken


def _huffman_step(state: int, byte: int) -> tuple[int, int, bytes]:
    """Two steps of hpack's nibble state machine: the state after `byte`, its flags, and
    the symbols it completed."""
    emitted = bytearray()
    flags = 0
    for nibble in (byte >> 4, byte & 0x0F):
        state, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
        if flags & HUFFMAN_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if flags & HUFFMAN_EMIT_SYMBOL:
            emitted.append(symbol)
    return state, flags, bytes(emitted)


def huffman_decoded(coded: bytes) -> bytes:
    """What hpack's `decode_huffman` returns for `coded`, a byte at a time."""
    state, flags = 0, HUFFMAN_COMPLETE
    decoded = []
    steps = _huffman_steps
    for byte in coded:
        step = steps.get(state << 8 | byte)
        if step is None:
            step = steps[state << 8 | byte] = _huffman_step(state, byte)
        state, flags, symbols = step
        decoded.append(symbols)
    if not flags & HUFFMAN_COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return b"".join(decoded)


def _integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1: the integer at `at` and where what follows it starts."""
    if at >= len(block):
        raise HPACKDecodingError("Truncated header block")
    mask = (1 << prefix_bits) - 1
    number = block[at] & mask
    at += 1
    if number < mask:
        return number, at
    shift = 0
    while True:
        if at >= len(block):
            raise HPACKDecodingError("Truncated header block")
        byte = block[at]
        at += 1
        number += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return number, at


def _string(block: bytes, at: int) -> tuple[bool, bytes, int]:
    """RFC 7541 5.2: whether the string literal at `at` is Huffman-coded, its bytes as sent,
    and where what follows it starts."""
    if at >= len(block):
        raise HPACKDecodingError("Truncated header block")
    huffman = bool(block[at] & 0x80)
    length, at = _integer(block, at, 7)
    end = at + length
    if end > len(block):
        raise HPACKDecodingError("Truncated header block")
    return huffman, block[at:end], end


class AnswerHeaderDecoder(Decoder):
    """hpack's Decoder (its table, limits and checks) reading only an answer's `:status`."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.names: dict[bytes, bytes] = {}  # Huffman-coded header names, decoded

    def status(self, block: bytes) -> bytes:
        """The `:status` of a complete header block (b"" without one), the dynamic table kept
        as the encoder keeps it. A value is decoded only when it is read or enters a table with
        room: with SETTINGS_HEADER_TABLE_SIZE 0 (PushConnection asks for it), every value but
        the status is skipped, and each answer's `apns-id` is never Huffman-decoded."""
        table = self.header_table
        status = b""
        list_size = 0
        at, end = 0, len(block)
        while at < end:
            first = block[at]
            if first & 0x80:  # indexed (6.1)
                if first < 0xFF:
                    index, at = first & 0x7F, at + 1
                else:
                    index, at = _integer(block, at, 7)
                name, value = table.get_by_index(index)
            elif first & 0x40:  # literal, indexed (6.2.1)
                name, value, at = self._literal(block, at, 0x3F, table.maxsize > 0)
                if table.maxsize:  # else it cannot enter: the table stays empty
                    table.add(name, value)
            elif first & 0x20:  # table size update (6.3)
                if list_size:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, at = _integer(block, at, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            else:  # literal, not indexed or never indexed (6.2.2, 6.2.3)
                name, value, at = self._literal(block, at, 0x0F, False)
            if name == b":status":
                status = value
            list_size += len(name) + len(value) + _ENTRY_OVERHEAD
            if list_size > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return status

    def _literal(
        self, block: bytes, at: int, name_mask: int, kept: bool
    ) -> tuple[bytes, bytes, int]:
        """The field's name, its value (still coded unless `kept` or the name is `:status`:
        only its length is read), and where the next field starts."""
        if block[at] & name_mask:
            index, at = _integer(block, at, name_mask.bit_length())
            name = self.header_table.get_by_index(index)[0]
        else:
            name, at = self._name(block, at + 1)
        huffman, value, at = _string(block, at)
        if huffman and (kept or name == b":status"):
            value = huffman_decoded(value)
        return name, value, at

    def _name(self, block: bytes, at: int) -> tuple[bytes, int]:
        """A literal name: the same few in every answer, so their decoding is remembered."""
        huffman, name, end = _string(block, at)
        if huffman:
            decoded = self.names.get(name)
            if decoded is None:
                if len(self.names) >= REMEMBERED_NAMES:
                    self.names.clear()
                decoded = self.names[name] = huffman_decoded(name)
            name = decoded
        return name, end
