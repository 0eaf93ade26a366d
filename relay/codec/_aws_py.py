"""Pure-Python reference twin of the Rust ``AwsDecoder`` (codec-rs/src/aws.rs).

The decoder of the AWS IoT Secure Tunneling protocol (V1-V3): client->server WebSocket frames in,
the tunnel messages that break no rule out, unchanged, re-framed as server binary frames. What a
well-formed tunnel message is, is defined by ``relay.aws_messages.decode``. The rules and close
codes are in docs/codec.md.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Iterable

from relay.aws_messages import MAX_PAYLOAD, MessageType, ProxyMessage, decode, frame
from relay.codec._py import (
    DEVICE, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, SOURCE, Close,
    _close_reply, _header, _OPCODES, _size_arg, _str_items, _truncate, _unmask,
)

__all__ = ["AwsDecoder", "encode_binary", "FRAME_CAP"]

# Largest WebSocket frame payload accepted, and largest one written: the limit of the
# aws.iot.securetunneling-3.0 protocol (2 x (64 KiB + 2)), the AWS local proxy's frame size.
FRAME_CAP = 131076

TEXT_REFUSED = "text messages are not supported: this endpoint speaks the binary AWS tunnel protocol"

_KNOWN_TYPES = frozenset(range(MessageType.DATA, MessageType.CONNECTION_RESET + 1))
_RELAY_ONLY = frozenset((MessageType.SERVICE_IDS, MessageType.SESSION_RESET))
_SOURCE_ONLY = frozenset((MessageType.STREAM_START, MessageType.CONNECTION_START))
_ANSWERED_WHEN_ALONE = frozenset((MessageType.DATA, MessageType.STREAM_START, MessageType.CONNECTION_START))


def encode_binary(payload: bytes) -> bytes:
    """One unmasked FIN binary frame (server->client)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    return _header(OP_BINARY, len(payload)) + payload


def _pack(messages: list[bytes]) -> bytes:
    """Whole tunnel messages, greedily packed into binary frames of at most FRAME_CAP bytes."""
    out: list[bytes] = []
    group: list[bytes] = []
    total = 0
    for m in messages:
        if total + len(m) > FRAME_CAP:
            out.append(_header(OP_BINARY, total))
            out += group
            group, total = [], 0
        group.append(m)
        total += len(m)
    if group:
        out.append(_header(OP_BINARY, total))
        out += group
    return b"".join(out)


class AwsDecoder:
    """Per-connection decoder of client->server frames of an AWS tunnel; one ``feed`` per read."""

    def __init__(self, side: int, services: Iterable[str] | None = None, max_payload: int = MAX_PAYLOAD) -> None:
        try:
            side = operator.index(side)
        except TypeError:
            side = -1
        if side not in (SOURCE, DEVICE):
            raise ValueError("side must be SOURCE (0) or DEVICE (1)")
        self._side = side
        self._services = frozenset(() if services is None else _str_items(services, "services"))
        self._max_payload = _size_arg(max_payload, "max_payload")
        self._peer_connected = False
        self._closed = False
        self._messages = 0
        self._bytes = 0
        self._pending = b""  # raw bytes of an incomplete frame
        self._in_message = False  # inside a fragmented binary message
        self._stream = b""  # unmasked bytes of an incomplete tunnel message
        self._replies: list[builtins.bytes] = []  # STREAM_RESET answers not yet written to to_sender

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

    def reset(self) -> None:
        """A new connection replaces the old one: drop partial state, keep the counters."""
        self._pending = b""
        self._in_message = False
        self._stream = b""
        self._closed = False

    # ---- decoding
    def feed(self, data: builtins.bytes) -> tuple[builtins.bytes, builtins.bytes, Close | None]:
        """Feed one read; returns ``(to_peer, to_sender, close)``."""
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        if self._closed or not data:
            return b"", b"", None
        buf = self._pending + data if self._pending else data
        to_peer: list[builtins.bytes] = []
        to_sender: list[builtins.bytes] = []
        used, close = self._process(buf, to_peer, to_sender)
        self._flush_replies(to_sender)
        if close is None:
            self._pending = buf[used:]
        else:
            self._closed = True
            self._pending = b""
            self._in_message = False
            self._stream = b""
        return _pack(to_peer), b"".join(to_sender), close

    def _flush_replies(self, to_sender: list[builtins.bytes]) -> None:
        if self._replies:
            to_sender.append(_pack(self._replies))
            self._replies = []

    def _process(self, buf: builtins.bytes, to_peer: list[builtins.bytes],
                 to_sender: list[builtins.bytes]) -> tuple[int, Close | None]:
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
            if not masked:
                return pos, (1002, "client frames must be masked")
            if b0 & 0x70:
                return pos, (1002, "reserved bits must be zero")
            op = b0 & 0x0F
            if op not in _OPCODES:
                return pos, (1002, f"unknown opcode {op}")
            fin = bool(b0 & 0x80)
            length = len7 if not ext else int.from_bytes(buf[pos + 2:pos + 2 + ext], "big")
            if length >> 63:
                return pos, (1002, "frame length has the most significant bit set")
            if op >= OP_CLOSE:
                if not fin:
                    return pos, (1002, "control frames must not be fragmented")
                if length > MAX_CONTROL_PAYLOAD:
                    return pos, (1002, "control frame payload exceeds 125 bytes")
            else:
                if op == OP_CONT and not self._in_message:
                    return pos, (1002, "unexpected continuation frame")
                if op != OP_CONT and self._in_message:
                    return pos, (1002, "expected a continuation frame")
                if op == OP_TEXT:
                    return pos, (1003, TEXT_REFUSED)
                if length > FRAME_CAP:
                    return pos, (1009, f"frame exceeds {FRAME_CAP} bytes")
            if end - pos - hlen < length:
                return pos, None
            mask = buf[pos + hlen - 4:pos + hlen]
            payload = _unmask(buf[pos + hlen:pos + hlen + length], mask)
            pos += hlen + length
            if op == OP_PING:
                self._flush_replies(to_sender)
                to_sender.append(_header(OP_PONG, length) + payload)
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                return pos, _close_reply(payload)
            else:  # binary or continuation: more of the tunnel-message stream
                self._in_message = not fin
                close = self._tunnel_messages(payload, to_peer)
                if close is not None:
                    return pos, close

    def _tunnel_messages(self, payload: builtins.bytes, to_peer: list[builtins.bytes]) -> Close | None:
        """Check every complete tunnel message of the stream."""
        stream = self._stream + payload if self._stream else payload
        pos = 0
        end = len(stream)
        try:
            while end - pos >= 2:
                n = stream[pos] << 8 | stream[pos + 1]
                if n == 0:
                    return 4400, "empty tunnel message"
                if end - pos - 2 < n:
                    break
                raw = stream[pos:pos + 2 + n]
                pos += 2 + n
                close = self._message(raw, to_peer)
                if close is not None:
                    return close
        finally:
            self._stream = stream[pos:]
        return None

    def _message(self, raw: builtins.bytes, to_peer: list[builtins.bytes]) -> Close | None:
        """One framed tunnel message (prefix included): forward it, answer it, drop it, or refuse it."""
        try:
            msg = decode(raw[2:])
        except ValueError as exc:
            return 4400, f"invalid tunnel message: {exc}"
        if len(msg.payload) > self._max_payload:
            return 1009, f"payload exceeds {self._max_payload} bytes"
        t = msg.type
        if t not in _KNOWN_TYPES:
            if not msg.ignorable:
                return 4400, f"unknown message type {int(t)}"
        else:
            if t in _RELAY_ONLY:
                return 4403, f"{MessageType(t).name} is only sent by the relay"
            if t in _SOURCE_ONLY and self._side != SOURCE:
                return 4403, f"{MessageType(t).name} is only sent by the source"
            if self._services and msg.service_id and msg.service_id not in self._services:
                return 4400, _truncate(f"serviceId '{msg.service_id}' is not one of the tunnel's services")
            if self._peer_connected:
                to_peer.append(raw)
            elif t in _ANSWERED_WHEN_ALONE:
                try:
                    self._replies.append(frame(ProxyMessage(MessageType.STREAM_RESET, stream_id=msg.stream_id,
                                                            service_id=msg.service_id,
                                                            connection_id=msg.connection_id)))
                except ValueError:
                    pass  # an answer too big for the 2-byte length (a ~64 KiB serviceId) is not sent
        self._messages += 1
        self._bytes += len(msg.payload)
        return None
