"""h2 for a stream of pushes: what h2 does per request, made cheap for APNs's requests.

Every push of a fan-out sends the same headers except two: `:path` (the device token) and
`apns-id`. hpack's encoder gives each header a linear search of the tables, Huffman-codes every
literal in pure Python, and indexes every new value; h2 in front of it never indexes
`authorization` at all. So each push paid for Huffman-coding its ~200-byte provider token, and
the two per-push values, indexed, pushed the constant headers out of the 4 KiB dynamic table
every ~20 pushes, to be coded and indexed again.

`PushHeaderEncoder` sends the per-push values as literals without indexing (the dynamic table
is left alone) and uncoded; every other header goes through hpack as before (indexed once,
then a one-byte reference), and that reference is remembered until the table changes. The
provider token is indexed like any other constant header, as nghttp2 does for long values: it
is no guessable secret, and nothing an attacker controls shares this compression context."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import Encoder
from hpack.hpack import encode_integer

PER_PUSH_HEADERS = frozenset({b":path", b"apns-id"})
STREAMS_KEPT = 512  # streams, open or closed, a connection holds before it walks them
_STATIC_NAME_INDEX = {b":path": 4}  # RFC 7541 Appendix A
_INDEXED = 0x80  # the first bit of an indexed header field (RFC 7541 6.1)


def literal_without_indexing(name: bytes, value: bytes) -> bytes:
    """RFC 7541 6.2.2: the field as it is, the decoder's dynamic table untouched."""
    name_index = _STATIC_NAME_INDEX.get(name)
    if name_index is not None:
        prefix = bytes(encode_integer(name_index, 4))
    else:
        prefix = b"\x00" + bytes(encode_integer(len(name), 7)) + name
    return prefix + bytes(encode_integer(len(value), 7)) + value


class PushHeaderEncoder(Encoder):
    """hpack's Encoder, with the per-push headers left out of the dynamic table and the
    encoding of every other header remembered while the table stays as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.references: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """`headers`: (name, value) pairs of bytes, names lowercase, as h2 passes them."""
        block = []
        if self.header_table.resized:  # entries may have been evicted: no reference holds
            self.references.clear()
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
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
            block.append(encoded)
        return b"".join(block)


class PushConnection(H2Connection):
    """A client H2Connection for pushes: headers encoded by PushHeaderEncoder and neither
    normalized nor checked (they are ours, lowercase and fixed; of an answer only `:status`,
    `apns-id` and the body are read).

    And h2 counts the open streams before opening each new one by walking every stream it
    holds (pruning the closed ones as it goes): ~100 steps a push with 100 in flight. While it
    holds fewer than STREAMS_KEPT (and fewer than the peer's MAX_CONCURRENT_STREAMS), their
    number is an upper bound that passes h2's check exactly when the true count does; past
    that, h2 walks and prunes as before (once every few hundred pushes)."""

    def __init__(self) -> None:
        super().__init__(
            H2Configuration(
                client_side=True,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.encoder = PushHeaderEncoder()

    @property
    def open_outbound_streams(self) -> int:
        held = len(self.streams)
        if held < min(STREAMS_KEPT, self.remote_settings.max_concurrent_streams):
            return held
        return super().open_outbound_streams
