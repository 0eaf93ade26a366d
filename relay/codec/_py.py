"""Pure-Python reference twin of the Rust codec (``relay._codec_rs``).

Same API, same answers on every input: the Rust module is tested against this one. JSON is parsed
with ``orjson.loads`` (orjson 3.13.0 is pinned), which *defines* what a valid envelope is; replies are
encoded with ``orjson.dumps``. The rules are described in docs/codec.md.
"""

from __future__ import annotations

import builtins
import operator
import sys
from collections import deque
from collections.abc import Callable, Iterable

import orjson

# The AWS tunnel decoder's twin lives in its own module; it is re-exported here so that this
# module has the same names as relay._codec_rs.
from relay.codec._aws_py import AwsDecoder, encode_binary
from relay.codec._frames_py import (
    DEVICE, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, SOURCE, Close, FrameDecoder,
    _header, _size_arg, _str_items, _truncate, _Unraisable,
)

__all__ = ["SOURCE", "DEVICE", "IMPLEMENTATION", "Decoder", "AwsDecoder", "encode_text", "encode_binary",
           "encode_close", "encode_ping"]

IMPLEMENTATION: str = "python"

MAX_REQUEST_ID_BYTES = 128

# A device's `command_response` over `max_message_size` is split, up to this many bytes (or
# `max_message_size` when larger): Huawei's device SDK sends each 2048-byte read of terminal
# output as one message, and escaping (6 bytes per control character) makes it up to ~12.4 KB.
DEVICE_SPLIT_CEILING = 16384
# A split needs this much room for `data` in each piece, and at least half the limit: so the
# pieces never outgrow the message more than about twofold (and one character always fits).
_MIN_SPLIT_ROOM = 64

# The `ssh` service's operations (Huawei's), then TCP forwarding's (docs/forwarding.md).
_FORWARDING = ("forward_data", "forward_ack", "forward_close")
_ALLOWED = {
    SOURCE: frozenset(("connect", "command", "disconnect", "ping", "forward_open", *_FORWARDING)),
    DEVICE: frozenset(("connect_response", "command_response", "disconnect", "ping", "forward_open_response", *_FORWARDING)),
}
# Requests that start something: their request_id must be new in the tunnel.
_FRESH_ID_OPS = frozenset(("connect", "command", "forward_open"))
_SIDE_NAME = {SOURCE: "source", DEVICE: "device"}
_NOT_CONNECTED = {SOURCE: "device is not connected", DEVICE: "source is not connected"}

# outcomes of an accepted message (_NOTED: forwarded, and its operation_type is noted)
_FORWARD, _ANSWERED, _CONSUMED, _NOTED = 0, 1, 2, 3


def encode_text(payload: bytes) -> bytes:
    """One unmasked FIN text frame (server->client)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    return _header(OP_TEXT, len(payload)) + payload


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
    payload = code.to_bytes(2, "big") + _truncate(reason).encode()
    return _header(OP_CLOSE, len(payload)) + payload


def encode_ping(payload: bytes = b"") -> bytes:
    """Unmasked ping frame (payload of at most 125 bytes)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("ping payload exceeds 125 bytes")
    return _header(OP_PING, len(payload)) + payload


class Decoder(FrameDecoder):
    """Per-connection decoder of client->server frames; one ``feed`` call per socket read."""

    def __init__(self, side: int, max_message_size: int = 10240, services: Iterable[str] | None = ("ssh",),
                 request_id_window: int = 1024, *, noted: Iterable[str] | None = None,
                 on_note: Callable[[builtins.bytes], object] | None = None) -> None:
        super().__init__(side)
        self._max = _size_arg(max_message_size, "max_message_size")
        # the size a frame header may announce: the device side may send bigger output to split
        self._frame_limit = max(self._max, DEVICE_SPLIT_CEILING) if self._side == DEVICE else self._max
        self._window = _size_arg(request_id_window, "request_id_window")
        if services is None:
            services = ("ssh",)
        if isinstance(services, str):
            raise TypeError("services must be a tuple of str")
        try:
            items = tuple(services)
        except TypeError:
            raise TypeError("services must be a tuple of str") from None
        if not all(isinstance(s, str) for s in items):
            raise TypeError("services must be a tuple of str")
        self._services = frozenset(items)
        noted_items = () if noted is None else _str_items(noted, "noted")
        if on_note is not None and not callable(on_note):
            raise TypeError("on_note must be callable or None")
        self._on_note = on_note
        # without a callback nothing is noted
        self._noted = frozenset(noted_items) if on_note is not None else frozenset()
        self._notes: list[builtins.bytes] = []  # payloads noted during the current feed
        self._frag = bytearray()  # unmasked payload of the fragmented message in progress
        self._ids: set[str] = set()
        self._id_order: deque[str] = deque()
        # request ids of sessions that are over (a device side's: earlier source connections'):
        # their messages are dropped while the peer is connected
        self._retired: frozenset[str] = frozenset()

    def reset(self) -> None:
        """A new connection replaces the old one: drop partial state, keep request-id history and counters."""
        self._pending = b""
        self._frag = bytearray()
        self._in_message = False
        self._closed = False

    def request_ids(self) -> tuple[str, ...]:
        """The request ids this side's requests used, as remembered (the window), oldest first."""
        return tuple(self._id_order)

    def retire_request_ids(self, ids: Iterable[str]) -> None:
        """From now on, while the peer is connected, drop the messages whose request_id is one
        of ``ids``: they belong to a session that is over. Replaces the earlier ids."""
        self._retired = frozenset(_str_items(ids, "ids"))

    # ---- decoding
    def feed(self, data: builtins.bytes) -> tuple[builtins.bytes, builtins.bytes, Close | None]:
        """Feed one read; returns ``(to_peer, to_sender, close)``."""
        to_peer, to_sender, close = self._feed_frames(data)
        if close is not None:
            self._frag = bytearray()
        if self._notes:
            self._report_notes()
        return b"".join(to_peer), b"".join(to_sender), close

    def _report_notes(self) -> None:
        """Call ``on_note`` for each noted payload of this feed, once the decoder is consistent; an
        exception from the callback goes to ``sys.unraisablehook`` (as the Rust twin's
        ``PyErr_WriteUnraisable``) and the next note is still delivered."""
        notes, self._notes = self._notes, []
        callback = self._on_note
        assert callback is not None  # notes are only collected with a callback
        for payload in notes:
            try:
                callback(payload)
            except BaseException as exc:  # noqa: BLE001 - reported, like the Rust twin does
                sys.unraisablehook(_Unraisable(exc, callback))  # type: ignore[arg-type]

    def _check_data(self, op: int, length: int) -> Close | None:
        if op == OP_BINARY:
            return 1003, "binary messages are not supported"
        before = len(self._frag) if op == OP_CONT else 0
        if before + length > self._frame_limit:
            return 1009, f"message exceeds {self._frame_limit} bytes"
        return None

    def _data(self, op: int, fin: bool, payload: builtins.bytes, to_peer: list[builtins.bytes],
              to_sender: list[builtins.bytes]) -> Close | None:
        if op == OP_TEXT:
            if fin:
                return self._message(payload, to_peer, to_sender)
            self._frag = bytearray(payload)
            return None
        self._frag += payload
        if not fin:
            return None
        payload = bytes(self._frag)
        self._frag = bytearray()
        return self._message(payload, to_peer, to_sender)

    def _message(self, payload: builtins.bytes, to_peer: list[builtins.bytes],
                 to_sender: list[builtins.bytes]) -> Close | None:
        """Check one complete text message; forward it, answer it, or return the close to send."""
        try:
            payload.decode("utf-8")  # strict: no overlongs, surrogates or code points > U+10FFFF
        except UnicodeDecodeError:
            if self._side != DEVICE:
                return 1007, "invalid UTF-8 in text message"
            # Huawei's SDK cuts its 2048-byte reads inside a character at times: its output
            # gets U+FFFD for the cut bytes rather than the session ending (docs/codec.md)
            return self._reencoded(payload.decode("utf-8", "replace").encode(), len(payload), to_peer, to_sender,
                                   (1007, "invalid UTF-8 in text message"))
        if len(payload) > self._max:
            return self._reencoded(payload, len(payload), to_peer, to_sender, None)
        result = self._envelope(payload, to_sender)
        if isinstance(result, tuple):
            return (result[0], _truncate(result[1]))
        if result == _FORWARD:
            to_peer.append(_header(OP_TEXT, len(payload)))
            to_peer.append(payload)
        elif result == _NOTED:
            to_peer.append(_header(OP_TEXT, len(payload)))
            to_peer.append(payload)
            self._notes.append(payload)
        self._messages += 1
        self._bytes += len(payload)
        return None

    def _reencoded(self, payload: builtins.bytes, received: int, to_peer: list[builtins.bytes],
                   to_sender: list[builtins.bytes], repaired: Close | None) -> Close | None:
        """A device message over ``max_message_size`` (and within ``DEVICE_SPLIT_CEILING``), or one
        whose invalid UTF-8 was replaced (``repaired``: the close when it cannot be relayed): checked
        like any other, then a ``command_response`` whose ``data`` is a string is forwarded re-encoded,
        as several messages within the limit when needed; anything else is refused with 1009 (or
        ``repaired``) (docs/codec.md)."""
        mark = len(to_sender)
        result = self._envelope(payload, to_sender)
        if isinstance(result, tuple):
            return repaired or (result[0], _truncate(result[1]))
        doc = orjson.loads(payload)
        data = doc.get("data")
        pieces = (split_output(doc["tunnel_service_type"], doc["request_id"], data, self._max)
                  if doc["operation_type"] == "command_response" and isinstance(data, str) else None)
        if pieces is None:
            del to_sender[mark:]   # a pong or 404 answer of a refused message is not sent
            return repaired or (1009, f"message exceeds {self._max} bytes")
        if result in (_FORWARD, _NOTED):
            for piece in pieces:
                to_peer.append(_header(OP_TEXT, len(piece)))
                to_peer.append(piece)
                if result == _NOTED:
                    self._notes.append(piece)
        self._messages += 1
        self._bytes += received
        return None

    def _envelope(self, payload: builtins.bytes, to_sender: list[builtins.bytes]) -> int | Close:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return 4400, "invalid JSON"
        if not isinstance(doc, dict):
            return 4400, "message must be a JSON object"
        op = doc.get("operation_type")
        if not isinstance(op, str):
            return 4400, "operation_type must be a string"
        service = doc.get("tunnel_service_type")
        if not isinstance(service, str):
            return 4400, "tunnel_service_type must be a string"
        if service not in self._services:
            return 4400, f"tunnel_service_type '{service}' is not supported"
        rid = doc.get("request_id")
        if not isinstance(rid, str):
            return 4400, "request_id must be a string"
        if not 1 <= len(rid.encode()) <= MAX_REQUEST_ID_BYTES:
            return 4400, "request_id must be 1 to 128 bytes"
        if op not in _ALLOWED[self._side]:
            return 4403, f"operation_type '{op}' is not allowed from the {_SIDE_NAME[self._side]} side"
        if self._side == SOURCE and op in _FRESH_ID_OPS:
            if rid in self._ids:
                return 4409, "request_id reused"
            self._remember(rid)
        if op == "ping":
            reply = {"operation_type": "pong", "tunnel_service_type": service, "request_id": rid, "data": None}
            to_sender.append(encode_text(orjson.dumps(reply)))
            return _ANSWERED
        if self._peer_connected:
            if self._retired and rid in self._retired:
                return _CONSUMED
            # when nothing is noted this costs one truth test of an empty frozenset
            if self._noted and op in self._noted:
                return _NOTED
            return _FORWARD
        if op == "disconnect":
            return _CONSUMED
        answer: dict[str, object] = {"operation_type": "disconnect", "tunnel_service_type": service,
                                     "request_id": rid,
                                     "data": {"status_code": "404", "status_msg": _NOT_CONNECTED[self._side]}}
        to_sender.append(encode_text(orjson.dumps(answer)))
        return _ANSWERED

    def _remember(self, rid: str) -> None:
        """FIFO window of the last ``request_id_window`` distinct ids."""
        if not self._window:
            return
        self._ids.add(rid)
        self._id_order.append(rid)
        while len(self._id_order) > self._window:
            self._ids.discard(self._id_order.popleft())


def _command_response(service: str, rid: str, data: str) -> builtins.bytes:
    return orjson.dumps({"operation_type": "command_response", "tunnel_service_type": service,
                         "request_id": rid, "data": data})


def _escaped_len(text: str) -> int:
    return len(orjson.dumps(text)) - 2


def split_output(service: str, rid: str, data: str, limit: int) -> list[builtins.bytes] | None:
    """``data`` as ``command_response`` messages of at most ``limit`` bytes each: every piece is
    the longest prefix of what is left that fits (cut between characters); None when the room
    the limit leaves for ``data`` is under half the limit or under 64 bytes."""
    budget = limit - len(_command_response(service, rid, ""))
    if budget < _MIN_SPLIT_ROOM or 2 * budget < limit:
        return None
    pieces: list[str] = []
    start, n = 0, len(data)
    while start < n:
        end = min(n, start + budget)   # a character takes at least one byte
        if _escaped_len(data[start:end]) > budget:
            low, high = start + 1, end - 1   # data[start:low] fits (one character, <= 6 bytes)
            while low < high:   # the longest prefix that fits
                mid = (low + high + 1) // 2
                if _escaped_len(data[start:mid]) <= budget:
                    low = mid
                else:
                    high = mid - 1
            end = low
        pieces.append(data[start:end])
        start = end
    return [_command_response(service, rid, piece) for piece in pieces or [""]]
