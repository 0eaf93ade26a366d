"""Reads of the ends' local sockets taken in the same call (relay/ends/local_streams.py and the
pipes' `take_now`), and the relay's data written in the read that decoded it (`feed_data_now`,
`data_now`): on loopback sockets, with the synchronous way refused now and then (the tunnel's
transport over its limit, a small credit), so that both ways carry the bytes. Nothing may be
lost, reordered or sent beyond the credit."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random

import pytest

from relay.ends import aws_streams as s
from relay.ends import huawei_tcp
from relay.ends.huawei_tcp import Connection
from relay.ends.local_streams import LocalStreamProtocol, open_local, serve_local
from relay.ends.pipes import StreamPipes, TcpPipe, TcpPipes
from tests.ends.test_aws_data_path import started

WINDOW = 48 * 1024   # small, so that reads often find less credit than they carry


class Wire:
    """One direction of a tunnel: items in order to the peer's pipe. A data item goes in the
    same call when nothing is ahead of it and the pipe takes it (`feed_data_now`), else a task
    hands the items on in order, as RawSocket's reader does."""

    def __init__(self) -> None:
        self.peer: TcpPipe | None = None
        self.items: collections.deque[tuple[str, object]] = collections.deque()
        self.busy = False
        self.taken_now = 0
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def put(self, kind: str, item: object) -> None:
        assert self.peer is not None
        if kind == "data" and not self.items and not self.busy and self.peer.feed_data_now(item):  # type: ignore[arg-type]
            self.taken_now += 1
            return
        self.items.append((kind, item))
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.items:
                kind, item = self.items.popleft()
                self.busy = True
                await asyncio.sleep(0)   # the relay's hop
                assert self.peer is not None
                if kind == "data":
                    await self.peer.feed_data(item)  # type: ignore[arg-type]
                else:
                    await self.peer.feed(item)  # type: ignore[arg-type]
                self.busy = False


class TcpPair:
    """Two loopback connections (local streams) joined by pipes whose sends go over `Wire`s;
    `send_data_now` refuses every `refuse_every`-th call (the transport over its limit)."""

    def __init__(self, refuse_every: int) -> None:
        self.refuse_every = refuse_every
        self.calls = 0
        self.sent_now = self.refused = 0
        self.over_credit = 0   # reads the pipe could not take for want of credit
        self.apps: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.pipes: list[TcpPipe] = []
        self.wires: list[Wire] = []
        self.servers: list[asyncio.Server] = []

    async def start(self) -> TcpPair:
        self.wires = [Wire(), Wire()]
        for index in range(2):
            accepted: asyncio.Future = asyncio.get_running_loop().create_future()

            async def handle(r, w, f=accepted):  # type: ignore[no-untyped-def]
                f.set_result((r, w))

            server = await serve_local(handle, "127.0.0.1", 0)
            self.servers.append(server)
            self.apps.append(await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1]))
            reader, writer = await asyncio.wait_for(accepted, 5)
            assert isinstance(writer.transport.get_protocol(), LocalStreamProtocol)
            pipes = TcpPipes()
            pipes.send_data = self._send_data(index)
            pipes.send_data_now = self._send_data_now(index)
            pipe = TcpPipe(Connection("f", window=WINDOW, ack_threshold=WINDOW // 4), reader, writer,
                           self._send(index))
            pipes.add(pipe)
            self.pipes.append(pipe)
        self.wires[0].peer, self.wires[1].peer = self.pipes[1], self.pipes[0]
        for pipe in self.pipes:
            pipe.start()
            take = pipe.take_now

            def counting(data: bytes, pipe: TcpPipe = pipe, take=take) -> bool:  # type: ignore[no-untyped-def]
                if pipe._reading and len(data) > pipe.conn.credit:
                    self.over_credit += 1
                return take(data)

            pipe.writer.transport.get_protocol().take_now = counting  # type: ignore[attr-defined]
        return self

    def _send_data(self, index: int):  # type: ignore[no-untyped-def]
        async def send_data(conn_id: str, raw: bytes) -> None:
            self.wires[index].put("data", raw)
            await asyncio.sleep(0)
        return send_data

    def _send_data_now(self, index: int):  # type: ignore[no-untyped-def]
        def send_data_now(conn_id: str, raw: bytes) -> bool:
            self.calls += 1
            if self.refuse_every and self.calls % self.refuse_every == 0:
                self.refused += 1
                return False
            self.sent_now += 1
            self.wires[index].put("data", raw)
            return True
        return send_data_now

    def _send(self, index: int):  # type: ignore[no-untyped-def]
        async def send(payload: str) -> None:
            msg = huawei_tcp.parse(payload)
            assert msg is not None and msg.op != huawei_tcp.DATA
            self.wires[index].put("msg", msg)
        return send

    async def close(self) -> None:
        for pipe in self.pipes:
            await pipe.abort(None, tell_peer=False)
        for wire in self.wires:
            wire.task.cancel()
        for _, writer in self.apps:
            writer.close()
        for server in self.servers:
            server.close()
        for pipe in self.pipes:
            await pipe.wait_closed()


async def write_in_pieces(writer: asyncio.StreamWriter, payload: bytes, seed: int) -> None:
    """Pieces of 1 B to 20 KiB, a pause now and then (so that the pipe's reader waits in read)."""
    rng = random.Random(seed)
    i = 0
    while i < len(payload):
        n = rng.randint(1, 20 * 1024)
        writer.write(payload[i:i + n])
        i += n
        await writer.drain()
        if rng.random() < 0.3:
            await asyncio.sleep(0.0005)
    writer.write_eof()


@pytest.mark.parametrize("refuse_every", [0, 5])
async def test_reads_taken_at_once_and_by_the_task_arrive_whole_in_order_within_the_window(refuse_every):
    pair = await TcpPair(refuse_every).start()
    try:
        (r0, w0), (r1, w1) = pair.apps
        up = random.Random(1).randbytes(3_000_000)
        down = random.Random(2).randbytes(1_000_000)
        writers = asyncio.gather(write_in_pieces(w0, up, 3), write_in_pieces(w1, down, 4))
        got_up, got_down, _ = await asyncio.wait_for(asyncio.gather(r1.read(-1), r0.read(-1), writers), 60)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in pair.pipes)), 10)
        for pipe in pair.pipes:
            assert pipe.conn.aborted is None
            assert pipe.conn.peak_unacked <= WINDOW and pipe.conn.peak_inbound <= WINDOW
        assert pair.sent_now > 0                      # reads went out in the read's own call ...
        assert pair.over_credit > 0                   # ... and some found too little credit (the task's way)
        assert (pair.refused > 0) == bool(refuse_every)
        assert sum(w.taken_now for w in pair.wires) > 0   # the relay's data written in the read that brought it
    finally:
        await pair.close()


async def test_a_connection_not_from_local_streams_reads_by_its_task_only():
    """asyncio's own streams (a test's, an old caller's): no `take_now`, every read by the task."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        pipe = TcpPipe(Connection("f"), reader, writer, lambda payload: asyncio.sleep(0))
        pipe.start()
        assert not isinstance(writer.transport.get_protocol(), LocalStreamProtocol)
        await pipe.abort(None, tell_peer=False)
        await pipe.wait_closed()
    finally:
        server.close()


@pytest.mark.parametrize("refuse_every", [0, 4])
async def test_aws_reads_taken_at_once_and_by_the_task_go_out_in_order(refuse_every):
    sent: list[bytes] = []
    counts = {"now": 0, "task": 0, "refused": 0}

    class Socket:
        on_data = None
        deliver_now = None
        calls = 0

        async def send_data(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> None:
            counts["task"] += 1
            sent.append(raw)

        def send_data_now(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> bool:
            self.calls += 1
            if refuse_every and self.calls % refuse_every == 0:
                counts["refused"] += 1
                return False
            counts["now"] += 1
            sent.append(raw)
            return True

    messages: list[bytes] = []

    async def send(data: bytes) -> None:
        messages.append(data)

    pipes = StreamPipes(started(), send)
    pipes.attach(Socket())
    link = pipes._add(s.Key("SSH", 7, 1))
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(r, w):  # type: ignore[no-untyped-def]
        accepted.set_result((r, w))

    server = await serve_local(handle, "127.0.0.1", 0)
    try:
        app_reader, app_writer = await open_local("127.0.0.1", server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.wait_for(accepted, 5)
        link.attach(reader, writer)
        payload = random.Random(5).randbytes(2_000_000)
        await asyncio.wait_for(write_in_pieces(app_writer, payload, 6), 60)
        for _ in range(3000):   # the stream's end goes out as a message once every read is sent
            if messages:
                break
            await asyncio.sleep(0.01)
        assert messages, "the local peer's close did not reach the tunnel"
        assert hashlib.sha256(b"".join(sent)).digest() == hashlib.sha256(payload).digest()
        assert link.bytes_out == len(payload)
        assert counts["now"] > 0
        assert (counts["refused"] > 0) == (counts["task"] > 0) == bool(refuse_every)   # refused: by the task
        app_writer.close()
        await app_writer.wait_closed()
    finally:
        await pipes.lost()
        server.close()
