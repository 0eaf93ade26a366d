"""The AWS tunnel decoder's rules (docs/codec.md, "AwsDecoder"), run on both twins through the
``codec`` fixture."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from relay.aws_messages import MessageReader, MessageType, ProxyMessage, frame as tframe
from tests.codec.test_notes import Hook, unraisable  # noqa: F401
from tests.codec.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

T = MessageType
FRAME_CAP = 131076
TEXT_REFUSED = "text messages are not supported: this endpoint speaks the binary AWS tunnel protocol"


def server_binary(payload: bytes) -> bytes:
    """A server binary frame (reference encoding, independent of the codec)."""
    n = len(payload)
    if n < 126:
        return bytes([0x82, n]) + payload
    if n <= 0xFFFF:
        return bytes([0x82, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x82, 127]) + n.to_bytes(8, "big") + payload


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload); every frame must be FIN."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and not b1 & 0x80
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        out.append((b0 & 0x0F, data[pos:pos + n]))
        pos += n
    return out


def data(stream: int = 1, payload: bytes = b"x", service: str = "SSH", conn: int = 1) -> bytes:
    return tframe(ProxyMessage(T.DATA, stream_id=stream, payload=payload, service_id=service, connection_id=conn))


def msg(type_: int, stream: int = 1, service: str = "SSH", conn: int = 1, **kw: Any) -> bytes:
    return tframe(ProxyMessage(type_, stream_id=stream, service_id=service, connection_id=conn, **kw))


def reset_for(stream: int = 1, service: str = "SSH", conn: int = 1) -> bytes:
    return msg(T.STREAM_RESET, stream, service, conn)


def make(codec: ModuleType, side: int | None = None, *, peer: bool = True, **kw: Any) -> Any:
    d = codec.AwsDecoder(codec.SOURCE if side is None else side, **kw)
    d.peer_connected = peer
    return d


def code_of(result: tuple[bytes, bytes, tuple[int, str] | None]) -> int | None:
    return None if result[2] is None else result[2][0]


# ---------------------------------------------------------------- surface

@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, FRAME_CAP])
def test_encode_binary(codec: ModuleType, n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    assert codec.encode_binary(payload) == server_binary(payload)
    with pytest.raises(TypeError):
        codec.encode_binary("text")


def test_defaults_and_attributes(codec: ModuleType) -> None:
    d = codec.AwsDecoder(codec.DEVICE)
    assert (d.peer_connected, d.closed, d.messages, d.bytes) == (False, False, 0, 0)
    d.peer_connected = True
    assert d.peer_connected is True
    with pytest.raises(TypeError):
        d.peer_connected = 1
    for name in ("closed", "messages", "bytes"):
        with pytest.raises(AttributeError):
            setattr(d, name, 1)
    with pytest.raises(TypeError):
        d.feed("text")
    with pytest.raises(TypeError):
        d.feed(bytearray(b"\x82\x80"))


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(side=2), ValueError, "side must be SOURCE (0) or DEVICE (1)"),
    (dict(side="0"), ValueError, "side must be SOURCE (0) or DEVICE (1)"),
    (dict(side=0, services="SSH"), TypeError, "services must be an iterable of str"),
    (dict(side=0, services=("SSH", 1)), TypeError, "services must be an iterable of str"),
    (dict(side=0, services=5), TypeError, "services must be an iterable of str"),
    (dict(side=0, max_payload=-1), ValueError, "max_payload must be >= 0"),
    (dict(side=0, max_payload=1.5), TypeError, None),
])
def test_bad_arguments(codec: ModuleType, kwargs: dict, exc: type[Exception], message: str | None) -> None:
    with pytest.raises(exc) as err:
        codec.AwsDecoder(**kwargs)
    if message is not None:
        assert str(err.value) == message


# ---------------------------------------------------------------- forwarding

def test_forwarded_unchanged_in_one_frame(codec: ModuleType) -> None:
    d = make(codec, services=("SSH", "HTTP"))
    stream = (msg(T.STREAM_START) + data(payload=b"hello") + msg(T.CONNECTION_START, conn=2)
              + data(payload=b"two", conn=2) + msg(T.CONNECTION_RESET, conn=2) + msg(T.STREAM_RESET))
    assert d.feed(frame(stream, OP_BINARY)) == (server_binary(stream), b"", None)
    assert (d.messages, d.bytes) == (6, 8)


def test_original_bytes_are_kept(codec: ModuleType) -> None:
    # non-minimal varints, unknown fields, repeated fields: forwarded byte for byte, never re-encoded
    odd = b"\x08\x81\x00\x10\x07\x42\x03abc\x22\x01x\x22\x02yz\x45\x00\x00\x00\x00"
    stream = len(odd).to_bytes(2, "big") + odd
    d = make(codec)
    assert d.feed(frame(stream, OP_BINARY)) == (server_binary(stream), b"", None)
    assert d.bytes == 2  # the last payload field wins


def test_both_sides_send_data_and_resets(codec: ModuleType) -> None:
    for side in (codec.SOURCE, codec.DEVICE):
        d = make(codec, side)
        stream = data() + msg(T.STREAM_RESET) + msg(T.CONNECTION_RESET)
        assert d.feed(frame(stream, OP_BINARY)) == (server_binary(stream), b"", None)


def test_messages_across_frames_and_reads(codec: ModuleType) -> None:
    msgs = [msg(T.STREAM_START), data(payload=b"a" * 300), data(payload=b"b" * 5000), msg(T.STREAM_RESET)]
    stream = b"".join(msgs)
    # the stream cut into frames at odd places, a fragmented message with a ping inside
    wire = (frame(stream[:1], OP_BINARY) + frame(stream[1:250], OP_BINARY, fin=False) + frame(b"p", OP_PING)
            + frame(stream[250:4000], OP_CONT, fin=False) + frame(stream[4000:], OP_CONT))
    for cut in range(len(wire) + 1):
        d = make(codec)
        a, b = d.feed(wire[:cut]), d.feed(wire[cut:])
        assert a[2] is None and b[2] is None
        out = a[0] + b[0]
        assert MessageReader().feed(b"".join(p for _, p in server_frames(out))) == \
            MessageReader().feed(stream)
        assert b"".join(p for _, p in server_frames(out)) == stream, cut
        assert all(len(p) >= 2 for _, p in server_frames(out))
        assert a[1] + b[1] == b"\x8a\x01p"
        assert (d.messages, d.bytes) == (4, 5300)


def test_one_byte_at_a_time(codec: ModuleType) -> None:
    stream = msg(T.STREAM_START) + data(payload=b"z" * 200) + msg(T.STREAM_RESET)
    wire = frame(stream[:100], OP_BINARY, fin=False) + frame(stream[100:], OP_CONT)
    d = make(codec)
    out = b""
    for i in range(len(wire)):
        to_peer, to_sender, close = d.feed(wire[i:i + 1])
        assert close is None and to_sender == b""
        out += to_peer
    assert b"".join(p for _, p in server_frames(out)) == stream
    # a message goes out, whole, with the read that completes the WebSocket frame of its last byte
    assert [len(p) for _, p in server_frames(out)] == [len(msg(T.STREAM_START)),
                                                       len(data(payload=b"z" * 200)) + len(msg(T.STREAM_RESET))]


def test_packing_with_the_frame_cap(codec: ModuleType) -> None:
    big = data(payload=b"q" * 60000)  # 60016 bytes framed
    small = data(payload=b"s")
    msgs = [big, small, big, big, small, small, big]
    stream = b"".join(msgs)
    wire = b"".join(frame(stream[i:i + FRAME_CAP], OP_BINARY) for i in range(0, len(stream), FRAME_CAP))
    d = make(codec)
    to_peer, _, close = d.feed(wire)
    assert close is None
    frames = server_frames(to_peer)
    assert all(op == OP_BINARY and len(p) <= FRAME_CAP for op, p in frames)
    # greedy: a frame takes messages while they fit
    assert [p for _, p in frames] == [big + small + big, big + small + small + big]
    msgs = [big, big, big]
    wire = b"".join(frame(m, OP_BINARY) for m in msgs)
    assert [p for _, p in server_frames(make(codec).feed(wire)[0])] == [big + big, big]


# ---------------------------------------------------------------- WebSocket rules

@pytest.mark.parametrize("wire, code, reason", [
    (frame(data(), OP_BINARY, masked=False), 1002, "client frames must be masked"),
    (frame(data(), OP_BINARY, rsv=4), 1002, "reserved bits must be zero"),
    (frame(b"", 3), 1002, "unknown opcode 3"),
    (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + b"mask", 1002,
     "frame length has the most significant bit set"),
    (frame(b"", OP_PING, fin=False), 1002, "control frames must not be fragmented"),
    (frame(b"p" * 126, OP_PING), 1002, "control frame payload exceeds 125 bytes"),
    (frame(data(), OP_CONT), 1002, "unexpected continuation frame"),
    (frame(data()[:3], OP_BINARY, fin=False) + frame(data()[3:], OP_BINARY), 1002, "expected a continuation frame"),
    (frame(data()[:3], OP_BINARY, fin=False) + frame(b"{}", OP_TEXT), 1002, "expected a continuation frame"),
    (frame(b'{"operation_type":"connect"}', OP_TEXT), 1003, TEXT_REFUSED),
    (frame(b"", OP_TEXT, fin=False), 1003, TEXT_REFUSED),
])
def test_frame_violations(codec: ModuleType, wire: bytes, code: int, reason: str) -> None:
    d = make(codec)
    assert d.feed(wire) == (b"", b"", (code, reason))
    assert d.closed
    assert d.feed(frame(data(), OP_BINARY)) == (b"", b"", None)


def test_frame_size_limit(codec: ModuleType) -> None:
    big = data(payload=b"w" * 64512)
    stream = big + big + big[:FRAME_CAP - 2 * len(big)]
    assert len(stream) == FRAME_CAP
    d = make(codec)
    to_peer, _, close = d.feed(frame(stream, OP_BINARY))
    assert close is None and to_peer == server_binary(big + big)
    over = frame(stream + b"\x00", OP_BINARY)
    d = make(codec)
    assert d.feed(over[:14]) == (b"", b"", (1009, "frame exceeds 131076 bytes"))  # the header is enough


def test_close_and_control_frames(codec: ModuleType) -> None:
    d = make(codec)
    wire = frame(b"hi", OP_PING) + frame(b"x", OP_PONG) + frame(data(), OP_BINARY) + frame(b"\x03\xe8bye", OP_CLOSE)
    assert d.feed(wire) == (server_binary(data()), b"\x8a\x02hi", (1000, ""))
    for payload, close in [(b"", (1000, "")), (b"\x03", (1002, "close frame payload of 1 byte")),
                           (b"\x03\xed", (1002, "invalid close code 1005")),
                           (b"\x0f\xa0\xff", (1007, "invalid UTF-8 in close reason")), (b"\x0f\xa0ok", (4000, ""))]:
        assert make(codec).feed(frame(payload, OP_CLOSE)) == (b"", b"", close)


# ---------------------------------------------------------------- tunnel-message rules

def test_empty_tunnel_message(codec: ModuleType) -> None:
    d = make(codec)
    assert d.feed(frame(data() + b"\x00\x00" + data(), OP_BINARY)) == (server_binary(data()), b"",
                                                                        (4400, "empty tunnel message"))
    # seen as soon as its 2-byte prefix is there
    assert make(codec).feed(frame(b"\x00\x00", OP_BINARY)) == (b"", b"", (4400, "empty tunnel message"))


@pytest.mark.parametrize("body, reason", [
    (b"\x08", "truncated varint"),
    (b"\x08" + b"\xff" * 9 + b"\x02", "varint exceeds 64 bits"),
    (b"\x00\x01", "invalid field number 0"),
    (b"\x0b", "invalid wire type 3"),
    (b"\x0a\x00", "wrong wire type 2 for field 1"),
    (b"\x22\x05ab", "truncated field 4"),
    (b"\x2a\x01\xff", "field 5 is not valid UTF-8"),
    (b"\x08\x05\x32\x02\xc3\x28", "field 6 is not valid UTF-8"),
])
def test_malformed_protobuf(codec: ModuleType, body: bytes, reason: str) -> None:
    d = make(codec)
    stream = len(body).to_bytes(2, "big") + body
    assert d.feed(frame(stream, OP_BINARY)) == (b"", b"", (4400, f"invalid tunnel message: {reason}"))


def test_payload_limit(codec: ModuleType) -> None:
    d = make(codec)
    ok = data(payload=b"p" * 64512)
    assert d.feed(frame(ok, OP_BINARY)) == (server_binary(ok), b"", None)
    assert d.bytes == 64512
    bad = data(payload=b"p" * 64513)
    assert d.feed(frame(bad, OP_BINARY)) == (b"", b"", (1009, "payload exceeds 64512 bytes"))
    d = make(codec, max_payload=16384)
    assert code_of(d.feed(frame(data(payload=b"p" * 16384), OP_BINARY))) is None
    assert d.feed(frame(data(payload=b"p" * 16385), OP_BINARY))[2] == (1009, "payload exceeds 16384 bytes")
    d = make(codec, max_payload=0)
    assert code_of(d.feed(frame(msg(T.STREAM_START), OP_BINARY))) is None
    assert code_of(d.feed(frame(data(payload=b"p"), OP_BINARY))) == 1009


@pytest.mark.parametrize("type_", [0, 8, 100, -1])
def test_unknown_types(codec: ModuleType, type_: int) -> None:
    d = make(codec)
    ignored = tframe(ProxyMessage(type_, stream_id=1, ignorable=True, payload=b"abc"))
    assert d.feed(frame(ignored + data(), OP_BINARY)) == (server_binary(data()), b"", None)
    assert (d.messages, d.bytes) == (2, 4)
    refused = tframe(ProxyMessage(type_, stream_id=1))
    assert d.feed(frame(data() + refused, OP_BINARY)) == (server_binary(data()), b"",
                                                           (4400, f"unknown message type {type_}"))


@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("type_", [T.SERVICE_IDS, T.SESSION_RESET])
def test_relay_only_types(codec: ModuleType, side: int, type_: T) -> None:
    d = make(codec, side)
    m = tframe(ProxyMessage(type_, available_service_ids=("SSH",), ignorable=True))
    assert d.feed(frame(m, OP_BINARY)) == (b"", b"", (4403, f"{type_.name} is only sent by the relay"))


@pytest.mark.parametrize("type_", [T.STREAM_START, T.CONNECTION_START])
def test_source_only_types(codec: ModuleType, type_: T) -> None:
    d = make(codec, codec.DEVICE)
    assert d.feed(frame(msg(type_), OP_BINARY)) == (b"", b"", (4403, f"{type_.name} is only sent by the source"))
    d = make(codec, codec.SOURCE)
    assert d.feed(frame(msg(type_), OP_BINARY)) == (server_binary(msg(type_)), b"", None)


def test_services(codec: ModuleType) -> None:
    d = make(codec, services=["SSH", "HTTP"])
    ok = data(service="HTTP") + data(service="")  # V1 clients send no serviceId
    assert d.feed(frame(ok, OP_BINARY)) == (server_binary(ok), b"", None)
    assert d.feed(frame(data(service="RDP"), OP_BINARY))[2] == (
        4400, "serviceId 'RDP' is not one of the tunnel's services")
    d = make(codec, services=("SSH",))
    _, _, close = d.feed(frame(data(service="é" * 100), OP_BINARY))
    assert close is not None and close[0] == 4400
    assert len(close[1].encode()) <= 123 and close[1].startswith("serviceId 'éé")
    no_services: list[Any] = [None, (), []]
    for services in no_services:
        d = make(codec, services=services)
        assert d.feed(frame(data(service="anything"), OP_BINARY))[2] is None


# ---------------------------------------------------------------- peer absent

def test_peer_absent_answers_stream_reset(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    stream = (msg(T.STREAM_START, 5, "SSH", 1) + data(5, b"early", "SSH", 1) + msg(T.CONNECTION_START, 5, "SSH", 2)
              + msg(T.STREAM_RESET, 5) + msg(T.CONNECTION_RESET, 5, conn=2) + data(-7, b"", "", 0))
    to_peer, to_sender, close = d.feed(frame(stream, OP_BINARY))
    assert to_peer == b"" and close is None
    # one answer per stream (of a service): the sender ends the whole stream on it
    want = reset_for(5, "SSH", 1) + reset_for(-7, "", 0)
    assert to_sender == server_binary(want)
    assert (d.messages, d.bytes) == (6, 5)
    assert d.feed(frame(data(5, b"more", "SSH", 1) + data(-7, b"x", "", 0), OP_BINARY)) == (b"", b"", None)
    assert d.feed(frame(data(6, b"new", "SSH", 1), OP_BINARY)) == (b"", server_binary(reset_for(6)), None)
    d.peer_connected = True
    assert d.feed(frame(data(), OP_BINARY)) == (server_binary(data()), b"", None)


def test_a_stream_the_relay_reset_is_not_answered_again(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    d.reset_sent("SSH", 4)
    d.reset_sent("HTTP", 9)
    assert d.feed(frame(data(4) + data(9, service="HTTP") + data(4, service="HTTP"), OP_BINARY)) == (
        b"", server_binary(reset_for(4, "HTTP")), None)
    d.reset()   # a new connection of this side: its stream ids start again
    assert d.feed(frame(data(4), OP_BINARY)) == (b"", server_binary(reset_for(4)), None)
    with pytest.raises(TypeError):
        d.reset_sent(b"SSH", 1)
    with pytest.raises(OverflowError):
        d.reset_sent("SSH", 1 << 31)


def test_at_most_eight_services_are_remembered(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    for i in range(8):
        d.reset_sent(f"s{i}", 1)
    d.reset_sent("s0", 2)   # an update keeps its place: s0 is still the oldest
    d.reset_sent("s8", 1)   # a ninth service: the oldest goes
    assert d.feed(frame(data(1, service="s1") + data(2, service="s0"), OP_BINARY)) == (
        b"", server_binary(reset_for(2, "s0")), None)


def test_peer_absent_answers_keep_order_with_pongs(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    wire = frame(data(1), OP_BINARY) + frame(b"a", OP_PING) + frame(data(2) + data(3), OP_BINARY) + frame(b"b", OP_PING)
    assert d.feed(wire) == (b"", server_binary(reset_for(1)) + b"\x8a\x01a" + server_binary(reset_for(2) + reset_for(3))
                            + b"\x8a\x01b", None)


def test_peer_absent_answers_before_a_violation_are_sent(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    assert d.feed(frame(data(1) + msg(T.SESSION_RESET), OP_BINARY)) == (
        b"", server_binary(reset_for(1)), (4403, "SESSION_RESET is only sent by the relay"))


def test_peer_absent_answer_too_big_is_not_sent(codec: ModuleType) -> None:
    # stream id -1 in 5 bytes: the answer re-encodes it in 10, and would not fit the 2-byte length
    sid = b"s" * 65523
    body = b"\x08\x01\x10\xff\xff\xff\xff\x0f\x2a" + bytes([0xF3, 0xFF, 0x03]) + sid
    assert len(body) == 65535
    d = make(codec, peer=False)
    assert d.feed(frame(b"\xff\xff" + body, OP_BINARY)) == (b"", b"", None)
    assert d.messages == 1


# ---------------------------------------------------------------- before a violation, reset, counters

def test_accepted_before_a_violation_is_forwarded(codec: ModuleType) -> None:
    d = make(codec, codec.DEVICE)
    good = data(payload=b"1") + data(payload=b"2")
    wire = frame(good, OP_BINARY) + frame(b"p", OP_PING) + frame(msg(T.STREAM_START) + data(payload=b"3"), OP_BINARY)
    assert d.feed(wire) == (server_binary(good), b"\x8a\x01p", (4403, "STREAM_START is only sent by the source"))
    assert (d.messages, d.bytes, d.closed) == (2, 2, True)
    d.reset()
    assert not d.closed
    assert d.feed(frame(data(payload=b"4"), OP_BINARY)) == (server_binary(data(payload=b"4")), b"", None)
    assert (d.messages, d.bytes) == (3, 3)


def test_reset_drops_partial_state(codec: ModuleType) -> None:
    d = make(codec)
    m = data(payload=b"x" * 100)
    d.feed(frame(m[:50], OP_BINARY, fin=False) + frame(m[50:60], OP_CONT)[:5])
    d.reset()
    # a partial tunnel message and a fragmented WebSocket message are gone
    assert d.feed(frame(m, OP_BINARY)) == (server_binary(m), b"", None)


def test_counters_do_not_count_refused_or_incomplete(codec: ModuleType) -> None:
    d = make(codec)
    m = data(payload=b"abcd")
    d.feed(frame(m + m[:5], OP_BINARY))
    assert (d.messages, d.bytes) == (1, 4)


# ---------------------------------------------------------------- stream messages reported

def test_forwarded_stream_messages_are_reported_in_order(codec: ModuleType) -> None:
    seen: list[tuple[int, str, int, int, bool]] = []
    d = make(codec, on_stream=lambda *event: seen.append(event))
    stream = (msg(T.STREAM_START, 5) + data(5) + msg(T.CONNECTION_START, 5, conn=2) + msg(T.CONNECTION_RESET, 5, conn=2)
              + msg(T.STREAM_RESET, 5, service="", conn=0))
    to_peer, _, close = d.feed(frame(stream, OP_BINARY))
    assert (to_peer, close) == (server_binary(stream), None)
    assert seen == [(2, "SSH", 5, 1, False), (6, "SSH", 5, 2, False), (7, "SSH", 5, 2, False), (3, "", 5, 0, False)]
    assert all(type(part) is type(want) for event in seen for part, want in zip(event, (1, "", 1, 1, True)))


def test_answers_are_reported_and_dropped_or_refused_messages_are_not(codec: ModuleType) -> None:
    seen: list[tuple[int, str, int, int, bool]] = []
    d = make(codec, peer=False, on_stream=lambda *event: seen.append(event))
    d.feed(frame(msg(T.STREAM_START, 1) + data(1) + msg(T.STREAM_RESET, 1), OP_BINARY))   # answered once, dropped
    assert seen == [(3, "SSH", 1, 1, True)]
    d.peer_connected = True
    d.feed(frame(msg(T.STREAM_START, 2) + msg(T.SESSION_RESET, 2), OP_BINARY))   # then a 4403
    assert seen == [(3, "SSH", 1, 1, True), (2, "SSH", 2, 1, False)] and d.closed


def test_on_stream_must_be_callable_and_may_fail(codec: ModuleType, unraisable: Hook) -> None:  # noqa: F811
    with pytest.raises(TypeError, match="on_stream must be callable"):
        codec.AwsDecoder(codec.SOURCE, on_stream=3)
    assert make(codec, on_stream=None).feed(frame(msg(T.STREAM_START), OP_BINARY))[0] == server_binary(msg(T.STREAM_START))

    def fail(*event: object) -> None:
        raise RuntimeError("table is down")

    d = make(codec, on_stream=fail)
    both = msg(T.STREAM_START, 1) + msg(T.STREAM_START, 2)
    assert d.feed(frame(both, OP_BINARY)) == (server_binary(both), b"", None)
    assert [(kind, obj) for kind, _, obj in unraisable.calls] == [(RuntimeError, fail), (RuntimeError, fail)]
