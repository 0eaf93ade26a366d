"""Twin of codec-rs/src/envelope.rs: the Huawei IoTDA v5 tunnel envelope's rules.

Per complete text message: the JSON envelope's fields, which ``operation_type`` each side may
send, the request-id window, the answers the relay writes itself (``pong``, the 404
``disconnect``), the retired request ids, and the split of a device's oversized
``command_response`` (``split_output``). The rules are listed in docs/codec.md.
"""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Iterable

from relay.codec._py import json
from relay.codec._py.close import CLOSE_NOT_ALLOWED, Close
from relay.codec._py.frame import encode_text

SOURCE: int = 0
DEVICE: int = 1

CLOSE_INVALID_ENVELOPE = 4400
CLOSE_REQUEST_ID_REUSED = 4409

MAX_REQUEST_ID_BYTES = 128

# A device's `command_response` over `max_message_size` is split, up to this many bytes (or
# `max_message_size` when larger): Huawei's device SDK sends each 2048-byte read of terminal
# output as one message, and escaping (6 bytes per control character) makes it up to ~12.4 KB.
DEVICE_SPLIT_CEILING = 16384
# A split needs this much room for `data` in each piece, and at least half the limit: so the
# pieces never outgrow the message more than about twofold (and one character always fits).
MIN_SPLIT_ROOM = 64

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

# Outcomes of an accepted message (Rust: `Outcome`)
FORWARD, FORWARD_NOTED, ANSWERED, CONSUMED = 0, 1, 2, 3


class Policy:
    """Per-side envelope policy plus the request-id history."""

    def __init__(self, side: int, services: Iterable[str], request_id_window: int) -> None:
        self.side = side
        self.services = frozenset(services)
        self._window = request_id_window
        self._ids: set[str] = set()
        self._id_order: deque[str] = deque()
        # `operation_type`s whose forwarded messages are FORWARD_NOTED
        self.noted: frozenset[str] = frozenset()
        # request ids of sessions that are over (a device side's: earlier source connections'):
        # their messages are dropped while the peer is connected
        self._retired: frozenset[str] = frozenset()

    def request_ids(self) -> tuple[str, ...]:
        """The ids in the window, oldest first."""
        return tuple(self._id_order)

    def retire(self, ids: Iterable[str]) -> None:
        """Replace the retired request ids (an empty set retires none)."""
        self._retired = frozenset(ids)

    def check(self, payload: builtins.bytes, peer_connected: bool, to_sender: list[builtins.bytes]) -> int | Close:
        """The envelope rules of one complete, valid UTF-8 text message: an outcome, or the close to
        send. Replies go to ``to_sender``."""
        try:
            doc = json.loads(payload)
        except json.JsonError:
            return CLOSE_INVALID_ENVELOPE, "invalid JSON"
        if not isinstance(doc, dict):
            return CLOSE_INVALID_ENVELOPE, "message must be a JSON object"
        op = doc.get("operation_type")
        if not isinstance(op, str):
            return CLOSE_INVALID_ENVELOPE, "operation_type must be a string"
        service = doc.get("tunnel_service_type")
        if not isinstance(service, str):
            return CLOSE_INVALID_ENVELOPE, "tunnel_service_type must be a string"
        if service not in self.services:
            return CLOSE_INVALID_ENVELOPE, f"tunnel_service_type '{service}' is not supported"
        rid = doc.get("request_id")
        if not isinstance(rid, str):
            return CLOSE_INVALID_ENVELOPE, "request_id must be a string"
        if not 1 <= len(rid.encode()) <= MAX_REQUEST_ID_BYTES:
            return CLOSE_INVALID_ENVELOPE, "request_id must be 1 to 128 bytes"
        side = self.side
        if op not in _ALLOWED[side]:
            return CLOSE_NOT_ALLOWED, f"operation_type '{op}' is not allowed from the {_SIDE_NAME[side]} side"
        if side == SOURCE and op in _FRESH_ID_OPS:
            if rid in self._ids:
                return CLOSE_REQUEST_ID_REUSED, "request_id reused"
            self._remember(rid)
        if op == "ping":
            reply = {"operation_type": "pong", "tunnel_service_type": service, "request_id": rid, "data": None}
            to_sender.append(encode_text(json.dumps(reply)))
            return ANSWERED
        if peer_connected:
            if self._retired and rid in self._retired:
                return CONSUMED
            # when nothing is noted this costs one truth test of an empty frozenset
            if self.noted and op in self.noted:
                return FORWARD_NOTED
            return FORWARD
        if op == "disconnect":
            return CONSUMED
        answer: dict[str, object] = {"operation_type": "disconnect", "tunnel_service_type": service,
                                     "request_id": rid,
                                     "data": {"status_code": "404", "status_msg": _NOT_CONNECTED[side]}}
        to_sender.append(encode_text(json.dumps(answer)))
        return ANSWERED

    def _remember(self, rid: str) -> None:
        """FIFO window of the last ``request_id_window`` distinct ids."""
        if not self._window:
            return
        self._ids.add(rid)
        self._id_order.append(rid)
        while len(self._id_order) > self._window:
            self._ids.discard(self._id_order.popleft())


def command_response(service: str, rid: str, data: str) -> builtins.bytes:
    return json.dumps({"operation_type": "command_response", "tunnel_service_type": service,
                       "request_id": rid, "data": data})


def split_output(service: str, rid: str, data: str, limit: int) -> list[builtins.bytes] | None:
    """``data`` as ``command_response`` messages of at most ``limit`` bytes each: every piece is
    the longest prefix of what is left that fits (cut between characters); None when the room
    the limit leaves for ``data`` is under half the limit or under 64 bytes."""
    budget = limit - len(command_response(service, rid, ""))
    if budget < MIN_SPLIT_ROOM or 2 * budget < limit:
        return None
    pieces: list[str] = []
    start, n = 0, len(data)
    while start < n:
        end = min(n, start + budget)   # a character takes at least one byte
        if json.escaped_len(data[start:end]) > budget:
            low, high = start + 1, end - 1   # data[start:low] fits (one character, <= 6 bytes)
            while low < high:   # the longest prefix that fits
                mid = (low + high + 1) // 2
                if json.escaped_len(data[start:mid]) <= budget:
                    low = mid
                else:
                    high = mid - 1
            end = low
        pieces.append(data[start:end])
        start = end
    return [command_response(service, rid, piece) for piece in pieces or [""]]
