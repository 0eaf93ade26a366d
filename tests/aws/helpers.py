"""Helpers for the AWS endpoint's tests (abuse, faults, soak, replicas): a WebSocket client
written by hand over a TCP socket (the test writes the upgrade and every frame byte, and
decides when, and whether, it reads), and a check that a tunnel still relays bytes exactly.

The frames are built with tests/codec/frames.py's client builder; the tunnel messages with
tests/aws/spec_client.py (written from AWS's guides, not from the relay's code)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.aws.spec_client import (DATA, STREAM_RESET, STREAM_START, V3, Closed, Msg, SpecClient,
                                   decode, frame)
from tests.codec.frames import OP_BINARY, OP_CLOSE, OP_PONG
from tests.codec.frames import frame as ws_frame

ZERO_MASK = b"\0\0\0\0"


def binary(data: bytes, *, fin: bool = True, op: int = OP_BINARY) -> bytes:
    """A masked client frame carrying `data`, with the mask key 0 (so the payload goes as it
    is: fast for megabytes, and still a masked frame as RFC 6455 requires of clients)."""
    return ws_frame(b"", op, fin=fin, mask=ZERO_MASK, length=len(data)) + data


def tunnel_frames(*msgs: Msg) -> bytes:
    """The messages, length-prefixed, in one masked binary frame."""
    return binary(frame(*msgs))


class RawAws:
    """One AWS tunnel WebSocket spoken by hand over a TCP socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str | None) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.stream = b""                   # tunnel-message bytes received, not yet parsed
        self.pings: list[bytes] = []        # payloads of the relay's pings, as they came

    @classmethod
    async def open(cls, port: int, token: str, mode: str, *, host: str = "127.0.0.1",
                   client_token: str | None = None, protocols: tuple[str, ...] = (V3,), rcvbuf: int | None = None,
                   sndbuf: int | None = None, limit: int = 1 << 16, early: bytes = b"") -> RawAws:
        """Upgrade /tunnel?local-proxy-mode=MODE; `early` goes in the same write as the request.
        `rcvbuf`, `sndbuf` and `limit` keep the client's buffers small, so that what fills up
        when it does not read (or is not read) is the relay's buffer, not the kernel's."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for option, size in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, sndbuf)):
            if size is not None:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 5)
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET /tunnel?local-proxy-mode={mode} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 f"Sec-WebSocket-Protocol: {', '.join(protocols)}", f"access-token: {token}"]
        if client_token is not None:
            lines.append(f"client-token: {client_token}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + early)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except BaseException:
            writer.close()
            raise
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise AssertionError(f"the upgrade was refused: {head!r}")
        protocol = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                         if line.lower().startswith(b"sec-websocket-protocol:")), None)
        return cls(reader, writer, protocol)

    @property
    def transport(self) -> asyncio.Transport:
        return self.writer.transport  # type: ignore[return-value]

    async def send(self, data: bytes) -> None:
        """Raw bytes: whole frames, pieces of frames, anything."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_msgs(self, *msgs: Msg) -> None:
        await self.send(tunnel_frames(*msgs))

    async def read_frame(self, timeout: float = 5) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame from the relay (server frames are unmasked)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "the relay masked a frame"
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n)

    async def recv(self, timeout: float = 5) -> Msg:
        """The next tunnel message; pings are noted (not answered: this client decides that)."""
        while True:
            if len(self.stream) >= 2:
                (size,) = struct.unpack(">H", self.stream[:2])
                if len(self.stream) >= 2 + size:
                    body, self.stream = self.stream[2:2 + size], self.stream[2 + size:]
                    return decode(body)
            fin, opcode, payload = await self.read_frame(timeout)
            if opcode == 0x9:
                self.pings.append(payload)
            elif opcode == OP_BINARY:
                assert fin, "the relay fragmented a message"
                self.stream += payload
            elif opcode == OP_CLOSE:
                raise AssertionError(f"closed {close_of(payload)}")
            else:
                raise AssertionError(f"the relay sent opcode {opcode}: {payload[:60]!r}")

    async def expect_close(self, timeout: float = 5) -> tuple[int, str]:
        """Skip messages and pings up to the relay's close frame: its (code, reason). The relay
        must then close the TCP connection itself (checked: end of stream within `timeout`)."""
        async with asyncio.timeout(timeout):
            for _ in range(100_000):   # bounded: skipped frames
                _, opcode, payload = await self.read_frame(timeout)
                if opcode == 0x9:
                    self.pings.append(payload)
                elif opcode == OP_CLOSE:
                    code, reason = close_of(payload)
                    assert await self.reader.read() == b"", "bytes after the close frame"
                    return code, reason
            raise AssertionError("no close frame")

    def close(self) -> None:
        if not self.writer.transport.is_closing():
            self.writer.transport.abort()


def close_of(payload: bytes) -> tuple[int, str]:
    assert len(payload) >= 2, payload
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def pong(payload: bytes) -> bytes:
    return binary(payload, op=OP_PONG)


@pytest.fixture
async def raw_aws() -> AsyncIterator[Any]:
    """RawAws.open, with every client it opened closed at teardown."""
    opened: list[RawAws] = []

    async def open_(*args: Any, **kwargs: Any) -> RawAws:
        client = await RawAws.open(*args, **kwargs)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()
    with contextlib.suppress(Exception):
        await asyncio.sleep(0)   # let the transports finish closing


class Inbox:
    """A SpecClient read all the time by a task, so that aiohttp answers the relay's pings
    while the test does something else (waits, restarts a server); what came, in a queue."""

    def __init__(self, client: SpecClient) -> None:
        self.client = client
        self.queue: asyncio.Queue[Msg | Exception] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            for _ in range(10_000_000):   # bounded: messages
                self.queue.put_nowait(await self.client.recv(timeout=3600))
        except Exception as exc:   # Closed, or what the relay should not have sent
            self.queue.put_nowait(exc)

    async def recv(self, timeout: float = 10) -> Msg:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    async def expect_close(self, timeout: float = 10) -> tuple[int | None, str]:
        """Skip messages up to the end of the connection: (code, reason)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.recv(timeout)
                except Closed as closed:
                    return closed.code, closed.reason

    async def send(self, *msgs: Msg) -> None:
        await self.client.send(*msgs)

    async def close(self) -> None:
        await self.client.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def bridged_stream(source: SpecClient | Inbox, destination: SpecClient | Inbox, first: int = 1,
                         timeout: float = 20) -> int:
    """A stream started from `source` that reached `destination`: its id. Until the ends are
    linked (on two replicas: until the bridge is up) the source's relay answers STREAM_START
    with STREAM_RESET (no peer, or a bridge replaced by a newer one reset an earlier stream);
    so try again, a new stream id each time, for at most `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stream = first
    while loop.time() < deadline:
        start = Msg(STREAM_START, stream_id=stream, service_id="SSH", connection_id=1)
        await source.send(start)
        here = asyncio.ensure_future(source.recv(timeout=10))
        there = asyncio.ensure_future(destination.recv(timeout=10))
        done, _ = await asyncio.wait({here, there}, return_when=asyncio.FIRST_COMPLETED)
        if there in done:
            here.cancel()
            assert there.result() == start
            return stream
        there.cancel()
        reset = here.result()
        assert reset.type == STREAM_RESET and first <= reset.stream_id <= stream, reset
        stream += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ends were not linked within {timeout} s")


async def relays_exactly(source: SpecClient | RawAws | Inbox, destination: SpecClient | RawAws | Inbox, stream_id: int,
                         size: int = 200_000, timeout: float = 10, started: bool = False) -> None:
    """On a stream started from `source` (here, unless `started`), `size` random bytes each
    way, compared by SHA-256."""
    if not started:
        start = Msg(STREAM_START, stream_id=stream_id, service_id="SSH", connection_id=1)
        await _send(source, start)
        assert await destination.recv(timeout) == start
    for sender, receiver in ((source, destination), (destination, source)):
        data = os.urandom(size)
        for i in range(0, size, 60_000):
            await _send(sender, Msg(DATA, stream_id=stream_id, service_id="SSH", connection_id=1,
                                    payload=data[i:i + 60_000]))
        got = bytearray()
        async with asyncio.timeout(timeout):
            while len(got) < size:
                msg = await receiver.recv(timeout)
                assert (msg.type, msg.stream_id) == (DATA, stream_id), msg
                got += msg.payload
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def _send(end: SpecClient | RawAws | Inbox, msg: Msg) -> None:
    if isinstance(end, RawAws):
        await end.send_msgs(msg)
    else:
        await end.send(msg)
