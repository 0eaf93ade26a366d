"""Property tests: the Rust AwsDecoder and its Python twin give identical answers on any input."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.codec
from relay.aws_messages import MessageType, ProxyMessage, encode
from tests.codec.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

pytestmark = pytest.mark.skipif(relay.codec.rust_impl is None, reason="relay._codec_rs is not built")

PY = relay.codec.python_impl
RS = relay.codec.rust_impl

SETTINGS = settings(max_examples=int(os.environ.get("CODEC_PROPERTY_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

SERVICES = ["SSH", "HTTP", "", "RDP", "é"]

# ---------------------------------------------------------------- strategies

proxy_messages = st.builds(
    ProxyMessage,
    type=st.sampled_from(list(MessageType)) | st.sampled_from(list(MessageType)) | st.integers(-3, 12),
    stream_id=st.sampled_from([0, 1, 2, -1, 2**31 - 1]),
    ignorable=st.booleans(),
    payload=st.binary(max_size=80) | st.sampled_from([b"p" * 100, b"p" * 101]),
    service_id=st.sampled_from(SERVICES),
    available_service_ids=st.lists(st.sampled_from(SERVICES), max_size=2).map(tuple),
    connection_id=st.sampled_from([0, 1, 2, 2**32 - 1]),
)


# messages a well-behaved source would send
good_messages = st.builds(
    ProxyMessage,
    type=st.sampled_from([MessageType.DATA] * 4 + [MessageType.STREAM_START, MessageType.STREAM_RESET,
                                                    MessageType.CONNECTION_START, MessageType.CONNECTION_RESET]),
    stream_id=st.sampled_from([1, 2]),
    payload=st.binary(max_size=40),
    service_id=st.sampled_from(["SSH", "SSH", "HTTP", ""]),
    connection_id=st.sampled_from([0, 1, 2]),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A protobuf body: valid, valid with extra (unknown or repeated) fields, mutated, or random."""
    kind = draw(st.integers(0, 19))
    if kind < 12:
        return encode(draw(good_messages))
    body = encode(draw(proxy_messages))
    kind -= 10
    if kind < 5:
        return body
    if kind == 5:
        extra = draw(st.sampled_from([b"\x40\x05", b"\x41" + b"\x00" * 8, b"\x42\x01z", b"\x45\x00\x00\x00\x00",
                                      b"\x08\x81\x00", b"\x22\x01q", b"\x2a\x03RDP", b"\x18\x00", b"\x0b", b"\x2a\x01\xff"]))
        at = draw(st.sampled_from([0, len(body)]))
        return body[:at] + extra + body[at:]
    if kind < 9:
        raw = bytearray(body)
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(raw)))
            op = draw(st.integers(0, 2))
            if op == 0 and pos < len(raw):
                raw[pos] = draw(st.integers(0, 255))
            elif op == 1:
                raw[pos:pos] = bytes([draw(st.integers(0, 255))])
            elif pos < len(raw):
                del raw[pos]
        return bytes(raw)
    return draw(st.binary(max_size=20))


@st.composite
def tunnel_stream(draw: st.DrawFn) -> bytes:
    """Length-prefixed messages; sometimes a wrong prefix (zero, too short, too long)."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        body = draw(bodies())
        prefix = len(body)
        if draw(st.integers(0, 40)) == 0:
            prefix = draw(st.sampled_from([0, max(0, prefix - 1), prefix + 1, 0xFFFF]))
        out += prefix.to_bytes(2, "big") + body
    return out


@st.composite
def frame_stream(draw: st.DrawFn) -> bytes:
    """The tunnel stream cut into WebSocket frames, with control frames and a few bad frames."""
    stream = draw(tunnel_stream())
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=4))))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    out = b""
    in_message = False
    for piece in pieces:
        kind = draw(st.integers(0, 39))
        if kind < 10 or kind >= 20:  # a whole binary message, or the next fragment
            out += frame(piece, OP_CONT if in_message else OP_BINARY,
                         length_form=draw(st.sampled_from([None, None, 126, 127])))
            in_message = False
        elif kind < 15:  # a fragment, the message goes on
            out += frame(piece, OP_CONT if in_message else OP_BINARY, fin=False)
            in_message = True
        elif kind < 18:  # control frame, then the piece
            out += frame(draw(st.binary(max_size=6)), draw(st.sampled_from([OP_PING, OP_PONG])))
            out += frame(piece, OP_CONT if in_message else OP_BINARY)
            in_message = False
        elif kind == 18:
            out += frame(draw(st.binary(max_size=6)), draw(st.sampled_from([OP_CLOSE, OP_TEXT])))
        else:  # bad header bits
            out += frame(piece, draw(st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, 3, 9])), fin=draw(st.booleans()),
                         rsv=draw(st.sampled_from([0, 0, 1])), masked=draw(st.sampled_from([True, True, False])))
    if in_message and draw(st.booleans()):
        out += frame(b"", OP_CONT)
    return out


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    if not data:
        return [data]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# ---------------------------------------------------------------- comparison

def _state(d: Any) -> tuple[bool, bool, int, int]:
    return d.peer_connected, d.closed, d.messages, d.bytes


def _run(chunks: list[bytes], side: int, peer: bool, services: tuple[str, ...] | None, max_payload: int,
         actions: list[int]) -> None:
    py_streams: list[tuple[int, str, int, int, bool]] = []
    rs_streams: list[tuple[int, str, int, int, bool]] = []
    py = PY.AwsDecoder(side, services, max_payload, on_stream=lambda *e: py_streams.append(e))
    rs = RS.AwsDecoder(side, services, max_payload, on_stream=lambda *e: rs_streams.append(e))
    py.peer_connected = rs.peer_connected = peer
    for i, chunk in enumerate(chunks):
        action = actions[i % len(actions)] if actions else 0
        if action == 1:
            py.reset()
            rs.reset()
        elif action == 2:
            py.peer_connected = rs.peer_connected = not py.peer_connected
        elif action == 3:
            py.reset_sent("SSH", i % 3)
            rs.reset_sent("SSH", i % 3)
        a, b = py.feed(chunk), rs.feed(chunk)
        assert a == b, (i, chunk)
        assert _state(py) == _state(rs)
        assert py_streams == rs_streams, (i, chunk)


@SETTINGS
@given(data=st.data(), side=st.sampled_from([0, 1]), peer=st.booleans(),
       services=st.sampled_from([None, ("SSH", "HTTP"), ("é",)]), max_payload=st.sampled_from([64512, 100, 0]),
       actions=st.lists(st.sampled_from([0, 0, 0, 0, 1, 2, 3]), max_size=6))
def test_twins_on_frame_streams(data: st.DataObject, side: int, peer: bool, services: tuple[str, ...] | None,
                                max_payload: int, actions: list[int]) -> None:
    _run(data.draw(chunked(data.draw(frame_stream()))), side, peer, services, max_payload, actions)


@SETTINGS
@given(data=st.data(), raw=st.binary(max_size=300), side=st.sampled_from([0, 1]))
def test_twins_on_random_bytes(data: st.DataObject, raw: bytes, side: int) -> None:
    _run(data.draw(chunked(raw)), side, True, None, 64512, [])


@SETTINGS
@given(data=st.data(), side=st.sampled_from([0, 1]), peer=st.booleans())
def test_twins_on_random_tunnel_bytes(data: st.DataObject, side: int, peer: bool) -> None:
    """Random bytes as the tunnel stream inside well-formed frames: exercises the protobuf parser."""
    stream = data.draw(st.binary(max_size=120))
    _run(data.draw(chunked(frame(stream, OP_BINARY))), side, peer, ("SSH",), 64512, [])


@SETTINGS
@given(data=st.data(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3))
def test_twins_on_mutated_frames(data: st.DataObject, flips: list[tuple[int, int]]) -> None:
    stream = bytearray(data.draw(frame_stream()))
    for pos, value in flips:
        if stream:
            stream[pos % len(stream)] = value
    _run(data.draw(chunked(bytes(stream))), 0, True, ("SSH", "HTTP"), 100, [])


@SETTINGS
@given(payload=st.binary(max_size=300))
def test_twins_encode_binary(payload: bytes) -> None:
    assert PY.encode_binary(payload) == RS.encode_binary(payload)
