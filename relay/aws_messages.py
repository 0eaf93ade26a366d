"""AWS IoT Secure Tunneling messages (protocol V1-V3): the protobuf ``Message`` and its framing.

On the WebSocket (binary frames only) the byte stream is a sequence of tunnel messages, each a
2-byte big-endian length followed by a protobuf ``com.amazonaws.iot.securedtunneling.Message``:

    message Message {
        Type    type = 1;                    // enum, see MessageType
        int32   streamId = 2;
        bool    ignorable = 3;
        bytes   payload = 4;                 // at most 63 KiB (64512 bytes)
        string  serviceId = 5;               // V2+
        repeated string availableServiceIds = 6;   // V2+, SERVICE_IDS only
        uint32  connectionId = 7;            // V3
    }

This module is not the relay's hot path (that is ``relay.codec.AwsDecoder``, which forwards
messages without decoding them into objects): the relay uses it to build the messages it sends
itself (SERVICE_IDS, SESSION_RESET, STREAM_RESET), the clients use it for everything. The Python
twin of the codec uses ``decode`` as the definition of a well-formed message. Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid

__all__ = ["MessageType", "ProxyMessage", "MessageReader", "encode", "frame", "decode", "MAX_PAYLOAD",
           "MAX_MESSAGE", "SUBPROTOCOL", "VERSION_OF", "subprotocols", "CLIENT_TOKEN", "valid_client_token",
           "new_client_token"]

MAX_PAYLOAD = 63 * 1024  # 64512: the most payload a tunnel message may carry
MAX_MESSAGE = 0xFFFF  # the 2-byte length prefix

# -- the protocol's constants, for both ends and the relay --------------------------------------

# The subprotocols of AWS's guides (Sec-WebSocket-Protocol), version -> name and name -> version;
# the relay answers with the highest offered.
SUBPROTOCOL = {1: "aws.iot.securetunneling-1.0", 2: "aws.iot.securetunneling-2.0", 3: "aws.iot.securetunneling-3.0"}
VERSION_OF = {name: version for version, name in SUBPROTOCOL.items()}
# A client token (the `client-token` header) lets the same access token reconnect.
CLIENT_TOKEN = re.compile(r"[A-Za-z0-9-]{32,128}")


def subprotocols(highest: int = 3) -> list[str]:
    """What to offer in Sec-WebSocket-Protocol, best first: `highest` and every older version."""
    return [SUBPROTOCOL[v] for v in range(highest, 0, -1)]


def new_client_token() -> str:
    """A client token (the guides recommend a UUIDv4)."""
    return str(uuid.uuid4())


def valid_client_token(text: str) -> bool:
    return CLIENT_TOKEN.fullmatch(text) is not None


class MessageType(enum.IntEnum):
    UNKNOWN = 0
    DATA = 1
    STREAM_START = 2
    STREAM_RESET = 3
    SESSION_RESET = 4
    SERVICE_IDS = 5
    CONNECTION_START = 6
    CONNECTION_RESET = 7


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyMessage:
    """One tunnel message. ``type`` is a ``MessageType``, or a plain ``int`` for a value this
    version does not know (as decoded from a newer peer)."""

    type: int
    stream_id: int = 0
    ignorable: bool = False
    payload: bytes = b""
    service_id: str = ""
    available_service_ids: tuple[str, ...] = ()
    connection_id: int = 0


# ---------------------------------------------------------------- encoding

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode(msg: ProxyMessage) -> bytes:
    """The protobuf encoding (no length prefix), fields in number order, default values omitted
    (as proto3 does). int32 ``stream_id`` and the ``type`` enum: negative values take 10 bytes
    (two's complement on 64 bits); ``connection_id`` is a uint32."""
    if not -(1 << 31) <= msg.type < 1 << 31:
        raise ValueError("type must fit in an int32")
    if not -(1 << 31) <= msg.stream_id < 1 << 31:
        raise ValueError("stream_id must fit in an int32")
    if not 0 <= msg.connection_id < 1 << 32:
        raise ValueError("connection_id must fit in a uint32")
    out = bytearray()
    if msg.type:
        out += b"\x08" + _varint(msg.type & 0xFFFFFFFFFFFFFFFF)
    if msg.stream_id:
        out += b"\x10" + _varint(msg.stream_id & 0xFFFFFFFFFFFFFFFF)
    if msg.ignorable:
        out += b"\x18\x01"
    if msg.payload:
        out += _field_bytes(4, bytes(msg.payload))
    if msg.service_id:
        out += _field_bytes(5, msg.service_id.encode())
    for service in msg.available_service_ids:  # repeated: every element, empty ones too
        out += _field_bytes(6, service.encode())
    if msg.connection_id:
        out += b"\x38" + _varint(msg.connection_id)
    return bytes(out)


def frame(msg: ProxyMessage) -> bytes:
    """A tunnel message as it goes on the wire: 2-byte big-endian length + ``encode(msg)``."""
    body = encode(msg)
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes does not fit a 2-byte length prefix")
    return len(body).to_bytes(2, "big") + body


# ---------------------------------------------------------------- decoding

# field number -> wire type expected (0 varint, 2 length-delimited)
_KNOWN = {1: 0, 2: 0, 3: 0, 4: 2, 5: 2, 6: 2, 7: 0}
_MAX_FIELD = (1 << 29) - 1
_TYPES: dict[int, MessageType] = {t.value: t for t in MessageType}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, new position). At most 10 bytes, and the value must fit in 64 bits."""
    value = 0
    for i in range(10):
        if pos + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i == 9 and byte > 1:
                raise ValueError("varint exceeds 64 bits")
            return value, pos + i + 1
    raise ValueError("varint exceeds 64 bits")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def decode(data: bytes) -> ProxyMessage:
    """Parse one protobuf ``Message`` (without its length prefix).

    Raises ValueError on: a truncated or over-long varint, field number 0 or above 2^29-1, wire
    types 3, 4, 6, 7 (groups are not supported), a known field with another wire type than its
    own, a length or fixed-size field running past the end, a ``serviceId`` or
    ``availableServiceIds`` that is not UTF-8. Unknown fields (valid wire type) are skipped. As in
    protobuf, the last value of a singular field wins; int32 and the enum keep the low 32 bits.
    """
    data = bytes(data)
    end = len(data)
    pos = 0
    type_ = stream_id = connection_id = 0
    ignorable = False
    payload = b""
    service_id = ""
    available: list[str] = []
    while pos < end:
        tag = data[pos]
        if tag < 0x80:  # one-byte tags and values are the common case: no call
            pos += 1
        else:
            tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0 or number > _MAX_FIELD:
            raise ValueError(f"invalid field number {number}")
        if wire not in (0, 1, 2, 5):
            raise ValueError(f"invalid wire type {wire}")
        expected = _KNOWN.get(number)
        if expected is not None and wire != expected:
            raise ValueError(f"wrong wire type {wire} for field {number}")
        if wire == 0 or wire == 2:
            if pos < end and data[pos] < 0x80:
                value = data[pos]
                pos += 1
            else:
                value, pos = _read_varint(data, pos)
            if wire == 0:
                if number == 1:
                    type_ = _int32(value)
                elif number == 2:
                    stream_id = _int32(value)
                elif number == 3:
                    ignorable = value != 0
                elif number == 7:
                    connection_id = value & 0xFFFFFFFF
                continue
            if value > end - pos:
                raise ValueError(f"truncated field {number}")
            chunk = data[pos:pos + value]
            pos += value
            if number == 4:
                payload = chunk
            elif number == 5 or number == 6:
                try:
                    text = chunk.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"field {number} is not valid UTF-8") from None
                if number == 5:
                    service_id = text
                else:
                    available.append(text)
        else:
            size = 8 if wire == 1 else 4
            if size > end - pos:
                raise ValueError(f"truncated field {number}")
            pos += size
    return ProxyMessage(_TYPES.get(type_, type_), stream_id, ignorable, payload, service_id, tuple(available),
                        connection_id)


class MessageReader:
    """Splits a byte stream (the concatenated payloads of binary WebSocket frames) into messages,
    whatever the chunking. A message that does not decode raises ValueError (the reader is then
    unusable: the stream has lost its framing)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ProxyMessage]:
        self._buf += data
        out = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 2:
            length = buf[pos] << 8 | buf[pos + 1]
            if len(buf) - pos - 2 < length:
                break
            out.append(decode(bytes(buf[pos + 2:pos + 2 + length])))
            pos += 2 + length
        del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buf)
