"""The ends' codec (``EndCodec``, ``AwsEndCodec``; docs/codec.md, "The ends' codec"), the same
tests on both twins: the Rust classes of relay._codec_rs and the Python ones of relay.codec._py.end.

Round trips go through the relay's own decoders (``Decoder``, ``AwsDecoder``): what an end sends is
checked and relayed as the relay does it, and what the relay writes is what the other end reads.
"""

from __future__ import annotations

import base64
import os
import random
from types import ModuleType, SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.codec
from relay import aws_messages
from relay.ends import huawei_tcp as forward
from relay.aws_messages import MessageType, ProxyMessage
from relay.codec._py import end as _end_py

SETTINGS = settings(max_examples=int(os.environ.get("CODEC_PROPERTY_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["python", "rust"])
def end(request: pytest.FixtureRequest) -> ModuleType | SimpleNamespace:
    if request.param == "rust":
        if relay.codec.rust_impl is None:
            pytest.skip("relay._codec_rs is not built (make setup)")
        return relay.codec.rust_impl
    return _end_py


def seeded(seed: int = 1) -> Any:
    """A deterministic ``urandom`` (the twins then write the same bytes)."""
    rng = random.Random(seed)
    return rng.randbytes


# ---------------------------------------------------------------- helpers: frames as the relay sees them


def client_frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(first byte, mask key, unmasked payload) of each client frame; every frame must be masked."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b1 & 0x80, "client frames are masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(data[pos:pos + 8], "big")
            pos += 8
        mask = data[pos:pos + 4]
        pos += 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[pos:pos + n]))
        assert len(payload) == n
        out.append((b0, mask, payload))
        pos += n
    return out


def server_frame(payload: bytes, op: int = 1, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        return bytes((b0, n)) + payload
    if n <= 0xFFFF:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


def relay_huawei(frames: bytes) -> bytes:
    """What the relay writes to the device for these source frames (the real decoder, peer connected)."""
    d = relay.codec.Decoder(relay.codec.SOURCE, services=("ssh", "tcp"))
    d.peer_connected = True
    to_peer, to_sender, close = d.feed(frames)
    assert close is None and to_sender == b""
    return to_peer


def relay_aws(frames: bytes) -> bytes:
    d = relay.codec.AwsDecoder(relay.codec.SOURCE, services=("SSH",))
    d.peer_connected = True
    to_peer, to_sender, close = d.feed(frames)
    assert close is None and to_sender == b""
    return to_peer


def joined(items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Items with consecutive data of one connection joined (what any cut of the reads gives)."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        if out and item[0] is not None and out[-1][0] is not None and out[-1][:-1] == item[:-1]:
            out[-1] = (*item[:-1], out[-1][-1] + item[-1])
        else:
            out.append(tuple(item))
    return out


def feed_all(codec: Any, data: bytes, cuts: list[int] = ()) -> tuple[list[tuple[Any, ...]], bytes, Any]:
    """Feed ``data`` cut at ``cuts``; all items, all bytes to send, the close."""
    items: list[tuple[Any, ...]] = []
    to_send = b""
    close = None
    bounds = [0, *sorted(cuts), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        got, send, c = codec.feed(data[a:b])
        items += got
        to_send += send
        if c is not None:
            assert close is None
            close = c
    return joined(items), to_send, close


# ---------------------------------------------------------------- Huawei: outgoing


def test_data_is_byte_for_byte_what_forward_py_sends(end: Any) -> None:
    raw = os.urandom(forward.CHUNK * 3 + 17)
    for conn_id in ("f-0123456789abcdef", 'odd "id" \\ é \n', "x" * 128):
        frames = client_frames(end.EndCodec(urandom=seeded()).data(conn_id, raw))
        assert [p.decode() for _, _, p in frames] == forward.data_messages(conn_id, raw)
        assert all(b0 == 0x81 for b0, _, _ in frames)
        assert all(len(p) <= forward.MAX_MESSAGE for _, _, p in frames)


def test_each_frame_has_its_own_mask_from_urandom(end: Any) -> None:
    calls: list[int] = []

    def urandom(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    c = end.EndCodec(chunk=3, urandom=urandom)
    frames = client_frames(c.data("c", bytes(3 * 300)))   # 300 frames: the pool of 256 keys is refilled once
    assert len(frames) == 300
    assert calls == [1024, 1024]
    masks = [m for _, m, _ in frames]
    assert len(set(masks)) > 290   # random keys (a few repeats of 32-bit keys are possible, not many)
    # the default is the OS's CSPRNG
    assert len(set(m for _, m, _ in client_frames(end.EndCodec(chunk=1).data("c", bytes(50))))) > 45


def test_control_frames(end: Any) -> None:
    c = end.EndCodec(urandom=seeded())
    for message in (forward.ack_message("c", 5), forward.open_message("c", 22).encode(), "é" * 200):
        [(b0, _, payload)] = client_frames(c.text(message))
        assert b0 == 0x81
        assert payload == (message.encode() if isinstance(message, str) else message)
    [(b0, _, payload)] = client_frames(c.ping(b"hb"))
    assert (b0, payload) == (0x89, b"hb")
    [(b0, _, payload)] = client_frames(c.close(4000, "é" * 100))
    assert b0 == 0x88 and payload[:2] == (4000).to_bytes(2, "big") and len(payload) == 2 + 122
    payload[2:].decode()
    with pytest.raises(ValueError, match="125"):
        c.ping(b"x" * 126)
    with pytest.raises(ValueError, match="1000..4999"):
        c.close(999)
    with pytest.raises(TypeError):
        c.text(1)
    a = end.AwsEndCodec(urandom=seeded())
    [(b0, _, payload)] = client_frames(a.binary(b"\x00\x02\x08\x03"))
    assert (b0, payload) == (0x82, b"\x00\x02\x08\x03")


def test_arguments(end: Any) -> None:
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        end.EndCodec(chunk=0)
    with pytest.raises(ValueError, match="max_message_size must be >= 0"):
        end.EndCodec(max_message_size=-1)
    with pytest.raises(TypeError, match="urandom must be callable"):
        end.EndCodec(urandom=3)
    with pytest.raises(ValueError, match="urandom must return 1024 bytes"):
        end.EndCodec(urandom=lambda n: b"abcd").data("c", b"x")
    with pytest.raises(ValueError, match="max_payload must be >= 1"):
        end.AwsEndCodec(max_payload=0)
    a = end.AwsEndCodec()
    with pytest.raises(ValueError, match="int32"):
        a.data("S", 1 << 31, 0, b"x")
    with pytest.raises(ValueError, match="uint32"):
        a.data("S", 1, -1, b"x")
    with pytest.raises(ValueError, match="too long"):
        a.data("S" * 0xFFFF, 1, 1, b"x")


# ---------------------------------------------------------------- AWS: outgoing


@pytest.mark.parametrize("version", [1, 2, 3])
def test_aws_data_is_byte_for_byte_what_aws_streams_sends(end: Any, version: int) -> None:
    from relay.ends.aws_streams import Key, Source

    table = Source(version=version)
    key, _ = table.accepted("SSH")
    raw = os.urandom(aws_messages.MAX_PAYLOAD * 2 + 100)
    want = [effect.data for effect in table.local_data(key, raw)]
    sid = key.service_id if version >= 2 else ""
    cid = key.connection_id if version >= 3 else 0
    frames = client_frames(end.AwsEndCodec(urandom=seeded()).data(sid, key.stream_id, cid, raw))
    assert [p for _, _, p in frames] == want
    assert all(b0 == 0x82 for b0, _, _ in frames)
    assert isinstance(key, Key)


def test_aws_data_fields(end: Any) -> None:
    a = end.AwsEndCodec(max_payload=10, urandom=seeded())
    for sid, stream, cid in (("SSH", 5, 2), ("", -1, 0), ("é", 2**31 - 1, 2**32 - 1)):
        frames = client_frames(a.data(sid, stream, cid, bytes(range(25))))
        want = [aws_messages.frame(ProxyMessage(MessageType.DATA, stream, payload=bytes(range(25))[i:i + 10],
                                                service_id=sid, connection_id=cid)) for i in (0, 10, 20)]
        assert [p for _, _, p in frames] == want
    assert a.data("S", 1, 1, b"") == b""


# ---------------------------------------------------------------- round trips through the relay


def test_huawei_round_trip_through_the_relay(end: Any) -> None:
    rng = random.Random(7)
    sender = end.EndCodec(urandom=seeded(2))
    receiver = end.EndCodec()
    sent: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}
    stream = b""
    for _ in range(40):
        conn = rng.choice("ab")
        raw = rng.randbytes(rng.choice([1, 2, 3, 100, 6999, 7000, 7001, 20000]))
        sent[conn] += raw
        stream += sender.data(conn, raw)
        if rng.random() < 0.2:
            stream += sender.text(forward.ack_message(conn, 1))
    relayed = relay_huawei(stream)
    cuts = sorted(rng.sample(range(1, len(relayed)), 30))
    items, to_send, close = feed_all(receiver, relayed, cuts)
    assert close is None and to_send == b""
    got: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}
    for conn, payload in items:
        if conn is None:
            assert forward.parse(payload).op == forward.ACK
        else:
            got[conn] += payload
    assert got == sent


def test_aws_round_trip_through_the_relay(end: Any) -> None:
    rng = random.Random(8)
    sender = end.AwsEndCodec(urandom=seeded(3))
    receiver = end.AwsEndCodec()
    sent: dict[tuple[str, int, int], bytearray] = {}
    stream = b""
    for _ in range(30):
        key = ("SSH", 1, rng.choice([1, 2]))
        raw = rng.randbytes(rng.choice([1, 100, 64512, 64513, 150000]))
        sent.setdefault(key, bytearray()).extend(raw)
        stream += sender.data(*key, raw)
        if rng.random() < 0.2:
            stream += sender.binary(aws_messages.frame(ProxyMessage(MessageType.CONNECTION_RESET, 1, service_id="SSH",
                                                                    connection_id=9)))
    relayed = relay_aws(stream)
    items, to_send, close = feed_all(receiver, relayed, sorted(rng.sample(range(1, len(relayed)), 30)))
    assert close is None and to_send == b""
    got: dict[tuple[str, int, int], bytearray] = {}
    for sid, stream_id, cid, payload in items:
        if sid is None:
            assert aws_messages.decode(payload).type == MessageType.CONNECTION_RESET
        else:
            got.setdefault((sid, stream_id, cid), bytearray()).extend(payload)
    assert got == sent


# ---------------------------------------------------------------- Huawei: incoming


def envelope(op: str, rid: str, data: Any, service: str = "tcp") -> bytes:
    return orjson.dumps({"operation_type": op, "tunnel_service_type": service, "request_id": rid, "data": data})


def small_stream() -> tuple[bytes, list[tuple[Any, ...]]]:
    """A relay stream with fragments and control frames between them, and its items."""
    first = envelope("forward_data", "a", "QUJD")
    stream = (server_frame(first[:9], fin=False) + server_frame(b"hb", op=9) + server_frame(first[9:], op=0)
              + server_frame(envelope("forward_data", "a", "REVG"))
              + server_frame(b"", op=10)
              + server_frame(envelope("forward_ack", "a", {"bytes": 3}))
              + server_frame(envelope("forward_data", "b", "R0g="))
              + server_frame(envelope("forward_data", "b", "R0h="))          # not canonical: raw
              + server_frame(envelope("forward_data", "a", "R0g=", "ssh"))   # another service: raw
              + server_frame(envelope("command", "r", "ls", "ssh")))
    items = [("a", b"ABCDEF"), (None, envelope("forward_ack", "a", {"bytes": 3})), ("b", b"GH"),
             (None, envelope("forward_data", "b", "R0h=")), (None, envelope("forward_data", "a", "R0g=", "ssh")),
             (None, envelope("command", "r", "ls", "ssh"))]
    return stream, items


def test_feed_at_every_cut(end: Any) -> None:
    stream, want = small_stream()
    for cut in range(len(stream) + 1):
        c = end.EndCodec(urandom=seeded())
        items, to_send, close = feed_all(c, stream, [cut])
        assert close is None, cut
        assert items == want, cut
        assert [(b0, p) for b0, _, p in client_frames(to_send)] == [(0x8A, b"hb")]
    c = end.EndCodec()
    items, _, _ = feed_all(c, stream, list(range(1, len(stream))))   # one byte at a time
    assert items == want
    assert c.messages == 7


@pytest.mark.parametrize("conn_id", ["f-1", 'odd "id" \\ é \n\x7f', ""])
def test_one_feed_groups_a_connection_s_chunks(end: Any, conn_id: str) -> None:
    raw = os.urandom(7000 * 9)
    relayed = relay_huawei(end.EndCodec().data(conn_id, raw)) if conn_id else b"".join(
        server_frame(m.encode()) for m in forward.data_messages(conn_id, raw))   # the relay refuses an empty id
    items, _, _ = end.EndCodec().feed(relayed)
    assert items == [(conn_id, raw)]   # one item for nine messages
    # the same message in another JSON layout (what the relay would pass too) reads the same
    other = orjson.dumps({"data": base64.b64encode(raw[:10]).decode(), "request_id": conn_id,
                          "tunnel_service_type": "tcp", "operation_type": "forward_data"}, option=orjson.OPT_INDENT_2)
    assert end.EndCodec().feed(server_frame(other))[0] == [(conn_id, raw[:10])]


def test_fast_path_only_takes_what_forward_py_would_accept_the_same(end: Any) -> None:
    """A forward_data the codec does not decode comes back raw, and forward.py's rules answer it as
    they do today (abort that connection): bad base64, over CHUNK, empty, non-string data or id."""
    odd = [envelope("forward_data", "a", "QQ="), envelope("forward_data", "a", "QR=="),
           envelope("forward_data", "a", "QUJD="), envelope("forward_data", "a", base64.b64encode(bytes(7001)).decode()),
           envelope("forward_data", "a", ""), envelope("forward_data", "a", 5), envelope("forward_data", 5, "QUJD"),
           envelope("forward_data", "a", "QU JD"), envelope("forward_data", "a", "QUJ\u00e9"),
           orjson.dumps({"operation_type": "forward_data", "tunnel_service_type": "tcp", "request_id": "a"})]
    c = end.EndCodec()
    items, _, close = c.feed(b"".join(server_frame(m) for m in odd))
    assert close is None
    assert items == [(None, m) for m in odd]
    # chunk bounds what is decoded
    items, _, _ = end.EndCodec(chunk=2).feed(server_frame(envelope("forward_data", "a", "QUJD")))
    assert items == [(None, envelope("forward_data", "a", "QUJD"))]


@pytest.mark.parametrize(("stream", "close"), [
    (bytes((0x81, 0x82)) + b"\0\0\0\0{}", (1002, "server frames must not be masked", False)),
    (bytes((0xC1, 0)), (1002, "reserved bits must be zero", False)),
    (bytes((0x83, 0)), (1002, "unknown opcode 3", False)),
    (bytes((0x81, 127)) + (1 << 63).to_bytes(8, "big"), (1002, "frame length has the most significant bit set", False)),
    (bytes((0x09, 0)), (1002, "control frames must not be fragmented", False)),
    (bytes((0x89, 126, 0, 126)), (1002, "control frame payload exceeds 125 bytes", False)),
    (server_frame(b"x", op=0), (1002, "unexpected continuation frame", False)),
    (server_frame(b"{", fin=False) + server_frame(b"{}"), (1002, "expected a continuation frame", False)),
    (server_frame(b"x", op=2), (1003, "binary messages are not supported", False)),
    (server_frame(b"x" * 101)[:4], (1009, "message exceeds 100 bytes", False)),
    (server_frame(b"[" * 60, fin=False) + server_frame(b"]" * 41, op=0)[:2], (1009, "message exceeds 100 bytes", False)),
    (server_frame(b'"\xff"'), (1007, "invalid UTF-8 in text message", False)),
    (server_frame(b"{"), (4400, "invalid JSON", False)),
    (server_frame(b"[1]"), (4400, "message must be a JSON object", False)),
    (server_frame(b"\x0f\xa0replaced", op=8), (4000, "replaced", True)),
    (server_frame(b"", op=8), (1000, "", True)),
    (server_frame(b"\x03", op=8), (1002, "close frame payload of 1 byte", False)),
    (server_frame(b"\x03\xed", op=8), (1002, "invalid close code 1005", False)),
    (server_frame(b"\x03\xe8\xff", op=8), (1007, "invalid UTF-8 in close reason", False)),
])
def test_huawei_closes(end: Any, stream: bytes, close: tuple[int, str, bool]) -> None:
    good = server_frame(envelope("forward_data", "a", "QUJD"))
    c = end.EndCodec(max_message_size=100)
    for cut in range(len(stream) + 1):
        c = end.EndCodec(max_message_size=100)
        items, _, got = feed_all(c, good + stream + good, [len(good) + cut])
        assert got == close, cut
        assert items == [("a", b"ABC")]   # what came before the close, nothing after
        assert c.closed
    assert c.feed(good) == ([], b"", None)
    c.reset()
    assert not c.closed
    assert c.feed(good)[0] == [("a", b"ABC")]


def test_aws_closes(end: Any) -> None:
    def close_of(stream: bytes, max_payload: int = 64512) -> Any:
        return end.AwsEndCodec(max_payload=max_payload).feed(stream)[2]

    data = aws_messages.frame(ProxyMessage(MessageType.DATA, 1, payload=b"abc"))
    assert close_of(server_frame(b"x")) == (1003, _end_py.TEXT_REFUSED, False)
    assert close_of(server_frame(b"\0\0", op=2)) == (4400, "empty tunnel message", False)
    assert close_of(server_frame(b"\0\1\x0f", op=2)) == (4400, "invalid tunnel message: invalid wire type 7", False)
    assert close_of(server_frame(data, op=2), max_payload=2) == (1009, "payload exceeds 2 bytes", False)
    assert close_of(server_frame(b"x" * 131077, op=2)[:10]) == (1009, "frame exceeds 131076 bytes", False)
    assert close_of(server_frame(b"\x03\xe8bye", op=8)) == (1000, "bye", True)


def test_aws_incoming_at_every_cut(end: Any) -> None:
    msgs = [ProxyMessage(MessageType.DATA, 1, payload=b"abc", service_id="SSH", connection_id=1),
            ProxyMessage(MessageType.DATA, 1, payload=b"def", service_id="SSH", connection_id=1),
            ProxyMessage(MessageType.DATA, 1, payload=b"", service_id="SSH", connection_id=1),
            ProxyMessage(MessageType.STREAM_RESET, 1, service_id="SSH"),
            ProxyMessage(MessageType.DATA, 2, payload=b"gh", connection_id=2),
            ProxyMessage(MessageType.SERVICE_IDS, available_service_ids=("SSH",))]
    tunnel = b"".join(aws_messages.frame(m) for m in msgs)
    stream = (server_frame(tunnel[:7], op=2, fin=False) + server_frame(b"p", op=9) + server_frame(tunnel[7:30], op=0,
                                                                                                   fin=False)
              + server_frame(tunnel[30:], op=0))
    want = [("SSH", 1, 1, b"abcdef"), (None, 0, 0, aws_messages.encode(msgs[3])), ("", 2, 2, b"gh"),
            (None, 0, 0, aws_messages.encode(msgs[5]))]
    for cut in range(len(stream) + 1):
        items, to_send, close = feed_all(end.AwsEndCodec(), stream, [cut])
        assert close is None and items == want, cut
        assert [(b0, p) for b0, _, p in client_frames(to_send)] == [(0x8A, b"p")]


# ---------------------------------------------------------------- the twins agree


@st.composite
def huawei_streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.integers(0, 9))
        rid = draw(st.sampled_from(["a", "b", "é", ""]))
        if kind < 5:
            raw = draw(st.binary(max_size=40))
            text = base64.b64encode(raw).decode()
            if kind == 4:   # mutated base64
                text = draw(st.sampled_from(["", "=", "QQ=", "QR==", "QUJD=", "QQ==QQ==", " QUJD", text + "A"]))
            payload = envelope("forward_data", rid, text)
        elif kind == 5:
            payload = envelope("forward_ack", rid, {"bytes": draw(st.integers(0, 9))})
        elif kind == 6:
            payload = draw(st.binary(max_size=12))   # mostly not JSON
        elif kind == 7:
            payload = envelope("forward_data", rid, draw(st.text(max_size=12)), draw(st.sampled_from(["tcp", "ssh"])))
        else:
            payload = draw(st.sampled_from([b"[]", b"{}", b"\"x\"", b"{\"data\":\"QUJD\"}"]))
        op = draw(st.sampled_from([1, 1, 1, 1, 2, 9, 10, 8]))
        if op == 8:
            payload = payload[:2]
        if op in (9, 10):
            payload = payload[:125]
        if op == 1 and len(payload) > 2 and draw(st.booleans()):
            cut = draw(st.integers(1, len(payload) - 1))
            parts.append(server_frame(payload[:cut], fin=False) + server_frame(payload[cut:], op=0))
        else:
            parts.append(server_frame(payload, op=op))
        if draw(st.integers(0, 15)) == 0:
            parts.append(bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))]))
    return b"".join(parts)


def both(name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    assert relay.codec.rust_impl is not None
    return (getattr(_end_py, name)(*args, urandom=seeded(5), **kwargs),
            getattr(relay.codec.rust_impl, name)(*args, urandom=seeded(5), **kwargs))


need_rust = pytest.mark.skipif(relay.codec.rust_impl is None, reason="relay._codec_rs is not built")


@need_rust
@SETTINGS
@given(huawei_streams(), st.lists(st.integers(0, 400), max_size=4), st.sampled_from([30, 100, 1 << 20]),
       st.sampled_from([1, 3, 7000]))
def test_twins_agree_on_huawei_streams(stream: bytes, cuts: list[int], limit: int, chunk: int) -> None:
    py, rs = both("EndCodec", chunk, limit)
    cuts = sorted(min(c, len(stream)) for c in cuts)
    bounds = [0, *cuts, len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        assert py.feed(stream[a:b]) == rs.feed(stream[a:b])
        assert (py.closed, py.messages) == (rs.closed, rs.messages)


@st.composite
def aws_streams(draw: st.DrawFn) -> bytes:
    tunnel = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            tunnel += aws_messages.frame(ProxyMessage(
                draw(st.sampled_from([MessageType.DATA] * 3 + [MessageType.STREAM_RESET, MessageType.SERVICE_IDS])),
                draw(st.sampled_from([0, 1, -1])), payload=draw(st.binary(max_size=30)),
                service_id=draw(st.sampled_from(["", "SSH", "é"])), connection_id=draw(st.sampled_from([0, 1, 7]))))
        elif kind < 8:
            body = draw(st.binary(max_size=12))
            tunnel += len(body).to_bytes(2, "big") + body
        else:
            tunnel += draw(st.binary(max_size=6))
    parts = []
    pos = 0
    while pos < len(tunnel):
        n = draw(st.integers(1, max(1, len(tunnel) - pos)))
        last = pos + n >= len(tunnel)
        parts.append(server_frame(tunnel[pos:pos + n], op=2 if not parts else draw(st.sampled_from([0, 0, 2, 1])),
                                  fin=last or draw(st.booleans())))
        if draw(st.integers(0, 5)) == 0:
            parts.append(server_frame(draw(st.binary(max_size=4)), op=draw(st.sampled_from([9, 10, 8]))))
        pos += n
    return b"".join(parts)


@need_rust
@SETTINGS
@given(aws_streams(), st.lists(st.integers(0, 300), max_size=4), st.sampled_from([1, 20, 64512]))
def test_twins_agree_on_aws_streams(stream: bytes, cuts: list[int], max_payload: int) -> None:
    py, rs = both("AwsEndCodec", max_payload)
    cuts = sorted(min(c, len(stream)) for c in cuts)
    bounds = [0, *cuts, len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        assert py.feed(stream[a:b]) == rs.feed(stream[a:b])
        assert (py.closed, py.messages) == (rs.closed, rs.messages)


@need_rust
@SETTINGS
@given(st.text(max_size=20), st.binary(max_size=300), st.integers(1, 50))
def test_twins_write_the_same_huawei_bytes(conn_id: str, raw: bytes, chunk: int) -> None:
    py, rs = both("EndCodec", chunk)
    assert py.data(conn_id, raw) == rs.data(conn_id, raw)
    assert py.text(conn_id) == rs.text(conn_id)
    assert py.ping(raw[:125]) == rs.ping(raw[:125])
    assert py.close(4000, conn_id) == rs.close(4000, conn_id)


@need_rust
@SETTINGS
@given(st.text(max_size=8), st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=300),
       st.integers(1, 100))
def test_twins_write_the_same_aws_bytes(sid: str, stream_id: int, cid: int, raw: bytes, max_payload: int) -> None:
    py, rs = both("AwsEndCodec", max_payload)
    assert py.data(sid, stream_id, cid, raw) == rs.data(sid, stream_id, cid, raw)
    assert py.binary(raw) == rs.binary(raw)


@need_rust
@SETTINGS
@given(st.binary(max_size=40))
def test_canonical_base64_is_the_same_set(text: bytes) -> None:
    candidates = [text.decode("latin-1"), base64.b64encode(text).decode()]
    for s in candidates:
        frame = server_frame(envelope("forward_data", "a", s))
        py, rs = both("EndCodec")
        assert py.feed(frame) == rs.feed(frame)


def test_the_facade_uses_rust_when_expected() -> None:
    if os.environ.get("RELAY_CODEC", "").strip().lower() == "python":
        assert relay.codec.EndCodec is _end_py.EndCodec
        assert relay.codec.AwsEndCodec is _end_py.AwsEndCodec
        return
    if os.environ.get("RELAY_EXPECT_RUST") == "1" or relay.codec.rust_impl is not None:
        assert relay.codec.rust_impl is not None
        assert relay.codec.EndCodec is relay.codec.rust_impl.EndCodec
        assert relay.codec.AwsEndCodec is relay.codec.rust_impl.AwsEndCodec
    else:
        assert relay.codec.EndCodec is _end_py.EndCodec
