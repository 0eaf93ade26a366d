"""The codec rules (docs/codec.md), run on both twins through the ``codec`` fixture."""

from __future__ import annotations

from types import ModuleType

import orjson
import pytest

from tests.codec.frames import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, envelope, frame, padded, server_text,
)


def make(codec: ModuleType, side: int | None = None, *, peer: bool = True, **kw: object):
    d = codec.Decoder(codec.SOURCE if side is None else side, **kw)
    d.peer_connected = peer
    return d


def close_code(result: tuple[bytes, bytes, tuple[int, str] | None]) -> int | None:
    return None if result[2] is None else result[2][0]


# ---------------------------------------------------------------- module surface

def test_module_surface(codec: ModuleType) -> None:
    assert codec.SOURCE == 0 and codec.DEVICE == 1
    assert codec.IMPLEMENTATION in ("python", "rust")
    assert set(codec.__all__) >= {"SOURCE", "DEVICE", "IMPLEMENTATION", "Decoder", "encode_text",
                                  "encode_close", "encode_ping"}


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_encode_text(codec: ModuleType, n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    assert codec.encode_text(payload) == server_text(payload)


def test_encode_text_needs_bytes(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        codec.encode_text("text")


def test_encode_close(codec: ModuleType) -> None:
    assert codec.encode_close(1000) == b"\x88\x02\x03\xe8"
    assert codec.encode_close(4400, "invalid JSON") == b"\x88\x0e\x11\x30invalid JSON"
    assert codec.encode_close(4999, "") == b"\x88\x02\x13\x87"
    long = "é" * 100  # 200 bytes: cut to 122 so no character is split
    f = codec.encode_close(1001, long)
    assert f[1] == 2 + 122 and f[4:].decode() == "é" * 61
    f = codec.encode_close(1001, "a" * 200)
    assert f[1] == 125 and f[4:] == b"a" * 123
    f = codec.encode_close(1001, "a" + "😀" * 40)  # 1 + 160 bytes -> 1 + 30*4
    assert f[4:].decode() == "a" + "😀" * 30
    for bad in (0, 999, 5000, 65536, -1):
        with pytest.raises(ValueError):
            codec.encode_close(bad)
    with pytest.raises(TypeError):
        codec.encode_close("1000")


def test_encode_ping(codec: ModuleType) -> None:
    assert codec.encode_ping() == b"\x89\x00"
    assert codec.encode_ping(b"hb") == b"\x89\x02hb"
    assert codec.encode_ping(b"p" * 125) == b"\x89\x7d" + b"p" * 125
    with pytest.raises(ValueError):
        codec.encode_ping(b"p" * 126)


# ---------------------------------------------------------------- decoder attributes

def test_decoder_defaults_and_attributes(codec: ModuleType) -> None:
    d = codec.Decoder(codec.DEVICE)
    assert (d.peer_connected, d.closed, d.messages, d.bytes) == (False, False, 0, 0)
    d.peer_connected = True
    assert d.peer_connected is True
    with pytest.raises(TypeError):
        d.peer_connected = 1
    for name in ("closed", "messages", "bytes"):
        with pytest.raises(AttributeError):
            setattr(d, name, 1)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(side=2), ValueError), (dict(side=-1), ValueError), (dict(side="0"), ValueError), (dict(side=1.0), ValueError),
    (dict(side=0, max_message_size=-1), ValueError), (dict(side=0, request_id_window=-1), ValueError),
    (dict(side=0, max_message_size=1.5), TypeError), (dict(side=0, services="ssh"), TypeError),
    (dict(side=0, services=("ssh", 1)), TypeError), (dict(side=0, services=5), TypeError),
])
def test_decoder_bad_arguments(codec: ModuleType, kwargs: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        codec.Decoder(**kwargs)


@pytest.mark.parametrize("decoder", ["Decoder", "AwsDecoder"])
@pytest.mark.parametrize("services", ["ssh", ("ssh", 1), 5, b"ssh", [None]])
def test_services_argument_is_checked_alike_by_both_decoders(codec: ModuleType, decoder: str, services: object) -> None:
    """One check of the tunnel's service types for both decoders, the same on both twins."""
    with pytest.raises(TypeError, match=r"^services must be an iterable of str$"):
        getattr(codec, decoder)(codec.SOURCE, services=services)


def test_feed_needs_bytes(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        make(codec).feed("text")


# ---------------------------------------------------------------- forwarding

def test_forward_single_and_pipelined(codec: ModuleType) -> None:
    d = make(codec)
    msgs = [envelope("connect", "c")] + [envelope("command", f"r{i}", data="ls -l\n" * i) for i in range(16)]
    out = d.feed(b"".join(frame(m) for m in msgs))
    assert out == (b"".join(server_text(m) for m in msgs), b"", None)
    assert d.messages == 17 and d.bytes == sum(map(len, msgs))


def test_forward_device_side(codec: ModuleType) -> None:
    d = make(codec, codec.DEVICE)
    msgs = [envelope(op, "same") for op in ("connect_response", "command_response", "command_response", "disconnect")]
    assert d.feed(b"".join(frame(m) for m in msgs)) == (b"".join(map(server_text, msgs)), b"", None)


def test_payload_forwarded_byte_for_byte(codec: ModuleType) -> None:
    # whitespace, escapes, key order, extra keys and duplicates survive untouched
    m = (b' {"data" : {"a":[1,2.5e3,null,true]} ,"operation_type":"x","operation_type":"command",'
         b'"tunnel_service_type":"ssh","request_id":"\\u0072-1","extra":"\\ud83d\\ude00"}\n')
    assert make(codec).feed(frame(m)) == (server_text(m), b"", None)


def test_empty_feed_and_partial_header(codec: ModuleType) -> None:
    d = make(codec)
    assert d.feed(b"") == (b"", b"", None)
    f = frame(envelope())
    assert d.feed(f[:1]) == (b"", b"", None)
    assert d.feed(f[1:]) == (server_text(envelope()), b"", None)


@pytest.mark.parametrize("form", [0, 126, 127])
def test_non_minimal_lengths_accepted(codec: ModuleType, form: int) -> None:
    m = envelope()
    assert make(codec).feed(frame(m, length_form=form)) == (server_text(m), b"", None)


@pytest.mark.parametrize("size", [200, 70000])
def test_big_messages_use_long_headers(codec: ModuleType, size: int) -> None:
    m = padded("command", size)
    assert make(codec, max_message_size=100000).feed(frame(m)) == (server_text(m), b"", None)


# ---------------------------------------------------------------- frame violations

@pytest.mark.parametrize("data, code, reason", [
    (frame(b"{}", masked=False), 1002, "client frames must be masked"),
    (frame(b"{}", rsv=4), 1002, "reserved bits must be zero"),
    (frame(b"{}", rsv=2), 1002, "reserved bits must be zero"),
    (frame(b"{}", rsv=1), 1002, "reserved bits must be zero"),
    *[(frame(b"", op), 1002, f"unknown opcode {op}") for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    (frame(b"", length_form=127, length=1 << 63), 1002, "frame length has the most significant bit set"),
    (frame(b"", OP_PING, fin=False), 1002, "control frames must not be fragmented"),
    (frame(b"", OP_CLOSE, fin=False), 1002, "control frames must not be fragmented"),
    (frame(b"p" * 126, OP_PING), 1002, "control frame payload exceeds 125 bytes"),
    (frame(b"p" * 126, OP_PONG), 1002, "control frame payload exceeds 125 bytes"),
    (frame(b"x", OP_CONT), 1002, "unexpected continuation frame"),
    (frame(b"x", OP_CONT, fin=False), 1002, "unexpected continuation frame"),
    (frame(b"{", fin=False) + frame(b"}"), 1002, "expected a continuation frame"),
    (frame(b"{", fin=False) + frame(b"}", OP_BINARY), 1002, "expected a continuation frame"),
    (frame(b"\x00\x01", OP_BINARY), 1003, "binary messages are not supported"),
    (frame(b"", OP_BINARY, fin=False), 1003, "binary messages are not supported"),
    (frame(b"\xff"), 1007, "invalid UTF-8 in text message"),
    (frame(b'{"a":"\xed\xa0\x80"}'), 1007, "invalid UTF-8 in text message"),  # encoded surrogate
    (frame(b'{"a":"\xc0\x80"}'), 1007, "invalid UTF-8 in text message"),  # overlong
    (frame(b'{"a":"\xf4\x90\x80\x80"}'), 1007, "invalid UTF-8 in text message"),  # > U+10FFFF
])
def test_frame_violations(codec: ModuleType, data: bytes, code: int, reason: str) -> None:
    d = make(codec)
    assert d.feed(data) == (b"", b"", (code, reason))
    assert d.closed
    assert d.feed(frame(envelope())) == (b"", b"", None)


def test_violation_order(codec: ModuleType) -> None:
    # unmasked wins over reserved bits and opcode; reserved bits over opcode; opcode over length
    assert close_code(make(codec).feed(frame(b"", 3, rsv=1, masked=False))) == 1002
    assert make(codec).feed(frame(b"", 3, rsv=1))[2] == (1002, "reserved bits must be zero")
    assert make(codec).feed(frame(b"", 3, length_form=127, length=1 << 63))[2] == (1002, "unknown opcode 3")
    # a binary frame in the middle of a text message is a protocol error, not 1003
    assert make(codec).feed(frame(b"{", fin=False) + frame(b"", OP_BINARY))[2][0] == 1002


def test_binary_closed_on_header_alone(codec: ModuleType) -> None:
    f = frame(b"z" * 1000, OP_BINARY)
    assert make(codec).feed(f[:8])[2] == (1003, "binary messages are not supported")


def test_utf8_split_across_fragments_is_fine(codec: ModuleType) -> None:
    m = envelope(data="é€😀")
    cut = m.index("€".encode()) + 1  # in the middle of a 3-byte sequence
    d = make(codec)
    assert d.feed(frame(m[:cut], fin=False) + frame(m[cut:], OP_CONT)) == (server_text(m), b"", None)


# ---------------------------------------------------------------- sizes

def test_size_limit_exact(codec: ModuleType) -> None:
    ok = padded("command", 10240, "a")
    assert make(codec).feed(frame(ok)) == (server_text(ok), b"", None)
    too_big = padded("command", 10241, "b")
    f = frame(too_big)
    # the header alone triggers the close
    assert make(codec).feed(f[:8]) == (b"", b"", (1009, "message exceeds 10240 bytes"))
    assert make(codec).feed(f)[2] == (1009, "message exceeds 10240 bytes")


def test_size_limit_sums_fragments(codec: ModuleType) -> None:
    m = padded("command", 10240)
    parts = [m[:4000], m[4000:8000], m[8000:]]
    data = frame(parts[0], fin=False) + frame(parts[1], OP_CONT, fin=False) + frame(parts[2], OP_CONT)
    assert make(codec).feed(data) == (server_text(m), b"", None)
    data = frame(parts[0], fin=False) + frame(parts[1], OP_CONT, fin=False) + frame(parts[2] + b" ", OP_CONT)
    d = make(codec)
    assert d.feed(data[:-len(parts[2])]) == (b"", b"", (1009, "message exceeds 10240 bytes"))


def test_custom_size_limit(codec: ModuleType) -> None:
    m = envelope()
    assert make(codec, max_message_size=len(m)).feed(frame(m))[2] is None
    assert make(codec, max_message_size=len(m) - 1).feed(frame(m))[2] == (1009, f"message exceeds {len(m) - 1} bytes")
    assert make(codec, max_message_size=0).feed(frame(b""))[2] == (4400, "invalid JSON")


def test_control_frames_do_not_count_towards_size(codec: ModuleType) -> None:
    m = padded("command", 100)
    d = make(codec, max_message_size=100)
    data = frame(m[:50], fin=False) + frame(b"p" * 125, OP_PING) + frame(m[50:], OP_CONT)
    assert d.feed(data) == (server_text(m), b"\x8a\x7d" + b"p" * 125, None)


# ---------------------------------------------------------------- fragmentation and chunking

def _fragmented_stream() -> tuple[bytes, bytes, bytes]:
    m1 = envelope("command", "frag", data="line\n" * 30)
    m2 = envelope("command", "next")
    data = (frame(m1[:10], fin=False) + frame(b"ping!", OP_PING) + frame(m1[10:100], OP_CONT, fin=False)
            + frame(b"", OP_PONG) + frame(b"", OP_CONT, fin=False) + frame(m1[100:], OP_CONT) + frame(m2))
    return data, server_text(m1) + server_text(m2), b"\x8a\x05ping!"


def test_split_at_every_byte_boundary(codec: ModuleType) -> None:
    data, peer, sender = _fragmented_stream()
    for cut in range(len(data) + 1):
        d = make(codec)
        a = d.feed(data[:cut])
        b = d.feed(data[cut:])
        assert (a[0] + b[0], a[1] + b[1], a[2], b[2]) == (peer, sender, None, None), cut
        assert d.messages == 2


def test_one_byte_at_a_time(codec: ModuleType) -> None:
    data, peer, sender = _fragmented_stream()
    d = make(codec)
    outs = [d.feed(data[i:i + 1]) for i in range(len(data))]
    assert b"".join(o[0] for o in outs) == peer
    assert b"".join(o[1] for o in outs) == sender
    assert all(o[2] is None for o in outs)
    # each message comes out in the feed that completes it
    assert sum(1 for o in outs if o[0]) == 2


def test_close_inside_fragmented_message(codec: ModuleType) -> None:
    m = envelope()
    d = make(codec)
    assert d.feed(frame(m[:5], fin=False) + frame(b"\x03\xe8bye", OP_CLOSE) + frame(m[5:], OP_CONT)) == \
        (b"", b"", (1000, ""))


# ---------------------------------------------------------------- ping / pong / close frames

def test_ping_and_pong_frames(codec: ModuleType) -> None:
    d = make(codec)
    out = d.feed(frame(b"", OP_PING) + frame(b"abc", OP_PING) + frame(b"zzz", OP_PONG) + frame(b"p" * 125, OP_PING))
    assert out == (b"", b"\x8a\x00" + b"\x8a\x03abc" + b"\x8a\x7d" + b"p" * 125, None)
    assert d.messages == 0


@pytest.mark.parametrize("payload, close", [
    (b"", (1000, "")),
    (b"\x03", (1002, "close frame payload of 1 byte")),
    (b"\x03\xe8", (1000, "")),
    (b"\x03\xe9going away", (1001, "")),
    (b"\x03\xea", (1002, "")),
    (b"\x03\xeb", (1003, "")),
    (b"\x03\xef", (1007, "")),
    (b"\x03\xf3", (1011, "")),
    (b"\x0b\xb8", (3000, "")),
    (b"\x13\x87", (4999, "")),
    (b"\x0f\xa0\xc3\xa9", (4000, "")),
    (b"\x03\xe7", (1002, "invalid close code 999")),
    (b"\x03\xec", (1002, "invalid close code 1004")),
    (b"\x03\xed", (1002, "invalid close code 1005")),
    (b"\x03\xee", (1002, "invalid close code 1006")),
    (b"\x03\xf4", (1002, "invalid close code 1012")),
    (b"\x03\xf7", (1002, "invalid close code 1015")),
    (b"\x0b\xb7", (1002, "invalid close code 2999")),
    (b"\x13\x88", (1002, "invalid close code 5000")),
    (b"\x00\x00", (1002, "invalid close code 0")),
    (b"\x03\xe8\xff", (1007, "invalid UTF-8 in close reason")),
    (b"\x03\xe8\xc3", (1007, "invalid UTF-8 in close reason")),
])
def test_close_frames(codec: ModuleType, payload: bytes, close: tuple[int, str]) -> None:
    d = make(codec)
    assert d.feed(frame(envelope()) + frame(payload, OP_CLOSE) + frame(envelope("command", "after"))) == \
        (server_text(envelope()), b"", close)
    assert d.closed and d.messages == 1


# ---------------------------------------------------------------- envelope

@pytest.mark.parametrize("payload, reason", [
    (b"", "invalid JSON"),
    (b"not json", "invalid JSON"),
    (b'{"operation_type":"command"', "invalid JSON"),
    (b"\xef\xbb\xbf{}", "invalid JSON"),  # BOM
    (b"[1, 2]", "message must be a JSON object"),
    (b'"text"', "message must be a JSON object"),
    (b"null", "message must be a JSON object"),
    (b"{}", "operation_type must be a string"),
    (envelope(op=5), "operation_type must be a string"),  # type: ignore[arg-type]
    (envelope(op=None), "operation_type must be a string"),  # type: ignore[arg-type]
    (b'{"operation_type":"command","request_id":"r"}', "tunnel_service_type must be a string"),
    (envelope(service=["ssh"]), "tunnel_service_type must be a string"),  # type: ignore[arg-type]
    (envelope(service="rdp"), "tunnel_service_type 'rdp' is not supported"),
    (envelope(service="SSH"), "tunnel_service_type 'SSH' is not supported"),
    (b'{"operation_type":"command","tunnel_service_type":"ssh"}', "request_id must be a string"),
    (envelope(rid=7), "request_id must be a string"),  # type: ignore[arg-type]
    (envelope(rid=""), "request_id must be 1 to 128 bytes"),
    (envelope(rid="r" * 129), "request_id must be 1 to 128 bytes"),
    (envelope(rid="é" * 65), "request_id must be 1 to 128 bytes"),  # 130 bytes
    # the service is checked before the operation
    (envelope(op="nope", service="rdp"), "tunnel_service_type 'rdp' is not supported"),
])
def test_invalid_envelopes(codec: ModuleType, payload: bytes, reason: str) -> None:
    assert make(codec).feed(frame(payload)) == (b"", b"", (4400, reason))


def test_request_id_lengths(codec: ModuleType) -> None:
    for rid in ("r", "r" * 128, "é" * 64, "😀" * 32):
        m = envelope(rid=rid)
        assert make(codec).feed(frame(m)) == (server_text(m), b"", None), rid


def test_custom_services(codec: ModuleType) -> None:
    d = make(codec, services=("ssh", "rdp"))
    ms = [envelope(service="rdp", rid="1"), envelope(service="ssh", rid="2")]
    assert d.feed(b"".join(map(frame, ms))) == (b"".join(map(server_text, ms)), b"", None)
    assert make(codec, services=()).feed(frame(envelope()))[2] == (4400, "tunnel_service_type 'ssh' is not supported")


@pytest.mark.parametrize("side, op", [
    ("SOURCE", "connect_response"), ("SOURCE", "command_response"), ("SOURCE", "pong"), ("SOURCE", "Command"),
    ("DEVICE", "connect"), ("DEVICE", "command"), ("DEVICE", "pong"), ("DEVICE", ""),
])
def test_operation_not_allowed(codec: ModuleType, side: str, op: str) -> None:
    out = make(codec, getattr(codec, side)).feed(frame(envelope(op)))
    assert out == (b"", b"", (4403, f"operation_type '{op}' is not allowed from the {side.lower()} side"))


def test_long_reason_is_truncated(codec: ModuleType) -> None:
    op = "ü" * 100
    code, reason = make(codec).feed(frame(envelope(op)))[2]  # type: ignore[misc]
    assert code == 4403 and len(reason.encode()) <= 123
    assert reason == ("operation_type '" + op).encode()[:123].decode("utf-8", "ignore")


def test_duplicate_keys_last_wins(codec: ModuleType) -> None:
    good = b'{"operation_type":"bogus","tunnel_service_type":"ssh","request_id":"1","operation_type":"command"}'
    assert make(codec).feed(frame(good)) == (server_text(good), b"", None)
    bad = b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"1","operation_type":"bogus"}'
    assert make(codec).feed(frame(bad))[2] == (4403, "operation_type 'bogus' is not allowed from the source side")
    bad = b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"1","request_id":5}'
    assert make(codec).feed(frame(bad))[2] == (4400, "request_id must be a string")


def test_escaped_keys_and_values_are_decoded(codec: ModuleType) -> None:
    m = b'{"operation\\u005ftype":"c\\u006fmmand","tunnel_service_type":"\\u0073sh","request_id":"\\/1"}'
    assert make(codec).feed(frame(m)) == (server_text(m), b"", None)
    d = make(codec, peer=False)
    _, sender, _ = d.feed(frame(b'{"operation_type":"ping","tunnel_service_type":"ssh","request_id":"\\/1"}'))
    assert b'"request_id":"/1"' in sender


def test_nested_fields_are_not_envelope_fields(codec: ModuleType) -> None:
    m = b'{"data":{"operation_type":"command","tunnel_service_type":"ssh","request_id":"1"}}'
    assert make(codec).feed(frame(m))[2] == (4400, "operation_type must be a string")


def test_data_optional_and_extra_keys(codec: ModuleType) -> None:
    for m in (envelope(data=...), envelope(data={"deep": [1, {"x": None}]}), envelope(extra=1, more=[True])):
        assert make(codec).feed(frame(m)) == (server_text(m), b"", None)


# ---------------------------------------------------------------- replies

def _text_payloads(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        assert stream[0] == 0x81
        n = stream[1]
        h = 2
        if n == 126:
            n, h = int.from_bytes(stream[2:4], "big"), 4
        out.append(stream[h:h + n])
        stream = stream[h + n:]
    return out


def test_envelope_ping_answered_with_pong(codec: ModuleType) -> None:
    for peer in (True, False):
        d = make(codec, peer=peer)
        rid = 'q"\\\n\x01é😀\u2028/'
        peer_out, sender, close = d.feed(frame(envelope("ping", rid, data={"a": 1})))
        assert (peer_out, close) == (b"", None)
        assert _text_payloads(sender) == [orjson.dumps(
            {"operation_type": "pong", "tunnel_service_type": "ssh", "request_id": rid, "data": None})]
        assert d.messages == 1


def test_device_ping(codec: ModuleType) -> None:
    d = make(codec, codec.DEVICE)
    _, sender, _ = d.feed(frame(envelope("ping", "7")))
    assert _text_payloads(sender) == [b'{"operation_type":"pong","tunnel_service_type":"ssh","request_id":"7","data":null}']


@pytest.mark.parametrize("side, msg, ops", [
    ("SOURCE", "device is not connected", ("connect", "command")),
    ("DEVICE", "source is not connected", ("connect_response", "command_response")),
])
def test_peer_not_connected(codec: ModuleType, side: str, msg: str, ops: tuple[str, str]) -> None:
    d = make(codec, getattr(codec, side), peer=False)
    data = frame(envelope(ops[0], "a\tb")) + frame(envelope("disconnect", "x")) + frame(envelope(ops[1], "c"))
    peer_out, sender, close = d.feed(data)
    assert (peer_out, close) == (b"", None)
    assert _text_payloads(sender) == [
        orjson.dumps({"operation_type": "disconnect", "tunnel_service_type": "ssh", "request_id": rid,
                      "data": {"status_code": "404", "status_msg": msg}})
        for rid in ("a\tb", "c")
    ]
    assert d.messages == 3  # the silently consumed disconnect counts as accepted
    d.peer_connected = True
    m = envelope("disconnect", "y")
    assert d.feed(frame(m)) == (server_text(m), b"", None)


def test_pong_and_404_go_out_in_order_with_control_replies(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    data = frame(b"1", OP_PING) + frame(envelope("ping", "p")) + frame(b"2", OP_PING)
    _, sender, _ = d.feed(data)
    assert sender.startswith(b"\x8a\x011\x81") and sender.endswith(b"\x8a\x012")


# ---------------------------------------------------------------- request ids

def test_request_id_reuse(codec: ModuleType) -> None:
    d = make(codec)
    a, b = envelope("connect", "1"), envelope("command", "2")
    assert d.feed(frame(a) + frame(b)) == (server_text(a) + server_text(b), b"", None)
    again = envelope("command", "1")
    assert d.feed(frame(envelope("command", "3")) + frame(again) + frame(envelope("command", "4"))) == \
        (server_text(envelope("command", "3")), b"", (4409, "request_id reused"))


def test_request_id_not_checked_for_other_ops_or_device(codec: ModuleType) -> None:
    d = make(codec)
    ms = [envelope("connect", "1"), envelope("disconnect", "1"), envelope("ping", "1"), envelope("disconnect", "1")]
    assert d.feed(b"".join(map(frame, ms)))[2] is None
    dev = make(codec, codec.DEVICE)
    ms = [envelope("command_response", "1"), envelope("command_response", "1"), envelope("connect_response", "1")]
    assert dev.feed(b"".join(map(frame, ms)))[2] is None


def test_request_id_window_fifo(codec: ModuleType) -> None:
    d = make(codec, request_id_window=2)
    assert d.feed(b"".join(frame(envelope("command", r)) for r in "abc"))[2] is None
    assert d.feed(frame(envelope("command", "a")))[2] is None  # "a" fell out of the window
    # window now holds c, a
    assert make_feed_code(d, "b") is None  # window: a, b
    assert make_feed_code(d, "a") == 4409


def test_retired_request_ids_are_dropped_while_the_peer_is_connected(codec: ModuleType) -> None:
    src = make(codec)
    assert src.request_ids() == ()
    src.feed(b"".join(frame(envelope(op, rid)) for op, rid in
                      [("connect", "c1"), ("command", "k1"), ("disconnect", "x"), ("command", "k2")]))
    assert src.request_ids() == ("c1", "k1", "k2")   # the requests that need fresh ids, oldest first
    dev = make(codec, codec.DEVICE)
    dev.retire_request_ids(src.request_ids())
    old = [envelope("command_response", "c1", data="old$ "), envelope("disconnect", "k2")]
    mine = envelope("command_response", "c9", data="new$ ")
    assert dev.feed(b"".join(map(frame, old)) + frame(mine)) == (server_text(mine), b"", None)
    assert dev.messages == 3
    # without a peer a retired id gets the usual answer
    dev.peer_connected = False
    _, answer, _ = dev.feed(frame(envelope("command_response", "k1")))
    assert b'"status_code":"404"' in answer
    dev.peer_connected = True
    dev.retire_request_ids([])
    assert dev.feed(frame(old[0]))[0] == server_text(old[0])
    for bad in ("c1", ["c1", 2], None):
        with pytest.raises(TypeError):
            dev.retire_request_ids(bad)


def test_request_ids_are_the_window(codec: ModuleType) -> None:
    d = make(codec, request_id_window=2)
    d.feed(b"".join(frame(envelope("command", r)) for r in "abc"))
    assert d.request_ids() == ("b", "c")
    assert make(codec, request_id_window=0).request_ids() == ()


def make_feed_code(d, rid: str) -> int | None:
    return close_code(d.feed(frame(envelope("command", rid))))


def test_request_id_window_zero(codec: ModuleType) -> None:
    d = make(codec, request_id_window=0)
    assert d.feed(frame(envelope("command", "a")) + frame(envelope("command", "a")))[2] is None


def test_rejected_ids_are_not_remembered(codec: ModuleType) -> None:
    d = make(codec, peer=False)
    # answered with a 404 disconnect: still accepted, so remembered
    d.feed(frame(envelope("command", "a")))
    d.reset()
    assert make_feed_code(d, "a") == 4409


# ---------------------------------------------------------------- reset and counters

def test_reset_keeps_request_ids_drops_partial_state(codec: ModuleType) -> None:
    d = make(codec)
    m = envelope("connect", "1")
    assert d.feed(frame(m))[2] is None
    d.feed(frame(b'{"operation', fin=False) + frame(b"xx")[:3])  # a fragment in progress + a partial frame
    d.reset()
    m2 = envelope("command", "2")
    assert d.feed(frame(m2)) == (server_text(m2), b"", None)
    assert d.feed(frame(b"", OP_CLOSE))[2] == (1000, "")
    assert d.closed
    d.reset()
    assert not d.closed and d.peer_connected
    assert d.feed(frame(m)) == (b"", b"", (4409, "request_id reused"))
    assert (d.messages, d.bytes) == (2, len(m) + len(m2))


def test_counters(codec: ModuleType) -> None:
    d = make(codec)
    ms = [envelope("connect", "1"), envelope("ping", "2"), envelope("command", "3", data="z" * 500)]
    d.feed(b"".join(map(frame, ms)) + frame(b"p", OP_PING) + frame(b"", OP_PONG))
    assert (d.messages, d.bytes) == (3, sum(map(len, ms)))
    d.feed(frame(b"[]"))
    assert (d.messages, d.bytes) == (3, sum(map(len, ms)))


# ---------------------------------------------------------------- JSON edge cases (orjson is the reference)

def _orjson_accepts(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


DATA_CASES = [
    b"1", b"-0", b"0.5", b"1E+2", b"1e-400", b"1e400", b"-1e400", b"1.7976931348623157e308", b"1.7976931348623158e308",
    b"1.7976931348623159e308", b"123456789012345678901234567890", b"9" * 308, b"9" * 309, b"-" + b"9" * 309,
    b"18446744073709551616", b"0e99999999999", b"1e99999999999", b"0." + b"0" * 400 + b"1e400",
    b"01", b"-01", b"1.", b".1", b"+1", b"-", b"1e", b"1e+", b"0x10", b"NaN", b"Infinity", b"-Infinity", b"nan",
    b"true", b"false", b"null", b"tru", b"True", b"nul", b"nulll",
    b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\udc00"', b'"\\ud800x"', b'"\\ud800\\u0041"', b'"\\ud800\\ud800"',
    b'"\\uDBFF\\uDFFF"', b'"\\u0000"', b'"\\U0041"', b'"\\x41"', b'"\\u00g0"', b'"\\u00"', b'"\\/"', b'"\\\'"',
    b'"\x00"', b'"\x1f"', b'"\t"', b'"\n"', b'"\x7f"', b'"\xc2\x80"', b'"\xe2\x80\xa8"',
    b"[1,]", b"[,1]", b"[1,,2]", b'{"a":1,}', b'{"a" 1}', b'{"a":}', b"{1:2}", b"{'a':1}", b"[1 2]", b"[1]]", b"[[1]",
    b" [ ] ", b"\t{\r\n}", b"[1]\x0c", b"[\x0c1]", b"[1\x00]", b"[\xc2\xa01]",
    b"[" * 1021 + b"]" * 1021, b"[" * 1022 + b"]" * 1022, b"[" * 1023 + b"]" * 1023,
    b'{"a":' * 1023 + b"1" + b"}" * 1023, b'{"a":' * 1022 + b"[]" + b"}" * 1022, b'{"a":' * 1023 + b"[]" + b"}" * 1023,
]


@pytest.mark.parametrize("value", DATA_CASES, ids=lambda v: repr(v[:24]))
def test_json_edge_cases_match_orjson(codec: ModuleType, value: bytes) -> None:
    m = b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r","data":' + value + b"}"
    out = make(codec, max_message_size=100000).feed(frame(m))
    want = _orjson_accepts(m)
    assert out == ((server_text(m), b"", None) if want else (b"", b"", (4400, "invalid JSON")))


def test_depth_limit_is_1024(codec: ModuleType) -> None:
    def doc(depth: int) -> bytes:  # envelope object + depth-1 nested arrays
        return (b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r","data":'
                + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}")
    assert make(codec).feed(frame(doc(1024)))[2] is None
    assert make(codec).feed(frame(doc(1025)))[2] == (4400, "invalid JSON")


@pytest.mark.parametrize("doc, ok", [(b"{} ", True), (b"{}\n\r\t ", True), (b"  {}", True), (b"{}x", False),
                                     (b"{} {}", False), (b"{}\x00", False), (b"\xef\xbb\xbf{}", False)])
def test_document_boundaries(codec: ModuleType, doc: bytes, ok: bool) -> None:
    reason = "operation_type must be a string" if ok else "invalid JSON"
    assert make(codec).feed(frame(doc))[2] == (4400, reason)


# ---------------------------------------------------------------- TCP forwarding operations

@pytest.mark.parametrize("side_name, allowed, refused", [
    ("SOURCE", ["forward_open", "forward_data", "forward_ack", "forward_close"], ["forward_open_response"]),
    ("DEVICE", ["forward_open_response", "forward_data", "forward_ack", "forward_close"], ["forward_open"]),
])
def test_forwarding_operations_by_side(codec: ModuleType, side_name: str, allowed: list, refused: list) -> None:
    side = getattr(codec, side_name)
    for i, op in enumerate(allowed):
        d = make(codec, side, services=("ssh", "tcp"))
        msg = envelope(op, f"c{i}", service="tcp")
        assert d.feed(frame(msg)) == (server_text(msg), b"", None)
    for op in refused:
        d = make(codec, side, services=("ssh", "tcp"))
        assert close_code(d.feed(frame(envelope(op, "x", service="tcp")))) == 4403


def test_forward_open_needs_a_fresh_connection_id_but_data_reuses_it(codec: ModuleType) -> None:
    d = make(codec, codec.SOURCE, services=("ssh", "tcp"))
    stream = b"".join(frame(envelope(op, "conn-1", service="tcp"))
                      for op in ("forward_open", "forward_data", "forward_data", "forward_ack", "forward_close"))
    to_peer, _, close = d.feed(stream)
    assert close is None and d.messages == 5
    assert close_code(d.feed(frame(envelope("forward_open", "conn-1", service="tcp")))) == 4409


def test_tcp_service_only_when_enabled(codec: ModuleType) -> None:
    d = make(codec, codec.SOURCE)
    assert close_code(d.feed(frame(envelope("forward_open", "c", service="tcp")))) == 4400


# ---------------------------------------------------------------- a device's oversized output

SDK_DATA = "\x01" * 2000 + 'q"\\\x1b[0m é😀\r\n' * 3   # one 2048-byte read of control-dense output


def server_texts(out: bytes) -> list[bytes]:
    """The payloads of the server text frames in ``out`` (reference parsing, not the codec's)."""
    found, i = [], 0
    while i < len(out):
        assert out[i] == 0x81
        n, h = out[i + 1], 2
        if n == 126:
            n, h = int.from_bytes(out[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, h = int.from_bytes(out[i + 2:i + 10], "big"), 10
        found.append(out[i + h:i + h + n])
        i += h + n
    return found


def sdk_message(data: str = SDK_DATA, rid: str = "cmd-7", op: str = "command_response") -> bytes:
    """As cJSON_Print writes it: pretty-printed, controls as \\u00xx."""
    return (f'{{\n\t"operation_type":\t"{op}",\n\t"tunnel_service_type":\t"ssh",\n\t"request_id":\t"{rid}",'
            f'\n\t"data":\t').encode() + orjson.dumps(data) + b"\n}"


def test_a_devices_oversized_output_is_split_within_the_limit(codec: ModuleType) -> None:
    msg = sdk_message()
    assert 10240 < len(msg) <= 16384
    d = make(codec, codec.DEVICE)
    to_peer, to_sender, close = d.feed(frame(msg))
    assert (to_sender, close) == (b"", None)
    pieces = [orjson.loads(p) for p in server_texts(to_peer)]
    assert len(pieces) == 2 and all(len(p) <= 10240 for p in server_texts(to_peer))
    assert [set(p) for p in pieces] == [{"operation_type", "tunnel_service_type", "request_id", "data"}] * 2
    assert {(p["operation_type"], p["tunnel_service_type"], p["request_id"]) for p in pieces} == \
        {("command_response", "ssh", "cmd-7")}
    assert "".join(p["data"] for p in pieces) == SDK_DATA
    # each piece is as long as the limit allows: the first one leaves no room for the next character
    first = server_texts(to_peer)[0]
    assert len(first) + len(orjson.dumps(pieces[1]["data"][0])) - 2 > 10240
    assert (d.messages, d.bytes, d.closed) == (1, len(msg), False)


def test_split_pieces_keep_their_order_among_other_messages(codec: ModuleType) -> None:
    before, after = envelope("command_response", "a", data="1"), envelope("command_response", "b", data="2")
    big = sdk_message("x" * 12000)
    d = make(codec, codec.DEVICE)
    stream = frame(before) + frame(big[:5000], fin=False) + frame(big[5000:], OP_CONT) + frame(after)
    out = b"".join(d.feed(stream[i:i + 777])[0] for i in range(0, len(stream), 777))
    texts = [orjson.loads(p) for p in server_texts(out)]
    assert [t["request_id"] for t in texts] == ["a", "cmd-7", "cmd-7", "b"]
    assert "".join(t["data"] for t in texts) == "1" + "x" * 12000 + "2"


def test_split_cuts_between_characters_and_fits_any_limit(codec: ModuleType) -> None:
    data = ("é😀\x00\"\\" + "a" * 7) * 600
    for limit in (200, 1000, 4096, 10240):
        out, _, close = make(codec, codec.DEVICE, max_message_size=limit).feed(frame(sdk_message(data)))
        assert close is None
        texts = server_texts(out)
        assert all(len(t) <= limit for t in texts)
        assert "".join(orjson.loads(t)["data"] for t in texts) == data


def test_split_pieces_are_noted_each(codec: ModuleType) -> None:
    seen: list[bytes] = []
    d = codec.Decoder(codec.DEVICE, noted=("command_response",), on_note=seen.append)
    d.peer_connected = True
    out, _, _ = d.feed(frame(sdk_message()))
    assert seen == server_texts(out) and len(seen) == 2


def test_an_oversized_output_while_the_source_is_away_gets_one_answer(codec: ModuleType) -> None:
    d = make(codec, codec.DEVICE, peer=False)
    to_peer, to_sender, close = d.feed(frame(sdk_message()))
    assert (to_peer, close) == (b"", None)
    (answer,) = server_texts(to_sender)
    assert orjson.loads(answer)["data"] == {"status_code": "404", "status_msg": "source is not connected"}


@pytest.mark.parametrize("msg", [
    sdk_message(op="connect_response"),
    envelope("command_response", data=["x" * 11000], service="ssh"),
    envelope("command_response", data=..., pad="x" * 11000),
    envelope("ping", data="x" * 11000),
], ids=["not-output", "data-not-a-string", "no-data", "ping"])
def test_other_oversized_device_messages_are_refused_as_before(codec: ModuleType, msg: bytes) -> None:
    d = make(codec, codec.DEVICE)
    assert d.feed(frame(msg)) == (b"", b"", (1009, "message exceeds 10240 bytes"))


def test_the_envelope_rules_come_before_the_size(codec: ModuleType) -> None:
    d = make(codec, codec.DEVICE)
    assert d.feed(frame(envelope("command", data="x" * 11000)))[2][0] == 4403
    assert make(codec, codec.DEVICE).feed(frame(b"[" + b" " * 11000 + b"]"))[2][0] == 4400


def test_the_split_ceiling(codec: ModuleType) -> None:
    over = padded("command_response", 16385)
    assert make(codec, codec.DEVICE).feed(frame(over)[:8]) == (b"", b"", (1009, "message exceeds 16384 bytes"))
    out, _, close = make(codec, codec.DEVICE).feed(frame(padded("command_response", 16384)))
    assert close is None and len(server_texts(out)) == 2
    # a source never gets the ceiling; a limit above it is the limit on both sides
    assert make(codec, codec.SOURCE).feed(frame(padded("command", 10241))[:8])[2] == \
        (1009, "message exceeds 10240 bytes")
    big = make(codec, codec.DEVICE, max_message_size=20000)
    assert big.feed(frame(padded("command_response", 20001))[:8])[2] == (1009, "message exceeds 20000 bytes")


def test_a_limit_too_small_to_split_refuses_as_before(codec: ModuleType) -> None:
    # a split needs room for data of at least half the limit (and 64 bytes): pieces stay efficient
    msg = envelope("command_response", "r", data="abcdefghij" * 20)
    overhead = len(envelope("command_response", "r", data=""))
    assert overhead >= 64
    limit = 2 * overhead - 1   # room for data: overhead - 1, under half the limit
    assert make(codec, codec.DEVICE, max_message_size=limit).feed(frame(msg))[2] == \
        (1009, f"message exceeds {limit} bytes")
    out, _, close = make(codec, codec.DEVICE, max_message_size=limit + 1).feed(frame(msg))
    room = limit + 1 - overhead
    assert close is None
    assert "".join(orjson.loads(t)["data"] for t in server_texts(out)) == "abcdefghij" * 20
    assert [len(orjson.loads(t)["data"]) for t in server_texts(out)] == [room, room, 200 - 2 * room]


# ---------------------------------------------------------------- a character cut between two SDK reads

def sdk_raw(read: bytes, rid: str = "cmd-9") -> bytes:
    """What the SDK sends for one read: its bytes as they are, even a character cut in two."""
    return (f'{{\n\t"operation_type":\t"command_response",\n\t"tunnel_service_type":\t"ssh",\n\t"request_id":\t"{rid}",'
            f'\n\t"data":\t"').encode() + read + b'"\n}'


def test_a_character_cut_between_two_sdk_reads_costs_the_character_not_the_session(codec: ModuleType) -> None:
    text = "日志 中文输出 ".encode() * 200   # 3-byte characters: a 2048-byte read cuts one
    reads = [text[:2048], text[2048:]]
    d = make(codec, codec.DEVICE)
    out = b""
    for read in reads:
        to_peer, to_sender, close = d.feed(frame(sdk_raw(read)))
        assert (to_sender, close) == (b"", None)
        out += to_peer
    texts = [orjson.loads(t) for t in server_texts(out)]
    assert {(t["operation_type"], t["request_id"]) for t in texts} == {("command_response", "cmd-9")}
    got = "".join(t["data"] for t in texts)
    # the cut character's bytes become U+FFFD on both sides of the cut; the rest is whole
    assert got == "".join(read.decode("utf-8", "replace") for read in reads)
    assert got.count("\ufffd") == 3 and got.replace("\ufffd" * 3, "中") == text.decode()
    assert (d.messages, d.bytes) == (2, sum(len(sdk_raw(r)) for r in reads))


@pytest.mark.parametrize("side, msg", [
    (0, b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r","data":"\xe4\xb8"}'),
    (1, b'{"operation_type":"connect_response","tunnel_service_type":"ssh","request_id":"r","data":"\xe4"}'),
    (1, b'{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"\xe4","data":"x"}'[:-2]),
    (1, b'{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"r","data":["\xe4"]}'),
    (1, b"\xff"),
], ids=["source", "not-output", "not-json", "data-not-a-string", "not-json-at-all"])
def test_other_invalid_utf8_is_refused_as_before(codec: ModuleType, side: int, msg: bytes) -> None:
    assert make(codec, side).feed(frame(msg)) == (b"", b"", (1007, "invalid UTF-8 in text message"))
