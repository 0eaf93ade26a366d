"""A client of the AWS IoT Secure Tunneling protocol written for the tests from AWS's public
protocol guides (aws-samples/aws-iot-securetunneling-localproxy, V2/V3WebSocketProtocolGuide.md),
on aiohttp's WebSocket client. It does not use relay.aws_messages: the protobuf messages are
built and parsed here by hand, so that the relay is checked against the description, not
against its own code.

The wire format, from the guides: binary WebSocket messages carry a byte stream of tunnel
frames, each a 2-byte big-endian length and that many bytes of a protobuf `Message`:

    message Message {
        Type   type = 1;  int32 streamId = 2;  bool ignorable = 3;  bytes payload = 4;
        string serviceId = 5;  repeated string availableServiceIds = 6;  uint32 connectionId = 7;
        enum Type { UNKNOWN = 0; DATA = 1; STREAM_START = 2; STREAM_RESET = 3; SESSION_RESET = 4;
                    SERVICE_IDS = 5; CONNECTION_START = 6; CONNECTION_RESET = 7; }
    }

Tunnel frames and WebSocket frames are independent: a WebSocket message may hold several
tunnel frames or a piece of one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from typing import Any

import aiohttp

DATA, STREAM_START, STREAM_RESET, SESSION_RESET, SERVICE_IDS, CONNECTION_START, CONNECTION_RESET = range(1, 8)
NAMES = {1: "DATA", 2: "STREAM_START", 3: "STREAM_RESET", 4: "SESSION_RESET", 5: "SERVICE_IDS",
         6: "CONNECTION_START", 7: "CONNECTION_RESET"}
V1, V2, V3 = "aws.iot.securetunneling-1.0", "aws.iot.securetunneling-2.0", "aws.iot.securetunneling-3.0"
MAX_PAYLOAD = 64512   # "The payload of any message may not contain more than 63kb (64512 bytes)"

_VARINT, _LEN = 0, 2


@dataclasses.dataclass(frozen=True)
class Msg:
    type: int
    stream_id: int = 0
    ignorable: bool = False
    payload: bytes = b""
    service_id: str = ""
    available_service_ids: tuple[str, ...] = ()
    connection_id: int = 0

    def __repr__(self) -> str:  # payloads can be large
        return (f"Msg({NAMES.get(self.type, self.type)}, stream={self.stream_id}, conn={self.connection_id},"
                f" service={self.service_id!r}, ids={self.available_service_ids}, {len(self.payload)} bytes)")


# -- protobuf by hand ------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64   # int32 negatives take ten bytes, as two's complement of 64 bits
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + varint(len(value)) + value


def encode(msg: Msg) -> bytes:
    """proto3: fields with their default value are left out."""
    out = bytearray()
    if msg.type:
        out += _key(1, _VARINT) + varint(msg.type)
    if msg.stream_id:
        out += _key(2, _VARINT) + varint(msg.stream_id)
    if msg.ignorable:
        out += _key(3, _VARINT) + varint(1)
    if msg.payload:
        out += _bytes_field(4, msg.payload)
    if msg.service_id:
        out += _bytes_field(5, msg.service_id.encode())
    for service in msg.available_service_ids:
        out += _bytes_field(6, service.encode())
    if msg.connection_id:
        out += _key(7, _VARINT) + varint(msg.connection_id)
    return bytes(out)


def frame(*msgs: Msg) -> bytes:
    return b"".join(struct.pack(">H", len(body)) + body for body in map(encode, msgs))


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode(data: bytes) -> Msg:
    fields: dict[str, Any] = {"available_service_ids": []}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            if number == 1:
                fields["type"] = value
            elif number == 2:
                fields["stream_id"] = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 3:
                fields["ignorable"] = bool(value)
            elif number == 7:
                fields["connection_id"] = value
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            value_bytes = data[pos:pos + size]
            pos += size
            if number == 4:
                fields["payload"] = value_bytes
            elif number == 5:
                fields["service_id"] = value_bytes.decode()
            elif number == 6:
                fields["available_service_ids"].append(value_bytes.decode())
        else:
            raise ValueError(f"unexpected wire type {wire}")
    fields["available_service_ids"] = tuple(fields["available_service_ids"])
    return Msg(**{"type": 0, **fields})


def reset_of(stream: int, service: str = "SSH", connection: int = 1) -> Msg:
    """The STREAM_RESET the relay sends an end whose peer left, for each stream open on the
    tunnel (docs/aws.md): its service, stream and an open connection id."""
    return Msg(STREAM_RESET, stream_id=stream, service_id=service, connection_id=connection)


async def open_stream(source: SpecClient, destination: SpecClient, stream: int = 1) -> None:
    """A stream of SSH from `source` that reached `destination`."""
    start = Msg(STREAM_START, stream_id=stream, service_id="SSH", connection_id=1)
    await source.send(start)
    assert await destination.recv() == start


# -- the client ------------------------------------------------------------------------------


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class SpecClient:
    """One tunnel connection: send messages (framed as the caller likes), receive them one
    by one whatever the WebSocket framing."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buffer = b""
        self.raw: list[bytes] = []      # every tunnel frame received, exactly as it came

    @property
    def protocol(self) -> str | None:
        return self.ws.protocol

    async def send(self, *msgs: Msg) -> None:
        """All the messages in one binary WebSocket message."""
        await self.ws.send_bytes(frame(*msgs))

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_in_pieces(self, data: bytes, cuts: list[int]) -> None:
        """`data` (tunnel frames) cut at the given offsets, one WebSocket message per piece."""
        edges = [0, *cuts, len(data)]
        for start, end in zip(edges, edges[1:]):
            await self.ws.send_bytes(data[start:end])

    async def recv(self, timeout: float = 5) -> Msg:
        while True:
            if len(self.buffer) >= 2:
                (size,) = struct.unpack(">H", self.buffer[:2])
                if len(self.buffer) >= 2 + size:
                    body, self.buffer = self.buffer[2:2 + size], self.buffer[2 + size:]
                    self.raw.append(body)
                    return decode(body)
            # asyncio's timeout, not aiohttp's: aiohttp starts its timeout again after every
            # ping it answers, so against a relay that pings it would never expire
            async with asyncio.timeout(timeout):
                msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.buffer += msg.data
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise Closed(self.ws.close_code, msg.extra or "")
            else:
                raise AssertionError(f"the relay sent a {msg.type.name} message: {msg.data!r}")

    async def recv_data(self, total: int, timeout: float = 10) -> dict[tuple[int, int], bytearray]:
        """DATA payloads, by (stream id, connection id), until `total` bytes came."""
        got: dict[tuple[int, int], bytearray] = {}
        count = 0
        while count < total:
            msg = await self.recv(timeout)
            assert msg.type == DATA, msg
            got.setdefault((msg.stream_id, msg.connection_id), bytearray()).extend(msg.payload)
            count += len(msg.payload)
        return got

    async def expect_close(self, timeout: float = 5) -> tuple[int | None, str]:
        """Skip messages up to the close; its (code, reason)."""
        try:
            while True:
                await self.recv(timeout)
        except Closed as closed:
            return closed.code, closed.reason

    async def nothing_more(self, wait: float = 0.2) -> None:
        """Nothing arrives within `wait` seconds (used only where the absence is the point)."""
        try:
            msg = await asyncio.wait_for(self.recv(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {msg}")

    async def close(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):   # aiohttp's own close timeout restarts at every ping
            await self.ws.close()


async def connect(session: aiohttp.ClientSession, base: str, token: str | None, mode: str, *,
                  protocols: tuple[str, ...] = (V3,), client_token: str | None = None,
                  headers: dict[str, str] | None = None, cookie: bool = False) -> SpecClient:
    """The handshake of the guides: GET /tunnel?local-proxy-mode=MODE, the token in the
    `access-token` header (or the `awsiot-tunnel-token` cookie), the subprotocols offered."""
    hdrs = dict(headers or {})
    if token is not None:
        if cookie:
            hdrs["Cookie"] = f"awsiot-tunnel-token={token}"
        else:
            hdrs["access-token"] = token
    if client_token is not None:
        hdrs["client-token"] = client_token
    url = base.replace("http://", "ws://") + f"/tunnel?local-proxy-mode={mode}"
    async with asyncio.timeout(10):   # aiohttp's session would wait 5 minutes for the handshake
        ws = await session.ws_connect(url, headers=hdrs, protocols=protocols, autoclose=False, autoping=True,
                                      max_msg_size=0)
    return SpecClient(ws)
