"""Twin of codec-rs/src/frame.rs: RFC 6455 frames, the layer both decoders share.

Server->client frame encoding (``encode_text``, ``encode_close``, ``encode_ping``), client payload
unmasking, the close reply, and the client-frame loop: the header checks in the documented order
(docs/codec.md), pongs for pings and the fragmentation bookkeeping live in ``FrameDecoder``. A
decoder subclasses it (Rust: implements ``DataFrames``) and supplies what differs: ``_check_data``
(which data opcode is refused, the size limit) and ``_data`` (what a data frame's payload is for).
"""

from __future__ import annotations

import builtins
import operator

from relay.codec._py.close import (
    CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, Close, truncate_utf8,
)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

# Largest control frame payload.
MAX_CONTROL_PAYLOAD = 125


def write_header(opcode: int, length: int) -> bytes:
    """Unmasked FIN frame header."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length <= 0xFFFF:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def encode_text(payload: bytes) -> bytes:
    """One unmasked FIN text frame (server->client)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    return write_header(OP_TEXT, len(payload)) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """Unmasked close frame; ``reason`` is truncated to 123 bytes on a UTF-8 boundary."""
    try:
        code = operator.index(code)
    except TypeError:
        raise TypeError("code must be an int") from None
    if not 1000 <= code <= 4999:
        raise ValueError("close code must be in 1000..4999")
    if not isinstance(reason, str):
        raise TypeError("reason must be a str")
    payload = code.to_bytes(2, "big") + truncate_utf8(reason).encode()
    return write_header(OP_CLOSE, len(payload)) + payload


def encode_ping(payload: bytes = b"") -> bytes:
    """Unmasked ping frame (payload of at most 125 bytes)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("ping payload exceeds 125 bytes")
    return write_header(OP_PING, len(payload)) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def close_reply(payload: bytes) -> Close:
    """The close frame the server sends back for a client close frame payload."""
    if not payload:
        return CLOSE_NORMAL, ""
    if len(payload) == 1:
        return CLOSE_PROTOCOL_ERROR, "close frame payload of 1 byte"
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999):
        return CLOSE_PROTOCOL_ERROR, f"invalid close code {code}"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in close reason"
    return code, ""


class FrameDecoder:
    """Per-connection state and frame loop shared by the decoders; one ``feed`` per socket read.
    ``side`` is already checked (``bindings.side_arg``)."""

    def __init__(self, side: int) -> None:
        self._side = side
        self._peer_connected = False
        self._closed = False
        self._messages = 0
        self._bytes = 0
        self._pending = b""  # raw bytes of an incomplete frame
        self._in_message = False  # inside a fragmented message

    # ---- attributes
    @property
    def peer_connected(self) -> bool:
        return self._peer_connected

    @peer_connected.setter
    def peer_connected(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError("peer_connected must be a bool")
        self._peer_connected = value

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def messages(self) -> int:
        return self._messages

    @property
    def bytes(self) -> int:
        return self._bytes

    # ---- what a decoder supplies
    def _check_data(self, op: int, length: int) -> Close | None:
        """The decoder's own header checks of a data frame, after the fragmentation checks."""
        raise NotImplementedError

    def _before_pong(self, to_sender: list[builtins.bytes]) -> None:
        """Called before a pong is queued (to keep earlier replies in order)."""

    def _data(self, op: int, fin: bool, payload: builtins.bytes, to_peer: list[builtins.bytes],
              to_sender: list[builtins.bytes]) -> Close | None:
        """A complete, unmasked data frame; ``_in_message`` already says whether more follow."""
        raise NotImplementedError

    # ---- the frame loop
    def _feed_frames(self, data: builtins.bytes) -> tuple[list[builtins.bytes], list[builtins.bytes], Close | None]:
        """The frames of the held partial frame + ``data`` (Rust: ``with_pending``); after a close
        the frame state is dropped (the caller drops its own)."""
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        to_peer: list[builtins.bytes] = []
        to_sender: list[builtins.bytes] = []
        if self._closed or not data:
            return to_peer, to_sender, None
        buf = self._pending + data if self._pending else data
        used, close = self._process(buf, to_peer, to_sender)
        if close is None:
            self._pending = buf[used:]
        else:
            self._closed = True
            self._pending = b""
            self._in_message = False
        return to_peer, to_sender, close

    def _process(self, buf: builtins.bytes, to_peer: list[builtins.bytes],
                 to_sender: list[builtins.bytes]) -> tuple[int, Close | None]:
        """Parse the complete frames of ``buf`` (Rust: ``client_frames``); returns (bytes consumed, close)."""
        pos = 0
        end = len(buf)
        while True:
            if end - pos < 2:
                return pos, None
            b0, b1 = buf[pos], buf[pos + 1]
            masked = b1 & 0x80
            len7 = b1 & 0x7F
            ext = 2 if len7 == 126 else 8 if len7 == 127 else 0
            hlen = 2 + ext + (4 if masked else 0)
            if end - pos < hlen:
                return pos, None
            # header checks, in the documented order
            if not masked:
                return pos, (CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            if b0 & 0x70:
                return pos, (CLOSE_PROTOCOL_ERROR, "reserved bits must be zero")
            op = b0 & 0x0F
            if op not in _OPCODES:
                return pos, (CLOSE_PROTOCOL_ERROR, f"unknown opcode {op}")
            fin = bool(b0 & 0x80)
            length = len7 if not ext else int.from_bytes(buf[pos + 2:pos + 2 + ext], "big")
            if length >> 63:
                return pos, (CLOSE_PROTOCOL_ERROR, "frame length has the most significant bit set")
            if op >= OP_CLOSE:
                if not fin:
                    return pos, (CLOSE_PROTOCOL_ERROR, "control frames must not be fragmented")
                if length > MAX_CONTROL_PAYLOAD:
                    return pos, (CLOSE_PROTOCOL_ERROR, "control frame payload exceeds 125 bytes")
            else:
                if op == OP_CONT and not self._in_message:
                    return pos, (CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
                if op != OP_CONT and self._in_message:
                    return pos, (CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
                close = self._check_data(op, length)
                if close is not None:
                    return pos, close
            # wait for the whole payload
            if end - pos - hlen < length:
                return pos, None
            mask = buf[pos + hlen - 4:pos + hlen]
            payload = unmask(buf[pos + hlen:pos + hlen + length], mask)
            pos += hlen + length
            if op == OP_PING:
                self._before_pong(to_sender)
                to_sender.append(write_header(OP_PONG, length) + payload)
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                return pos, close_reply(payload)
            else:
                # a data frame: a message is in progress until a FIN frame ends it
                self._in_message = not fin
                close = self._data(op, fin, payload, to_peer, to_sender)
                if close is not None:
                    return pos, close
