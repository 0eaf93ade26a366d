"""relay/ends/huawei_tcp.py: the messages and `Connection` without sockets, then `TcpPipe`
(relay/ends/pipes.py) on real loopback TCP connections joined back to back (each pipe's messages fed to the other)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct

import orjson
import pytest

from relay.ends import huawei_tcp as forward
from relay.ends.huawei_tcp import CHUNK, WINDOW, Connection, ForwardError
from relay.ends.pipes import TcpPipe

LONGEST_ID = "x" * forward.MAX_ID_BYTES


# -- messages ------------------------------------------------------------------------------


def test_data_is_cut_at_7000_bytes_and_every_message_fits_10240():
    raw = os.urandom(3 * CHUNK + 123)
    messages = forward.data_messages(LONGEST_ID, raw)
    assert len(messages) == 4
    assert all(len(m.encode()) <= forward.MAX_MESSAGE for m in messages)
    docs = [orjson.loads(m) for m in messages]
    parts = [base64.b64decode(d["data"]) for d in docs]
    assert [len(p) for p in parts] == [CHUNK, CHUNK, CHUNK, 123]
    assert b"".join(parts) == raw
    assert {(d["operation_type"], d["tunnel_service_type"], d["request_id"]) for d in docs} == \
        {("forward_data", "tcp", LONGEST_ID)}
    # the largest message of every kind, with the longest id, is within the limit
    others = [forward.open_message(LONGEST_ID, 65535), forward.ack_message(LONGEST_ID, WINDOW),
              forward.open_response(LONGEST_ID, "502", "x" * 2000), forward.close_message(LONGEST_ID, "e" * 5000)]
    assert all(len(m.encode()) <= forward.MAX_MESSAGE for m in others)


def test_parse_and_fields():
    msg = forward.parse(forward.open_message("f-1", 22))
    assert msg == forward.Message("forward_open", "f-1", {"port": 22, "window": forward.WINDOW}, "tcp")  # #17: with its window
    assert forward.parse(b"not json") is None and forward.parse("[1]") is None and forward.parse("{}") is None
    assert forward.requested_port({"port": 22}) == 22
    assert [forward.requested_port(d) for d in ({"port": 0}, {"port": True}, {"port": "22"}, None, {})] == [None] * 5
    assert forward.status_of({"status_code": "403", "status_msg": "no"}) == ("403", "no")
    assert forward.valid_connection_id(forward.new_connection_id())
    assert forward.new_connection_id() != forward.new_connection_id()


# -- credit accounting -------------------------------------------------------------------


def test_credit_is_spent_by_data_and_given_back_by_acks():
    c = Connection("f-1")
    assert c.credit == WINDOW
    c.outgoing(b"a" * CHUNK)
    assert (c.unacked, c.credit) == (CHUNK, WINDOW - CHUNK)
    c.outgoing(b"b" * (WINDOW - CHUNK))
    assert c.credit == 0 and c.peak_unacked == WINDOW
    with pytest.raises(ValueError):
        c.outgoing(b"c")   # the I/O layer must not read more than the credit
    c.on_ack({"bytes": 1000})
    assert c.credit == 1000
    with pytest.raises(ForwardError):
        c.on_ack({"bytes": WINDOW})   # more than is outstanding
    for bad in ({"bytes": -1}, {"bytes": True}, {"bytes": "1"}, None):
        with pytest.raises(ForwardError):
            c.on_ack(bad)


def test_receiver_acks_what_it_wrote_and_refuses_a_peer_over_the_window():
    c = Connection("f-1", window=64 * 1024, ack_threshold=16 * 1024)
    chunk = base64.b64encode(b"z" * CHUNK).decode()
    acks = []
    for _ in range(9):   # 63,000 bytes: within the window
        raw = c.on_data(chunk)
        ack = c.on_written(len(raw))
        if ack:
            acks.append(orjson.loads(ack)["data"]["bytes"])
    assert acks == [21000, 21000, 21000]   # one ack per threshold crossed, none per chunk
    assert c.inbound == 0
    # a peer that ignores the window: 10 chunks unwritten = 70,000 > 65,536
    for _ in range(9):
        c.on_data(chunk)
    with pytest.raises(ForwardError):
        c.on_data(chunk)
    assert c.peak_inbound > c.window


def test_bad_data_is_a_protocol_error():
    c = Connection("f-1")
    for bad in (None, 5, "not base64!", base64.b64encode(b"x" * (CHUNK + 1)).decode()):
        with pytest.raises(ForwardError):
            c.on_data(bad)


def test_half_close_in_each_direction_then_finished():
    c = Connection("f-1")
    assert orjson.loads(c.eof())["data"] == {"status_msg": "eof"}
    assert c.sent_eof and not c.finished
    with pytest.raises(ValueError):
        c.outgoing(b"late")           # nothing after our own eof
    c.on_data(base64.b64encode(b"still coming").decode())   # the other direction is open
    assert c.on_close({"status_msg": "eof"}) is None
    assert c.finished and c.aborted is None
    with pytest.raises(ForwardError):
        c.on_data(base64.b64encode(b"after eof").decode())
    assert c.on_written(WINDOW) is None   # no acks once the peer stopped sending


def test_abort_both_ways():
    c = Connection("f-1")
    assert orjson.loads(c.abort("reset by peer"))["data"] == {"status_msg": "error: reset by peer"}
    assert c.finished and c.aborted == "reset by peer"
    d = Connection("f-2")
    assert d.on_close({"status_msg": "error: connection refused"}) == "connection refused"
    assert d.finished and "connection refused" in d.aborted


# -- Pipe on real sockets -----------------------------------------------------------------


class Pair:
    """Two loopback TCP connections, each joined to a Pipe; the pipes' messages go to each
    other, as the relay would carry them (every one checked against the 10 KB limit)."""

    def __init__(self) -> None:
        self.pipes: list[TcpPipe] = []
        self.apps: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []   # the two TCP peers
        self.sent: list[str] = []
        self.servers: list[asyncio.Server] = []

    async def start(self, window: int = WINDOW) -> Pair:
        for _ in range(2):
            accepted: asyncio.Future = asyncio.get_running_loop().create_future()
            server = await asyncio.start_server(lambda r, w, f=accepted: f.set_result((r, w)), "127.0.0.1", 0)
            self.servers.append(server)
            app = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            reader, writer = await asyncio.wait_for(accepted, 5)
            self.apps.append(app)
            index = len(self.pipes)
            self.pipes.append(TcpPipe(Connection("f-pair", window=window, ack_threshold=min(window, 32768)),
                                           reader, writer, self._sender(index)))
        for pipe in self.pipes:
            pipe.start()
        return self

    def _sender(self, index: int):  # type: ignore[no-untyped-def]
        async def send(payload: str) -> None:
            assert len(payload.encode()) <= forward.MAX_MESSAGE
            self.sent.append(payload)
            msg = forward.parse(payload)
            assert msg is not None
            await self.pipes[1 - index].feed(msg)
        return send

    async def close(self) -> None:
        for pipe in self.pipes:
            await pipe.abort(None, tell_peer=False)
        for _, writer in self.apps:
            writer.close()
        for server in self.servers:
            server.close()


@pytest.fixture
async def pair():
    made = Pair()
    yield made
    await made.close()


async def test_pipe_carries_both_directions_and_half_close_keeps_order(pair):
    await pair.start()
    (r0, w0), (r1, w1) = pair.apps
    payload = os.urandom(1_000_000)
    w0.write(payload)
    w0.write_eof()                   # app 0 is done sending; it still reads
    got = await asyncio.wait_for(r1.read(-1), 10)   # all of it, then EOF
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert not any(p.done.is_set() for p in pair.pipes)   # the other direction is still open
    w1.write(b"answer after the request")
    await w1.drain()
    w1.write_eof()
    assert await asyncio.wait_for(r0.read(-1), 10) == b"answer after the request"
    await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in pair.pipes)), 5)
    assert all(p.conn.finished and p.conn.aborted is None for p in pair.pipes)
    assert pair.pipes[0].conn.bytes_out == len(payload) == pair.pipes[1].conn.bytes_in
    ops = [orjson.loads(m)["operation_type"] for m in pair.sent]
    assert ops.count("forward_close") == 2 and "forward_ack" in ops


async def test_abort_resets_the_other_side(pair):
    await pair.start()
    (r0, w0), (r1, w1) = pair.apps
    w0.write(b"hello")
    assert await asyncio.wait_for(r1.readexactly(5), 5) == b"hello"
    # app 0 resets its connection: the pipe sees an error and aborts the other side
    w0.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w0.transport.abort()   # with SO_LINGER 0: a reset
    await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in pair.pipes)), 5)
    assert pair.pipes[1].conn.aborted and pair.pipes[1].conn.aborted.startswith("the peer aborted")
    with pytest.raises(ConnectionResetError):   # app 1 sees a reset too, not a clean end
        await asyncio.wait_for(r1.read(-1), 5)


async def test_a_reader_that_does_not_read_stops_the_sender_at_the_window(pair):
    window = 64 * 1024
    await pair.start(window=window)
    (r0, w0), (r1, w1) = pair.apps
    total = 16 * 1024 * 1024
    block = os.urandom(1024 * 1024)

    async def produce() -> None:
        for _ in range(total // len(block)):
            w0.write(block)
            await w0.drain()
        w0.write_eof()

    producer = asyncio.create_task(produce())
    await asyncio.sleep(1.0)   # app 1 reads nothing meanwhile
    sender, receiver = pair.pipes
    assert sender.conn.credit == 0 and sender.conn.unacked == window
    stalled = sender.conn.bytes_out
    assert stalled < total // 2   # the kernel's buffers hold some; the pipes hold at most the window
    assert not producer.done()
    h = hashlib.sha256()
    n = 0
    while True:
        data = await asyncio.wait_for(r1.read(1 << 20), 10)
        if not data:
            break
        h.update(data)
        n += len(data)
    await producer
    assert n == total and h.digest() == hashlib.sha256(block * (total // len(block))).digest()
    assert sender.conn.peak_unacked <= window and receiver.conn.peak_inbound <= window
