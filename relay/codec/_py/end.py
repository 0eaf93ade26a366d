"""Twin of codec-rs/src/end.rs: the ends' codec, what the device agent and
`relay forward`, WebSocket *clients* of the relay, do per socket read (docs/codec.md, "The ends'
codec").

Outgoing: TCP bytes -> masked client frames (a fresh mask key per frame, from ``urandom``):
``forward_data`` envelopes of the Huawei ``tcp`` service (relay/ends/huawei_tcp.py's JSON, via
``relay.envelope.build``) in text frames, AWS DATA messages (``relay.aws_messages.frame``) in
binary frames. Incoming: the relay's unmasked frames -> ``(items, to_send, close)``: the decoded
data grouped per connection and the other messages raw, in order; masked pongs; the close.
"""

from __future__ import annotations

import base64
import binascii
import operator
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from relay.envelope import build as build_envelope
from relay.aws_messages import MAX_PAYLOAD, MessageType, ProxyMessage, decode, encode
from relay.codec._py import json
from relay.codec._py.aws import CLOSE_INVALID_MESSAGE, FRAME_CAP, TEXT_REFUSED
from relay.codec._py.close import truncate_utf8
from relay.codec._py.envelope import CLOSE_INVALID_ENVELOPE
from relay.codec._py.frame import (
    MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, close_reply,
)

__all__ = ["EndCodec", "AwsEndCodec", "CHUNK", "MAX_MESSAGE", "MASK_POOL"]

CHUNK = 7000            # raw bytes per forward_data (relay/ends/huawei_tcp.py's CHUNK)
MAX_MESSAGE = 1 << 20   # default limit of one incoming Huawei message
MASK_POOL = 1024        # mask keys come from urandom(MASK_POOL), 4 bytes per frame
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
_MAX_SERVICE_ID = 0xFFFF - 32   # a DATA message must fit its 2-byte length with some payload

# An item: (key..., bytes); a close: (code, reason, by_server).
Close = tuple[int, str, bool]
K = TypeVar("K")


def _mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _client_header(opcode: int, length: int, mask: bytes) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + mask
    if length <= 0xFFFF:
        return bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big") + mask
    return bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big") + mask


def _size(value: int, name: str, minimum: int) -> int:
    value = operator.index(value)
    if not minimum <= value < 1 << 63:
        raise ValueError(f"{name} must be >= {minimum}")
    return value


_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _canonical_b64(text: str, chunk: int) -> bytes | None:
    """The bytes of ``text`` if it is non-empty canonical base64 (what ``base64.b64encode``
    writes: length a multiple of 4, ``=`` only as the last one or two characters, unused bits
    zero) of at most ``chunk`` bytes; else None."""
    if not text or len(text) % 4 or not text.isascii():
        return None
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    if text.endswith("=="):
        if _B64_VALUES[ord(text[-3])] & 0xF:
            return None
    elif text.endswith("=") and _B64_VALUES[ord(text[-2])] & 0x3:
        return None
    return raw if len(raw) <= chunk else None


class _Client(Generic[K]):
    """What both classes share: mask keys, control frames, and the server-frame loop (the rules of
    the relay's client-frame loop, frame.FrameDecoder, with the mask bit the other way)."""

    def __init__(self, urandom: Callable[[int], bytes] | None) -> None:
        if urandom is None:
            urandom = os.urandom
        elif not callable(urandom):
            raise TypeError("urandom must be callable or None")
        self._urandom = urandom
        self._pool = b""
        self._pos = 0
        self._pending = b""
        self._in_message = False
        self._message_op = 0
        self._so_far = 0
        self._closed = False
        self._messages = 0

    # ---- masks and frames
    def _next_mask(self) -> bytes:
        if self._pos + 4 > len(self._pool):
            pool = self._urandom(MASK_POOL)
            if not isinstance(pool, bytes):
                raise TypeError("urandom must return bytes")
            if len(pool) != MASK_POOL:
                raise ValueError(f"urandom must return {MASK_POOL} bytes")
            self._pool, self._pos = pool, 0
        mask = self._pool[self._pos:self._pos + 4]
        self._pos += 4
        return mask

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = self._next_mask()
        return _client_header(opcode, len(payload), mask) + _mask(payload, mask)

    def ping(self, payload: bytes = b"") -> bytes:
        if not isinstance(payload, bytes):
            raise TypeError("payload must be bytes")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("ping payload exceeds 125 bytes")
        return self._frame(OP_PING, payload)

    def close(self, code: int, reason: str = "") -> bytes:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError("code must be an int")
        if not 1000 <= code <= 4999:
            raise ValueError("close code must be in 1000..4999")
        if not isinstance(reason, str):
            raise TypeError("reason must be str")
        return self._frame(OP_CLOSE, code.to_bytes(2, "big") + truncate_utf8(reason).encode())

    # ---- attributes
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def messages(self) -> int:
        return self._messages

    def reset(self) -> None:
        self._pending = b""
        self._in_message = False
        self._so_far = 0
        self._closed = False
        self._clear()

    # ---- what a protocol supplies
    def _check(self, op: int, length: int, so_far: int) -> tuple[int, str] | None:
        raise NotImplementedError

    def _data(self, fin: bool, payload: bytes, out: _Out[K]) -> tuple[int, str] | None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    # ---- the frame loop
    def _feed(self, data: bytes) -> _Out[K]:
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        out: _Out[K] = _Out()
        if self._closed or not data:
            return out
        buf = self._pending + data if self._pending else data
        used = self._frames(buf, out)
        if out.close is None:
            self._pending = buf[used:]
        else:
            self._closed = True
            self._in_message = False
            self._pending = b""
            self._clear()
        return out

    def _frames(self, buf: bytes, out: _Out[K]) -> int:
        pos, end = 0, len(buf)
        while True:
            if end - pos < 2:
                return pos
            b0, b1 = buf[pos], buf[pos + 1]
            len7 = b1 & 0x7F
            ext = 2 if len7 == 126 else 8 if len7 == 127 else 0
            masked = b1 & 0x80
            hlen = 2 + ext + (4 if masked else 0)
            if end - pos < hlen:
                return pos
            if masked:
                out.violation(1002, "server frames must not be masked")
                return pos
            if b0 & 0x70:
                out.violation(1002, "reserved bits must be zero")
                return pos
            op = b0 & 0x0F
            if op not in _OPCODES:
                out.violation(1002, f"unknown opcode {op}")
                return pos
            fin = bool(b0 & 0x80)
            length = len7 if not ext else int.from_bytes(buf[pos + 2:pos + 2 + ext], "big")
            if length >> 63:
                out.violation(1002, "frame length has the most significant bit set")
                return pos
            if op >= OP_CLOSE:
                if not fin:
                    out.violation(1002, "control frames must not be fragmented")
                    return pos
                if length > MAX_CONTROL_PAYLOAD:
                    out.violation(1002, "control frame payload exceeds 125 bytes")
                    return pos
            else:
                if op == OP_CONT and not self._in_message:
                    out.violation(1002, "unexpected continuation frame")
                    return pos
                if op != OP_CONT and self._in_message:
                    out.violation(1002, "expected a continuation frame")
                    return pos
                refused = self._check(self._message_op if op == OP_CONT else op, length,
                                      self._so_far if op == OP_CONT else 0)
                if refused is not None:
                    out.violation(*refused)
                    return pos
            if end - pos - hlen < length:
                return pos
            payload = buf[pos + hlen:pos + hlen + length]
            pos += hlen + length
            if op == OP_PING:
                out.to_send.append(self._frame(OP_PONG, payload))
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                out.close = _server_close(payload)
                return pos
            else:
                if op != OP_CONT:
                    self._message_op = op
                    self._so_far = 0
                self._so_far += length
                self._in_message = not fin
                if fin:
                    self._messages += 1
                refused = self._data(fin, payload, out)
                if refused is not None:
                    out.violation(*refused)
                    return pos


class _Out(Generic[K]):
    """One feed's result under construction."""

    __slots__ = ("items", "to_send", "close")

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.to_send: list[bytes] = []
        self.close: Close | None = None

    def violation(self, code: int, reason: str) -> None:
        self.close = (code, truncate_utf8(reason), False)

    def data(self, key: tuple[Any, ...], raw: bytes) -> None:
        """Decoded data of the connection ``key``, joined with the item before when it is the same
        connection's data."""
        if self.items and self.items[-1][0] is not None and self.items[-1][:-1] == key:
            self.items[-1] = (*key, self.items[-1][-1] + raw)
        else:
            self.items.append((*key, raw))

    def result(self) -> tuple[list[tuple[Any, ...]], bytes, Close | None]:
        return self.items, b"".join(self.to_send), self.close


def _server_close(payload: bytes) -> Close:
    """The relay's close frame: its code and reason when valid (empty: 1000), else the violation."""
    if not payload:
        return 1000, "", True
    code, reason = close_reply(payload)
    if len(payload) >= 2 and not reason and code == int.from_bytes(payload[:2], "big"):
        return code, payload[2:].decode("utf-8"), True
    return code, reason, False


class EndCodec(_Client[str]):
    """The Huawei-protocol end's codec: ``forward_data`` out, the relay's messages in."""

    def __init__(self, chunk: int = CHUNK, max_message_size: int = MAX_MESSAGE, *,
                 urandom: Callable[[int], bytes] | None = None) -> None:
        self._chunk = _size(chunk, "chunk", 1)
        self._max = _size(max_message_size, "max_message_size", 0)
        super().__init__(urandom)
        self._fragments = b""

    def data(self, conn_id: str, raw: bytes) -> bytes:
        """``raw`` as forward_data messages of ``conn_id`` (at most ``chunk`` bytes each), masked text frames."""
        if not isinstance(conn_id, str):
            raise TypeError("conn_id must be str")
        if not isinstance(raw, bytes):
            raise TypeError("raw must be bytes")
        chunk = self._chunk
        return b"".join(self._frame(OP_TEXT, build_envelope("forward_data", conn_id,
                                                            base64.b64encode(raw[i:i + chunk]).decode(), "tcp"))
                        for i in range(0, len(raw), chunk))

    def text(self, message: bytes | str) -> bytes:
        """One masked text frame (an envelope built elsewhere)."""
        if isinstance(message, str):
            message = message.encode()
        elif not isinstance(message, bytes):
            raise TypeError("message must be bytes or str")
        return self._frame(OP_TEXT, message)

    def feed(self, data: bytes) -> tuple[list[tuple[str | None, bytes]], bytes, Close | None]:
        """One read of the WebSocket: (items, to_send, close)."""
        return self._feed(data).result()

    def _check(self, op: int, length: int, so_far: int) -> tuple[int, str] | None:
        if op == OP_BINARY:
            return 1003, "binary messages are not supported"
        if length > self._max - min(so_far, self._max):
            return 1009, f"message exceeds {self._max} bytes"
        return None

    def _data(self, fin: bool, payload: bytes, out: _Out[str]) -> tuple[int, str] | None:
        if not fin:
            self._fragments += payload
            return None
        if self._fragments:
            payload, self._fragments = self._fragments + payload, b""
        return self._message(payload, out)

    def _clear(self) -> None:
        self._fragments = b""

    def _message(self, msg: bytes, out: _Out[str]) -> tuple[int, str] | None:
        try:
            doc = json.loads(msg)
        except json.JsonError:
            try:
                msg.decode("utf-8")
            except UnicodeDecodeError:
                return 1007, "invalid UTF-8 in text message"
            return CLOSE_INVALID_ENVELOPE, "invalid JSON"
        if not isinstance(doc, dict):
            return CLOSE_INVALID_ENVELOPE, "message must be a JSON object"
        rid, text = doc.get("request_id"), doc.get("data")
        if (doc.get("operation_type") == "forward_data" and doc.get("tunnel_service_type") == "tcp"
                and isinstance(rid, str) and isinstance(text, str)):
            raw = _canonical_b64(text, self._chunk)
            if raw is not None:
                out.data((rid,), raw)
                return None
        out.items.append((None, msg))
        return None


class AwsEndCodec(_Client[tuple[str, int, int]]):
    """The AWS-protocol end's codec: DATA messages out, the relay's tunnel messages in."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, *, urandom: Callable[[int], bytes] | None = None) -> None:
        self._max_payload = _size(max_payload, "max_payload", 1)
        super().__init__(urandom)
        self._stream = b""

    def data(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> bytes:
        """``raw`` as DATA messages (at most ``max_payload`` bytes each), one masked binary frame each."""
        if not isinstance(service_id, str):
            raise TypeError("service_id must be str")
        stream_id, connection_id = operator.index(stream_id), operator.index(connection_id)
        if not -(1 << 31) <= stream_id < 1 << 31:
            raise ValueError("stream_id must fit in an int32")
        if not 0 <= connection_id < 1 << 32:
            raise ValueError("connection_id must fit in a uint32")
        if not isinstance(raw, bytes):
            raise TypeError("raw must be bytes")
        if len(service_id.encode()) > _MAX_SERVICE_ID:
            raise ValueError("service_id is too long for a tunnel message")
        # fields around the payload: the message must fit its 2-byte length
        around = len(encode(ProxyMessage(MessageType.DATA, stream_id, service_id=service_id,
                                         connection_id=connection_id)))
        size = max(1, min(self._max_payload, 0xFFFF - around - 4))
        out = []
        for i in range(0, len(raw), size):
            message = ProxyMessage(MessageType.DATA, stream_id, payload=raw[i:i + size], service_id=service_id,
                                   connection_id=connection_id)
            body = encode(message)
            out.append(self._frame(OP_BINARY, len(body).to_bytes(2, "big") + body))
        return b"".join(out)

    def binary(self, message: bytes) -> bytes:
        """One masked binary frame (tunnel messages built elsewhere)."""
        if not isinstance(message, bytes):
            raise TypeError("message must be bytes")
        return self._frame(OP_BINARY, message)

    def feed(self, data: bytes) -> tuple[list[tuple[str | None, int, int, bytes]], bytes, Close | None]:
        """One read of the WebSocket: (items, to_send, close)."""
        return self._feed(data).result()

    def _check(self, op: int, length: int, so_far: int) -> tuple[int, str] | None:
        if op == OP_TEXT:
            return 1003, TEXT_REFUSED
        if length > FRAME_CAP:
            return 1009, f"frame exceeds {FRAME_CAP} bytes"
        return None

    def _data(self, fin: bool, payload: bytes, out: _Out[tuple[str, int, int]]) -> tuple[int, str] | None:
        stream = self._stream + payload if self._stream else payload
        pos, end = 0, len(stream)
        refused = None
        while end - pos >= 2:
            n = stream[pos] << 8 | stream[pos + 1]
            if n == 0:
                refused = CLOSE_INVALID_MESSAGE, "empty tunnel message"
                break
            if end - pos - 2 < n:
                break
            body = stream[pos + 2:pos + 2 + n]
            try:
                msg = decode(body)
            except ValueError as exc:
                refused = CLOSE_INVALID_MESSAGE, f"invalid tunnel message: {exc}"
                break
            if len(msg.payload) > self._max_payload:
                refused = 1009, f"payload exceeds {self._max_payload} bytes"
                break
            pos += 2 + n
            if msg.type == MessageType.DATA:
                if msg.payload:
                    out.data((msg.service_id, msg.stream_id, msg.connection_id), msg.payload)
            else:
                out.items.append((None, 0, 0, body))
        self._stream = stream[pos:]
        return refused

    def _clear(self) -> None:
        self._stream = b""

