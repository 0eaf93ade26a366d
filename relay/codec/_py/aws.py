"""Twin of codec-rs/src/aws.rs: the AWS IoT Secure Tunneling protocol's decoder (V1-V3).

Client->server WebSocket frames in (the frame loop of ``frame.FrameDecoder``), the tunnel messages
that break no rule out, unchanged, re-framed as server binary frames. What a well-formed tunnel
message is, is defined by ``relay.aws_messages.decode`` (Rust parses the protobuf itself). The
rules and close codes are in docs/codec.md.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable

from relay.aws_messages import MAX_PAYLOAD, MessageType, ProxyMessage, decode, frame
from relay.codec._py.bindings import callback_arg, services_arg, side_arg, size_arg, write_unraisable
from relay.codec._py.close import CLOSE_NOT_ALLOWED, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, Close, truncate_utf8
from relay.codec._py.envelope import SOURCE
from relay.codec._py.frame import OP_BINARY, OP_TEXT, FrameDecoder, write_header

__all__ = ["AwsDecoder", "encode_binary", "FRAME_CAP"]

# Largest WebSocket frame payload accepted, and largest one written: the limit of the
# aws.iot.securetunneling-3.0 protocol (2 x (64 KiB + 2)), the AWS local proxy's frame size.
FRAME_CAP = 131076

CLOSE_INVALID_MESSAGE = 4400

TEXT_REFUSED = "text messages are not supported: this endpoint speaks the binary AWS tunnel protocol"

_KNOWN_TYPES = frozenset(range(MessageType.DATA, MessageType.CONNECTION_RESET + 1))
_RELAY_ONLY = frozenset((MessageType.SERVICE_IDS, MessageType.SESSION_RESET))
_SOURCE_ONLY = frozenset((MessageType.STREAM_START, MessageType.CONNECTION_START))
_ANSWERED_WHEN_ALONE = frozenset((MessageType.DATA, MessageType.STREAM_START, MessageType.CONNECTION_START))
_ANSWERED_CAP = 8   # services remembered (a tunnel has 1-3)
_STREAM_MESSAGES = frozenset((MessageType.STREAM_START, MessageType.STREAM_RESET, MessageType.CONNECTION_START,
                              MessageType.CONNECTION_RESET))


def encode_binary(payload: bytes) -> bytes:
    """One unmasked FIN binary frame (server->client)."""
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    return write_header(OP_BINARY, len(payload)) + payload


def _pack(messages: list[bytes]) -> bytes:
    """Whole tunnel messages, greedily packed into binary frames of at most FRAME_CAP bytes."""
    out: list[bytes] = []
    group: list[bytes] = []
    total = 0
    for m in messages:
        if total + len(m) > FRAME_CAP:
            out.append(write_header(OP_BINARY, total))
            out += group
            group, total = [], 0
        group.append(m)
        total += len(m)
    if group:
        out.append(write_header(OP_BINARY, total))
        out += group
    return b"".join(out)


class AwsDecoder(FrameDecoder):
    """Per-connection decoder of client->server frames of an AWS tunnel; one ``feed`` per read."""

    def __init__(self, side: int, services: Iterable[str] | None = None, max_payload: int = MAX_PAYLOAD, *,
                 on_stream: Callable[[int, str, int, int, bool], object] | None = None) -> None:
        super().__init__(side_arg(side))
        self._services = frozenset(services_arg(services, ()))
        self._max_payload = size_arg(max_payload, "max_payload")
        # called after the feed with (type, service_id, stream_id, connection_id, answered) of each
        # forwarded STREAM_START, STREAM_RESET, CONNECTION_START and CONNECTION_RESET (answered
        # False), and of each STREAM_RESET answered while the peer is away (answered True)
        self._on_stream = callback_arg(on_stream, "on_stream")
        self._streams: list[tuple[int, str, int, int, bool]] = []
        # per service id, the stream this end was last told is over: not answered again
        self._answered: dict[str, int] = {}
        self._stream = b""  # unmasked bytes of an incomplete tunnel message
        self._replies: list[builtins.bytes] = []  # STREAM_RESET answers not yet written to to_sender

    def reset(self) -> None:
        """A new connection replaces the old one: drop partial state, keep the counters."""
        self._pending = b""
        self._in_message = False
        self._stream = b""
        self._closed = False
        self._answered.clear()

    def reset_sent(self, service_id: str, stream_id: int) -> None:
        """The relay told this end that its stream `stream_id` of `service_id` is over: while the
        peer is away, its further messages of that stream are not answered again."""
        if not isinstance(service_id, str) or not isinstance(stream_id, int):
            raise TypeError("reset_sent takes a service id (str) and a stream id (int)")
        if not -(1 << 31) <= stream_id < 1 << 31:
            raise OverflowError("stream_id must fit in an int32")
        self._remember(service_id, stream_id)

    def _remember(self, service_id: str, stream_id: int) -> None:
        if service_id not in self._answered and len(self._answered) >= _ANSWERED_CAP:
            del self._answered[next(iter(self._answered))]   # the oldest
        self._answered[service_id] = stream_id

    # ---- decoding
    def feed(self, data: builtins.bytes) -> tuple[builtins.bytes, builtins.bytes, Close | None]:
        """Feed one read; returns ``(to_peer, to_sender, close)``."""
        to_peer, to_sender, close = self._feed_frames(data)
        self._flush_replies(to_sender)
        if close is not None:
            self._stream = b""
        out = _pack(to_peer), b"".join(to_sender), close
        if self._streams:
            events, self._streams = self._streams, []
            for event in events:
                try:
                    self._on_stream(*event)  # type: ignore[misc]
                except Exception as exc:  # as the Rust twin: reported, the feed goes on
                    write_unraisable(exc, self._on_stream)
        return out

    def _flush_replies(self, to_sender: list[builtins.bytes]) -> None:
        if self._replies:
            to_sender.append(_pack(self._replies))
            self._replies = []

    def _check_data(self, op: int, length: int) -> Close | None:
        if op == OP_TEXT:
            return CLOSE_UNSUPPORTED_DATA, TEXT_REFUSED
        if length > FRAME_CAP:
            return CLOSE_TOO_BIG, f"frame exceeds {FRAME_CAP} bytes"
        return None

    def _before_pong(self, to_sender: list[builtins.bytes]) -> None:
        self._flush_replies(to_sender)  # queued STREAM_RESET answers go out before the pong

    def _data(self, op: int, fin: bool, payload: builtins.bytes, to_peer: list[builtins.bytes],
              to_sender: list[builtins.bytes]) -> Close | None:
        # binary or continuation: more of the tunnel-message stream, whatever the fragmentation
        return self._tunnel_messages(payload, to_peer)

    def _tunnel_messages(self, payload: builtins.bytes, to_peer: list[builtins.bytes]) -> Close | None:
        """Check every complete tunnel message of the stream."""
        stream = self._stream + payload if self._stream else payload
        pos = 0
        end = len(stream)
        try:
            while end - pos >= 2:
                n = stream[pos] << 8 | stream[pos + 1]
                if n == 0:
                    return CLOSE_INVALID_MESSAGE, "empty tunnel message"
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
            return CLOSE_INVALID_MESSAGE, f"invalid tunnel message: {exc}"
        if len(msg.payload) > self._max_payload:
            return CLOSE_TOO_BIG, f"payload exceeds {self._max_payload} bytes"
        t = msg.type
        if t not in _KNOWN_TYPES:
            if not msg.ignorable:
                return CLOSE_INVALID_MESSAGE, f"unknown message type {int(t)}"
        else:
            if t in _RELAY_ONLY:
                return CLOSE_NOT_ALLOWED, f"{MessageType(t).name} is only sent by the relay"
            if t in _SOURCE_ONLY and self._side != SOURCE:
                return CLOSE_NOT_ALLOWED, f"{MessageType(t).name} is only sent by the source"
            if self._services and msg.service_id and msg.service_id not in self._services:
                return CLOSE_INVALID_MESSAGE, truncate_utf8(f"serviceId '{msg.service_id}' is not one of the tunnel's services")
            if self._peer_connected:
                to_peer.append(raw)
                if self._on_stream is not None and t in _STREAM_MESSAGES:
                    self._streams.append((int(t), msg.service_id, msg.stream_id, msg.connection_id, False))
            elif t in _ANSWERED_WHEN_ALONE and self._answered.get(msg.service_id) != msg.stream_id:
                # one answer per stream: the sender ends the whole stream on it
                try:
                    self._replies.append(frame(ProxyMessage(MessageType.STREAM_RESET, stream_id=msg.stream_id,
                                                            service_id=msg.service_id,
                                                            connection_id=msg.connection_id)))
                except ValueError:
                    pass  # an answer too big for the 2-byte length (a ~64 KiB serviceId) is not sent
                else:
                    self._remember(msg.service_id, msg.stream_id)
                    if self._on_stream is not None:
                        self._streams.append((int(MessageType.STREAM_RESET), msg.service_id, msg.stream_id,
                                              msg.connection_id, True))
        self._messages += 1
        self._bytes += len(msg.payload)
        return None
