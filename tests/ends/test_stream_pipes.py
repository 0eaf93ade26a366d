"""relay/ends/pipes.py's StreamPipes on loopback sockets, without a relay: a source bridge and a
destination bridge joined by a bounded queue each way (a WebSocket that pushes back), real
TCP clients and servers at both ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

from relay.aws_messages import MAX_PAYLOAD, MessageType, ProxyMessage, frame
from relay.ends.aws_streams import Destination, Source
from relay.ends.pipes import HIGH, StreamPipe, StreamPipes
from tests.device.conftest import eventually


class Pair:
    """source bridge <-> destination bridge, `depth` frames in flight each way."""

    def __init__(self, services: dict[str, tuple[str, int]], version: int = 3, depth: int = 4) -> None:
        self.to_dst: asyncio.Queue[bytes] = asyncio.Queue(depth)
        self.to_src: asyncio.Queue[bytes] = asyncio.Queue(depth)
        self.src = StreamPipes(Source(version), self.to_dst.put)
        self.dst = StreamPipes(Destination(services, version), self.to_src.put)
        self.tasks = [asyncio.create_task(self._pump(self.to_dst, self.dst)),
                      asyncio.create_task(self._pump(self.to_src, self.src))]
        self.server: asyncio.Server | None = None
        self.links: list[StreamPipe] = []

    @staticmethod
    async def _pump(queue: asyncio.Queue[bytes], bridge: StreamPipes) -> None:
        while True:
            await bridge.feed(await queue.get())

    async def listen(self, service: str = "SSH") -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.links.append(await self.src.accept(service, reader, writer))
        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.src.lost()
        await self.dst.lost()


async def echo() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_data_goes_both_ways_through_several_connections_of_one_stream():
    server, port = await echo()
    pair = Pair({"SSH": ("127.0.0.1", port)})
    try:
        local = await pair.listen()
        clients = [await asyncio.open_connection("127.0.0.1", local) for _ in range(3)]
        blocks = [os.urandom(700_000 + i) for i in range(3)]
        for (_, writer), block in zip(clients, blocks):
            writer.write(block)
        for (reader, _), block in zip(clients, blocks):
            assert await asyncio.wait_for(reader.readexactly(len(block)), 20) == block
        assert sorted(k.connection_id for k in pair.dst.links) == [1, 2, 3]
        assert {k.stream_id for k in pair.dst.links} == {1}
        # closing one client ends its connection at the destination only
        clients[0][1].close()
        await eventually(lambda: len(pair.dst.links) == 2 and len(pair.src.links) == 2)
        clients[1][1].write(b"still here")
        assert await asyncio.wait_for(clients[1][0].readexactly(10), 10) == b"still here"
        for _, writer in clients[1:]:
            writer.close()
        await eventually(lambda: not pair.dst.links and not pair.src.links)
    finally:
        await pair.close()
        server.close()


async def test_the_server_closing_ends_the_client_after_every_byte_it_sent():
    goodbye = os.urandom(500_000)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(goodbye)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pair = Pair({"": ("127.0.0.1", server.sockets[0].getsockname()[1])}, version=2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", await pair.listen())
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(-1), 20) == goodbye   # then EOF: an orderly close
        writer.close()
        await eventually(lambda: not pair.src.links and not pair.dst.links)
    finally:
        await pair.close()
        server.close()


async def test_nothing_listening_at_the_destination_resets_the_client():
    from aiohttp.test_utils import unused_port

    pair = Pair({"SSH": ("127.0.0.1", unused_port())})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", await pair.listen())
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        await eventually(lambda: not pair.src.links and not pair.dst.links)
        assert pair.src.table.connections == set()
    finally:
        await pair.close()


async def test_a_reader_that_does_not_read_holds_the_writer_back_at_a_bounded_buffer():
    total = 48 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    produced = [0]

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
            produced[0] += len(block)
        writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    pair = Pair({"SSH": ("127.0.0.1", server.sockets[0].getsockname()[1])})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", await pair.listen())
        await eventually(lambda: produced[0] > 0)
        await asyncio.sleep(2)   # the client reads nothing
        stalled = produced[0]
        assert stalled < total // 2   # socket buffers and at most HIGH per end, not the whole stream
        (link,) = pair.src.links.values()
        assert link.queued <= HIGH + MAX_PAYLOAD
        h, n = hashlib.sha256(), 0
        while data := await asyncio.wait_for(reader.read(1 << 20), 20):
            h.update(data)
            n += len(data)
        assert n == total and h.digest() == hashlib.sha256(block * (total // len(block))).digest()
        writer.close()
    finally:
        await pair.close()
        server.close()


async def test_a_session_reset_closes_the_local_connections():
    server, port = await echo()
    pair = Pair({"SSH": ("127.0.0.1", port)})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", await pair.listen())
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
        await pair.src.feed(frame(ProxyMessage(MessageType.SESSION_RESET)))
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        await eventually(lambda: not pair.src.links)
    finally:
        await pair.close()
        server.close()
