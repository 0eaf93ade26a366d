"""Property tests: the Rust codec and the Python reference twin give identical answers on any input."""

from __future__ import annotations

from typing import Any

import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.codec
from tests.codec.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame

pytestmark = pytest.mark.skipif(relay.codec.rust_impl is None, reason="relay._codec_rs is not built")

PY = relay.codec.python_impl
RS = relay.codec.rust_impl

# CODEC_PROPERTY_EXAMPLES=5000 for a longer soak
SETTINGS = settings(max_examples=int(os.environ.get("CODEC_PROPERTY_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

OPS = ["connect", "command", "disconnect", "ping", "connect_response", "command_response", "forward_open",
       "forward_open_response", "forward_data", "forward_ack", "forward_close", "pong", "bogus", ""]
SERVICES = ["ssh", "rdp", "s\\sh", "ssh\x00"]

# ---------------------------------------------------------------- strategies

# floats built from mantissa and exponent (finite, spanning the double range)
floats = st.builds(lambda m, e: m * 10.0**e, st.integers(-(10**6), 10**6), st.integers(-320, 300))
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | floats | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

JSONISH = '{}[]",:0123456789.eE+-truefalsnul\\/ \n\t\rbu"dD8Cc0F'


@st.composite
def numbers(draw: st.DrawFn) -> bytes:
    sign = draw(st.sampled_from(["", "-", "+"]))
    intpart = draw(st.sampled_from(["0", "1", "9", "00", "01"]) | st.from_regex(r"[1-9][0-9]{0,330}", fullmatch=True))
    frac = draw(st.sampled_from(["", ".", ".0"]) | st.from_regex(r"\.[0-9]{1,40}", fullmatch=True))
    exp = draw(st.sampled_from(["", "e", "E+", "e-"]) | st.from_regex(r"[eE][+-]?[0-9]{1,5}", fullmatch=True))
    return (sign + intpart + frac + exp).encode()


@st.composite
def escapes(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from([
        "a", "\\n", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r", "\\t", "\\u0000", "\\u001f", "\\u00e9", "\\ud83d",
        "\\ude00", "\\uDBFF\\uDFFF", "\\ud800\\udc00", "\\x", "\\u12", "\\uzzzz", "\x01", "\x7f", "é", "😀", "\t",
    ]), max_size=8))
    return ('"' + "".join(parts) + '"').encode()


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {}
    keys = draw(st.permutations(["operation_type", "tunnel_service_type", "request_id", "data"]))
    if draw(st.sampled_from([True] * 3 + [False] * 2)):  # well-formed envelope, valid or not for the side
        for key in keys:
            if key == "operation_type":
                doc[key] = draw(st.sampled_from(OPS[:11]))
            elif key == "tunnel_service_type":
                doc[key] = "ssh"
            elif key == "request_id":
                doc[key] = draw(st.sampled_from(["1", "2", "3", "4"]) | st.text(min_size=1, max_size=12))
            elif draw(st.booleans()):
                doc[key] = draw(json_values)
        return orjson.dumps(doc)
    for key in keys:
        if draw(st.integers(0, 9)) == 9:
            continue  # missing
        if key == "operation_type":
            doc[key] = draw(st.one_of(st.sampled_from(OPS), st.sampled_from(OPS), json_scalars))
        elif key == "tunnel_service_type":
            doc[key] = draw(st.one_of(st.just("ssh"), st.sampled_from(SERVICES), json_scalars))
        elif key == "request_id":
            doc[key] = draw(st.one_of(
                st.sampled_from(["1", "2", "3", "r" * 128, "r" * 129, "é" * 64, "é" * 65, ""]),
                st.text(min_size=1, max_size=140), st.integers(-(2**63), 2**63)))
        else:
            doc[key] = draw(json_values)
    raw = orjson.dumps(doc)
    tweak = draw(st.integers(0, 9))
    if tweak == 9 and raw != b"{}":  # duplicate key appended
        key = draw(st.sampled_from(["operation_type", "tunnel_service_type", "request_id"]))
        raw = raw[:-1] + b',"' + key.encode() + b'":' + orjson.dumps(draw(st.sampled_from(OPS) | json_scalars)) + b"}"
    elif tweak == 8:  # odd value spliced into data
        value = draw(numbers() | escapes())
        raw = raw[:-1] + (b"," if raw != b"{}" else b"") + b'"data":' + value + b"}"
    elif tweak == 7:  # whitespace around
        raw = draw(st.sampled_from([b" ", b"\n", b"\t", b"\x0c", b""])) + raw + draw(st.sampled_from([b" ", b"\r\n", b"x", b""]))
    return raw


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 2))
        pos = draw(st.integers(0, len(data)))
        if kind == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = bytes([draw(st.sampled_from(b'{}[]",:\\0e-.\x00\xff\xc3'))])
        elif pos < len(data):
            del data[pos]
    return bytes(data)


messages = (envelopes() | envelopes() | envelopes() | mutated(envelopes()) | st.text(alphabet=JSONISH, max_size=60).map(str.encode)
            | st.binary(max_size=40) | numbers() | escapes())


@st.composite
def frame_stream(draw: st.DrawFn) -> bytes:
    """Frames carrying generated messages: mostly valid, sometimes fragmented, interleaved or malformed."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(messages)
        kind = draw(st.integers(0, 19))
        if kind < 12:
            out += frame(payload, length_form=draw(st.sampled_from([None, None, None, 126, 127])))
        elif kind < 16:  # fragmented with control frames in between
            cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
            pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
            for i, piece in enumerate(pieces):
                out += frame(piece, OP_TEXT if i == 0 else OP_CONT, fin=i == len(pieces) - 1)
                if draw(st.booleans()):
                    out += frame(draw(st.binary(max_size=6)), draw(st.sampled_from([OP_PING, OP_PONG])))
        elif kind == 16:
            out += frame(draw(st.binary(max_size=8)), OP_CLOSE)
        else:  # malformed header bits
            out += frame(payload, draw(st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, 3, 9, 15])),
                         fin=draw(st.booleans()), rsv=draw(st.sampled_from([0, 0, 1, 4])),
                         masked=draw(st.sampled_from([True, True, False])))
    return out


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    if not data:
        return [data]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# ---------------------------------------------------------------- comparison

def _make_pair(side: int, peer: bool, max_size: int, window: int) -> tuple[Any, Any]:
    pair = []
    for impl in (PY, RS):
        d = impl.Decoder(side, max_message_size=max_size, services=("ssh", "s\\sh"), request_id_window=window)
        d.peer_connected = peer
        pair.append(d)
    return pair[0], pair[1]


def _state(d: Any) -> tuple[bool, bool, int, int]:
    return d.peer_connected, d.closed, d.messages, d.bytes


def _run(chunks: list[bytes], side: int = 0, peer: bool = True, max_size: int = 10240, window: int = 1024,
         actions: list[int] | None = None) -> None:
    py, rs = _make_pair(side, peer, max_size, window)
    for i, chunk in enumerate(chunks):
        action = actions[i % len(actions)] if actions else 0
        if action == 1:
            py.reset()
            rs.reset()
        elif action == 2:
            py.peer_connected = rs.peer_connected = not py.peer_connected
        elif action == 3:   # a new source retired these (docs/codec.md); then none again
            py.retire_request_ids(["1", "3"])
            rs.retire_request_ids(["1", "3"])
        elif action == 4:
            py.retire_request_ids([])
            rs.retire_request_ids([])
        a = py.feed(chunk)
        b = rs.feed(chunk)
        assert a == b, (i, chunk)
        assert _state(py) == _state(rs)
        assert py.request_ids() == rs.request_ids()


@SETTINGS
@given(data=st.data(), side=st.sampled_from([0, 1]), peer=st.booleans(),
       max_size=st.sampled_from([10240, 10240, 64, 200, 0]), window=st.sampled_from([1024, 2, 0]),
       actions=st.lists(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4]), max_size=6))
def test_twins_on_frame_streams(data: st.DataObject, side: int, peer: bool, max_size: int, window: int,
                                actions: list[int]) -> None:
    stream = data.draw(frame_stream())
    _run(data.draw(chunked(stream)), side, peer, max_size, window, actions)


@SETTINGS
@given(msg=messages, side=st.sampled_from([0, 1]), peer=st.booleans())
def test_twins_on_single_messages(msg: bytes, side: int, peer: bool) -> None:
    _run([frame(msg)], side, peer)


@SETTINGS
@given(value=numbers() | escapes() | json_values.map(orjson.dumps)
       | st.text(alphabet=JSONISH, max_size=30).map(str.encode))
def test_twins_on_data_values(value: bytes) -> None:
    msg = b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r","data":' + value + b"}"
    py, rs = _make_pair(0, True, 10240, 1024)
    out = py.feed(frame(msg))
    assert out == rs.feed(frame(msg))
    try:
        orjson.loads(msg)
        accepted = True
    except orjson.JSONDecodeError:
        accepted = False
    assert (out[2] is None) == accepted


@SETTINGS
@given(data=st.data(), raw=st.binary(max_size=300))
def test_twins_on_random_bytes(data: st.DataObject, raw: bytes) -> None:
    _run(data.draw(chunked(raw)), data.draw(st.sampled_from([0, 1])), True, 100)


@SETTINGS
@given(data=st.data(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3))
def test_twins_on_mutated_frames(data: st.DataObject, flips: list[tuple[int, int]]) -> None:
    stream = bytearray(data.draw(frame_stream()))
    for pos, value in flips:
        if stream:
            stream[pos % len(stream)] = value
    _run(data.draw(chunked(bytes(stream))), 0, True, 300)


@SETTINGS
@given(payload=st.binary(max_size=300), code=st.integers(1000, 4999), reason=st.text(max_size=80),
       ping=st.binary(max_size=125))
def test_twins_encoders(payload: bytes, code: int, reason: str, ping: bytes) -> None:
    assert PY.encode_text(payload) == RS.encode_text(payload)
    assert PY.encode_close(code, reason) == RS.encode_close(code, reason)
    assert PY.encode_ping(ping) == RS.encode_ping(ping)


@SETTINGS
@given(data=st.data(), side=st.sampled_from([0, 1]), peer=st.booleans(),
       noted=st.lists(st.sampled_from(OPS), max_size=5), window=st.sampled_from([1024, 2]),
       actions=st.lists(st.sampled_from([0, 0, 0, 1, 2]), max_size=6))
def test_twins_notes_on_frame_streams(data: st.DataObject, side: int, peer: bool, noted: list[str], window: int,
                                      actions: list[int]) -> None:
    """Notes (Decoder(noted=..., on_note=...)): the same payloads, in the same reads, from both twins."""
    chunks = data.draw(chunked(data.draw(frame_stream())))
    notes: tuple[list[Any], list[Any]] = ([], [])
    py, rs = (impl.Decoder(side, max_message_size=300, services=("ssh", "s\\sh"), request_id_window=window,
                           noted=noted, on_note=seen.append)
              for impl, seen in zip((PY, RS), notes))
    py.peer_connected = rs.peer_connected = peer
    for i, chunk in enumerate(chunks):
        action = actions[i % len(actions)] if actions else 0
        if action == 1:
            py.reset()
            rs.reset()
        elif action == 2:
            py.peer_connected = rs.peer_connected = not py.peer_connected
        a, b = py.feed(chunk), rs.feed(chunk)
        assert a == b, (i, chunk)
        assert _state(py) == _state(rs)
        notes[0].append(i)
        notes[1].append(i)
    assert notes[0] == notes[1]


# ---------------------------------------------------------------- a device's oversized output

# terminal output as Huawei's device SDK reads it: control-dense, quotes, backslashes, any text
terminal_text = st.lists(st.sampled_from(["\x01", "\x1b[0m", "\r\n", '"', "\\", "é", "😀", "\x00", "\t", "ab"])
                         | st.text(max_size=30), min_size=1, max_size=3000).map("".join)


@st.composite
def oversized_outputs(draw: st.DrawFn) -> bytes:
    """A device `command_response` that may go over the limit: plain or pretty-printed (as cJSON
    prints it), with a duplicate `data`, an extra field, escapes orjson would not write."""
    rid = draw(st.sampled_from(["cmd-1", "r" * 128]) | st.text(min_size=1, max_size=20))
    data = draw(terminal_text)
    fields = [("operation_type", orjson.dumps("command_response")), ("tunnel_service_type", b'"ssh"'),
              ("request_id", orjson.dumps(rid)), ("data", orjson.dumps(data))]
    extra = draw(st.sampled_from(["", "duplicate", "field", "escaped", "cut"]))
    if extra == "duplicate":
        fields.insert(0, ("data", orjson.dumps(draw(terminal_text))))
    elif extra == "field":
        fields.append(("note", orjson.dumps(draw(json_values))))
    elif extra == "escaped":
        fields[3] = ("data", b'"' + b"\\u00e9\\/\\ud83d\\ude00" * draw(st.integers(1, 400)) + b'"')
    elif extra == "cut":   # a read that cut a character, at either end or both
        raw = "中文😀".encode() * draw(st.integers(1, 900))
        fields[3] = ("data", b'"' + raw[draw(st.integers(0, 3)):len(raw) - draw(st.integers(0, 3))] + b'"')
    if draw(st.booleans()):
        return b"{\n" + b",\n".join(b'\t"' + k.encode() + b'":\t' + v for k, v in fields) + b"\n}"
    return b"{" + b",".join(b'"' + k.encode() + b'":' + v for k, v in fields) + b"}"


@SETTINGS
@given(data=st.data(), msgs=st.lists(oversized_outputs(), min_size=1, max_size=3),
       max_size=st.sampled_from([10240, 2048, 600, 150, 140, 16384]), peer=st.booleans(),
       noted=st.sampled_from([(), ("command_response",)]))
def test_twins_split_oversized_device_output(data: st.DataObject, msgs: list[bytes], max_size: int, peer: bool,
                                            noted: tuple[str, ...]) -> None:
    """Both twins split a device's oversized output into the same messages, and those are
    within the limit and carry the whole output, in order."""
    stream = b"".join(frame(m) for m in msgs)
    chunks = data.draw(chunked(stream))
    notes: tuple[list[bytes], list[bytes]] = ([], [])
    py, rs = (impl.Decoder(1, max_message_size=max_size, noted=noted, on_note=seen.append)
              for impl, seen in zip((PY, RS), notes))
    py.peer_connected = rs.peer_connected = peer
    out = b""
    for chunk in chunks:
        a, b = py.feed(chunk), rs.feed(chunk)
        assert a == b, chunk
        assert _state(py) == _state(rs)
        out += a[0]
    assert notes[0] == notes[1]
    if py.closed or not peer:
        return
    texts, i = [], 0
    while i < len(out):
        n, h = out[i + 1], 2
        if n == 126:
            n, h = int.from_bytes(out[i + 2:i + 4], "big"), 4
        texts.append(out[i + h:i + h + n])
        i += h + n
    assert all(len(t) <= max_size for t in texts)
    want = "".join(orjson.loads(m.decode("utf-8", "replace"))["data"] for m in msgs)
    assert "".join(orjson.loads(t)["data"] for t in texts) == want
