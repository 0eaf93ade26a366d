"""relay.aws_messages: the AWS IoT Secure Tunneling protobuf Message, its framing and the stream reader.

Golden bytes are computed by hand from the protobuf wire format, and the encodings are also checked
against the ``protobuf`` package (a Message class built at run time from the schema of the V3
protocol guide)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.aws_messages import (
    MAX_PAYLOAD, MessageReader, MessageType, ProxyMessage, decode, encode, frame,
)

SETTINGS = settings(max_examples=int(os.environ.get("CODEC_PROPERTY_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

T = MessageType

GOLDEN = [
    (ProxyMessage(T.UNKNOWN), b""),
    (ProxyMessage(T.SESSION_RESET), b"\x08\x04"),
    (ProxyMessage(T.DATA, stream_id=1, payload=b"hi"), b"\x08\x01\x10\x01\x22\x02hi"),
    (ProxyMessage(T.SERVICE_IDS, available_service_ids=("SSH", "HTTP")), b"\x08\x05\x32\x03SSH\x32\x04HTTP"),
    (ProxyMessage(T.SERVICE_IDS, available_service_ids=("", "é")), b"\x08\x05\x32\x00\x32\x02\xc3\xa9"),
    (ProxyMessage(T.STREAM_START, stream_id=300, service_id="ssh1", connection_id=1),
     b"\x08\x02\x10\xac\x02\x2a\x04ssh1\x38\x01"),
    (ProxyMessage(T.STREAM_RESET, stream_id=-1), b"\x08\x03\x10" + b"\xff" * 9 + b"\x01"),
    (ProxyMessage(T.DATA, ignorable=True), b"\x08\x01\x18\x01"),
    (ProxyMessage(T.CONNECTION_RESET, stream_id=2**31 - 1, connection_id=2**32 - 1),
     b"\x08\x07\x10\xff\xff\xff\xff\x07\x38\xff\xff\xff\xff\x0f"),
    (ProxyMessage(T.DATA, stream_id=1, payload=b"x" * 200), b"\x08\x01\x10\x01\x22\xc8\x01" + b"x" * 200),
    (ProxyMessage(-5), b"\x08" + b"\xfb" + b"\xff" * 8 + b"\x01"),
]


@pytest.mark.parametrize("msg, wire", GOLDEN)
def test_golden_encodings(msg: ProxyMessage, wire: bytes) -> None:
    assert encode(msg) == wire
    assert decode(wire) == msg
    assert frame(msg) == len(wire).to_bytes(2, "big") + wire


def test_decoded_type_is_the_enum_when_known() -> None:
    assert decode(b"\x08\x06").type is T.CONNECTION_START
    unknown = decode(b"\x08\x09")
    assert unknown.type == 9 and not isinstance(unknown.type, MessageType)
    assert decode(b"").type is T.UNKNOWN


def test_decode_protobuf_semantics() -> None:
    # the last value of a singular field wins; repeated fields accumulate
    assert decode(b"\x08\x01\x08\x03\x2a\x01a\x2a\x01b") == ProxyMessage(T.STREAM_RESET, service_id="b")
    assert decode(b"\x32\x01a\x08\x05\x32\x01b").available_service_ids == ("a", "b")
    # fields in any order; non-minimal varints are fine
    assert decode(b"\x38\x02\x10\x07\x08\x81\x80\x00") == ProxyMessage(T.DATA, stream_id=7, connection_id=2)
    # int32/uint32 keep the low 32 bits, bool is any non-zero varint
    assert decode(b"\x10\x80\x80\x80\x80\x10").stream_id == 0
    assert decode(b"\x38\xff\xff\xff\xff\x1f").connection_id == 2**32 - 1
    assert decode(b"\x18\x02").ignorable is True
    assert decode(b"\x18\x00").ignorable is False


def test_unknown_fields_are_skipped() -> None:
    want = ProxyMessage(T.DATA, stream_id=1)
    for unknown in (b"\x40\x05", b"\x41" + b"\x00" * 8, b"\x42\x03abc", b"\x45\x00\x00\x00\x00",
                    b"\xf8\xff\xff\xff\x0f\x01"):  # field 8 varint/fixed64/bytes/fixed32, field 2^29-1
        assert decode(b"\x08\x01" + unknown + b"\x10\x01") == want


@pytest.mark.parametrize("data, message", [
    (b"\x08", "truncated varint"),
    (b"\x08\x80", "truncated varint"),
    (b"\x80", "truncated varint"),
    (b"\x08" + b"\xff" * 9 + b"\x02", "varint exceeds 64 bits"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "varint exceeds 64 bits"),
    (b"\x00\x01", "invalid field number 0"),
    (b"\x80\x80\x80\x80\x10\x00", "invalid field number 536870912"),
    (b"\x0b", "invalid wire type 3"),
    (b"\x44", "invalid wire type 4"),
    (b"\x0e", "invalid wire type 6"),
    (b"\x0f", "invalid wire type 7"),
    (b"\x0a\x00", "wrong wire type 2 for field 1"),
    (b"\x15\x00\x00\x00\x00", "wrong wire type 5 for field 2"),
    (b"\x20\x01", "wrong wire type 0 for field 4"),
    (b"\x39" + b"\x00" * 8, "wrong wire type 1 for field 7"),
    (b"\x22\x03ab", "truncated field 4"),
    (b"\x22\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "truncated field 4"),
    (b"\x22", "truncated varint"),
    (b"\x41\x00\x00", "truncated field 8"),
    (b"\x45\x00", "truncated field 8"),
    (b"\x2a\x01\xff", "field 5 is not valid UTF-8"),
    (b"\x32\x03\xed\xa0\x80", "field 6 is not valid UTF-8"),  # a surrogate
])
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as err:
        decode(data)
    assert str(err.value) == message


def test_encode_range_checks() -> None:
    for bad in (ProxyMessage(T.DATA, stream_id=2**31), ProxyMessage(T.DATA, connection_id=-1),
                ProxyMessage(T.DATA, connection_id=2**32), ProxyMessage(2**31)):
        with pytest.raises(ValueError):
            encode(bad)
    with pytest.raises(ValueError):
        frame(ProxyMessage(T.DATA, payload=b"x" * 0xFFFF))
    big = ProxyMessage(T.DATA, stream_id=1, payload=b"x" * MAX_PAYLOAD, service_id="s" * 900, connection_id=1)
    assert len(frame(big)) <= 0xFFFF + 2


# ---------------------------------------------------------------- the reader

def test_reader_splits_any_chunking() -> None:
    msgs = [msg for msg, _ in GOLDEN]
    stream = b"".join(map(frame, msgs))
    for cut in range(len(stream) + 1):
        reader = MessageReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == msgs and reader.buffered == 0
    reader = MessageReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == msgs


def test_reader_holds_incomplete_messages_and_raises_on_garbage() -> None:
    reader = MessageReader()
    assert reader.feed(b"\x00\x04\x08\x01") == [] and reader.buffered == 4
    assert reader.feed(b"\x10\x02") == [ProxyMessage(T.DATA, stream_id=2)]
    assert reader.feed(b"\x00\x00") == [ProxyMessage(T.UNKNOWN)]  # a zero-length message decodes as UNKNOWN
    with pytest.raises(ValueError):
        reader.feed(b"\x00\x01\x0b")


# ---------------------------------------------------------------- properties

messages = st.builds(
    ProxyMessage,
    type=st.sampled_from(list(T)) | st.integers(-(2**31), 2**31 - 1),
    stream_id=st.integers(-(2**31), 2**31 - 1),
    ignorable=st.booleans(),
    payload=st.binary(max_size=300),
    service_id=st.text(max_size=12),
    available_service_ids=st.lists(st.text(max_size=6), max_size=4).map(tuple),
    connection_id=st.integers(0, 2**32 - 1),
)


@SETTINGS
@given(msg=messages)
def test_round_trip(msg: ProxyMessage) -> None:
    assert decode(encode(msg)) == msg
    assert MessageReader().feed(frame(msg) * 2) == [msg, msg]


@SETTINGS
@given(data=st.binary(max_size=60))
def test_decode_raises_only_value_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except ValueError:
        return
    assert decode(encode(msg)) == msg


# ---------------------------------------------------------------- against the protobuf package

def _protobuf_message_class() -> type:
    # protobuf is in the test extra (pyproject.toml): a missing package fails here, never skips
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    package = "com.amazonaws.iot.securedtunneling"
    fdp = descriptor_pb2.FileDescriptorProto(name="relay_test_tunnel.proto", package=package, syntax="proto3")
    msg = fdp.message_type.add(name="Message")
    enum = msg.enum_type.add(name="Type")
    for t in T:
        enum.value.add(name=t.name, number=t.value)
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg.field.add(name="type", number=1, label=opt, type=F.TYPE_ENUM, type_name=f".{package}.Message.Type")
    msg.field.add(name="streamId", number=2, label=opt, type=F.TYPE_INT32)
    msg.field.add(name="ignorable", number=3, label=opt, type=F.TYPE_BOOL)
    msg.field.add(name="payload", number=4, label=opt, type=F.TYPE_BYTES)
    msg.field.add(name="serviceId", number=5, label=opt, type=F.TYPE_STRING)
    msg.field.add(name="availableServiceIds", number=6, label=rep, type=F.TYPE_STRING)
    msg.field.add(name="connectionId", number=7, label=opt, type=F.TYPE_UINT32)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Message"))


@pytest.fixture(scope="module")
def pb() -> type:
    return _protobuf_message_class()


def _from_pb(m: object) -> ProxyMessage:
    return ProxyMessage(m.type, m.streamId, m.ignorable, m.payload, m.serviceId,  # type: ignore[attr-defined]
                        tuple(m.availableServiceIds), m.connectionId)  # type: ignore[attr-defined]


@pytest.mark.parametrize("msg, wire", GOLDEN)
def test_golden_against_protobuf(pb: type, msg: ProxyMessage, wire: bytes) -> None:
    assert _from_pb(pb.FromString(wire)) == msg  # type: ignore[attr-defined]


@SETTINGS
@given(msg=messages)
def test_encoding_matches_protobuf(pb: type, msg: ProxyMessage) -> None:
    theirs = pb(type=msg.type, streamId=msg.stream_id, ignorable=msg.ignorable, payload=msg.payload,
                serviceId=msg.service_id, availableServiceIds=list(msg.available_service_ids),
                connectionId=msg.connection_id)
    assert encode(msg) == theirs.SerializeToString()
    assert _from_pb(pb.FromString(encode(msg))) == msg  # type: ignore[attr-defined]


@SETTINGS
@given(data=st.binary(max_size=60) | messages.map(encode).map(lambda b: b + b"\x42\x01z"))
def test_what_we_accept_protobuf_reads_the_same(pb: type, data: bytes) -> None:
    try:
        ours = decode(data)
    except ValueError:
        return
    assert _from_pb(pb.FromString(data)) == ours  # type: ignore[attr-defined]
