"""Twin of codec-rs/src/decoder.rs: the Huawei tunnel's per-connection decoder.

Client->server frames in (the frame loop of ``frame.FrameDecoder``), text messages reassembled,
checked (UTF-8 here, the envelope in ``envelope.Policy``) and forwarded unchanged as server text
frames, answered, or refused with the close to send; the noted payloads reported after the read.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable

from relay.codec._py import json
from relay.codec._py.bindings import callback_arg, services_arg, side_arg, size_arg, str_items, write_unraisable
from relay.codec._py.close import CLOSE_INVALID_PAYLOAD, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, Close, truncate_utf8
from relay.codec._py.envelope import (
    DEVICE, DEVICE_SPLIT_CEILING, FORWARD, FORWARD_NOTED, Policy, split_output,
)
from relay.codec._py.frame import OP_BINARY, OP_CONT, OP_TEXT, FrameDecoder, write_header

_INVALID_UTF8: Close = (CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in text message")


class Decoder(FrameDecoder):
    """Per-connection decoder of client->server frames; one ``feed`` call per socket read."""

    def __init__(self, side: int, max_message_size: int = 10240, services: Iterable[str] | None = ("ssh",),
                 request_id_window: int = 1024, *, noted: Iterable[str] | None = None,
                 on_note: Callable[[builtins.bytes], object] | None = None) -> None:
        super().__init__(side_arg(side))
        self._max = size_arg(max_message_size, "max_message_size")
        # the size a frame header may announce: the device side may send bigger output to split
        self._frame_limit = max(self._max, DEVICE_SPLIT_CEILING) if self._side == DEVICE else self._max
        window = size_arg(request_id_window, "request_id_window")
        self._policy = Policy(self._side, services_arg(services, ("ssh",)), window)
        noted_items = () if noted is None else str_items(noted, "noted")
        self._on_note = callback_arg(on_note, "on_note")
        # without a callback nothing is noted
        if on_note is not None:
            self._policy.noted = frozenset(noted_items)
        self._notes: list[builtins.bytes] = []  # payloads noted during the current feed
        self._frag = bytearray()  # unmasked payload of the fragmented message in progress

    def reset(self) -> None:
        """A new connection replaces the old one: drop partial state, keep request-id history and counters."""
        self._pending = b""
        self._frag = bytearray()
        self._in_message = False
        self._closed = False

    def request_ids(self) -> tuple[str, ...]:
        """The request ids this side's requests used, as remembered (the window), oldest first."""
        return self._policy.request_ids()

    def retire_request_ids(self, ids: Iterable[str]) -> None:
        """From now on, while the peer is connected, drop the messages whose request_id is one
        of ``ids``: they belong to a session that is over. Replaces the earlier ids."""
        self._policy.retire(str_items(ids, "ids"))

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
                write_unraisable(exc, callback)

    def _check_data(self, op: int, length: int) -> Close | None:
        if op == OP_BINARY:
            return CLOSE_UNSUPPORTED_DATA, "binary messages are not supported"
        before = len(self._frag) if op == OP_CONT else 0
        if before + length > self._frame_limit:
            return CLOSE_TOO_BIG, f"message exceeds {self._frame_limit} bytes"
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
                return _INVALID_UTF8
            # Huawei's SDK cuts its 2048-byte reads inside a character at times: its output
            # gets U+FFFD for the cut bytes rather than the session ending (docs/codec.md)
            return self._reencoded(payload.decode("utf-8", "replace").encode(), len(payload), to_peer, to_sender,
                                   _INVALID_UTF8)
        if len(payload) > self._max:
            return self._reencoded(payload, len(payload), to_peer, to_sender, None)
        result = self._policy.check(payload, self._peer_connected, to_sender)
        if isinstance(result, tuple):
            return (result[0], truncate_utf8(result[1]))
        if result == FORWARD:
            to_peer.append(write_header(OP_TEXT, len(payload)))
            to_peer.append(payload)
        elif result == FORWARD_NOTED:
            to_peer.append(write_header(OP_TEXT, len(payload)))
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
        result = self._policy.check(payload, self._peer_connected, to_sender)
        if isinstance(result, tuple):
            return repaired or (result[0], truncate_utf8(result[1]))
        doc = json.loads(payload)
        data = doc.get("data")
        pieces = (split_output(doc["tunnel_service_type"], doc["request_id"], data, self._max)
                  if doc["operation_type"] == "command_response" and isinstance(data, str) else None)
        if pieces is None:
            del to_sender[mark:]   # a pong or 404 answer of a refused message is not sent
            return repaired or (CLOSE_TOO_BIG, f"message exceeds {self._max} bytes")
        if result in (FORWARD, FORWARD_NOTED):
            for piece in pieces:
                to_peer.append(write_header(OP_TEXT, len(piece)))
                to_peer.append(piece)
                if result == FORWARD_NOTED:
                    self._notes.append(piece)
        self._messages += 1
        self._bytes += received
        return None
