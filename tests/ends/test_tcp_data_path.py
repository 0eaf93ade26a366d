"""The `tcp` service's raw data path (the socket's codec builds and decodes forward_data):
`Connection.sent` / `on_raw_data` (sans-I/O) and `TcpPipe` with `send_data` on loopback
sockets: reads of up to READ_SIZE within the credit, the window kept, order kept."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from relay.ends import huawei_tcp
from relay.ends.huawei_tcp import CHUNK, LEGACY_WINDOW, WINDOW, Connection, ForwardError
from relay.ends.pipes import READ_SIZE, TcpPipe, TcpPipes

# -- sans-I/O ------------------------------------------------------------------------------


def test_raw_bytes_out_spend_credit_without_messages():
    c = Connection("c")
    c.sent(READ_SIZE)
    assert (c.unacked, c.credit, c.bytes_out) == (READ_SIZE, WINDOW - READ_SIZE, READ_SIZE)
    with pytest.raises(ValueError):
        c.sent(WINDOW)   # over the credit: the pipe never reads that much
    c.on_ack({"bytes": READ_SIZE})
    assert c.credit == WINDOW
    c.eof()
    with pytest.raises(ValueError):
        c.sent(1)


def test_raw_bytes_in_keep_the_window_and_the_eof():
    c = Connection("c")
    c.on_raw_data(WINDOW)   # one item may join many messages: up to the window is fine
    assert (c.inbound, c.peak_inbound, c.bytes_in) == (WINDOW, WINDOW, WINDOW)
    with pytest.raises(ForwardError, match="over the window"):
        c.on_raw_data(1)
    d = Connection("d")
    assert d.on_close({"status_msg": "eof"}) is None
    with pytest.raises(ForwardError, match="after the peer's eof"):
        d.on_raw_data(10)


# -- pipes on loopback sockets -------------------------------------------------------------------


class DataPair:
    """Two loopback TCP connections joined by pipes that send their data through `send_data`
    (as over a TunnelSocket, the codec's work left out) and their acks/closes as messages."""

    def __init__(self) -> None:
        self.pipes: list[TcpPipe] = []
        self.apps: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.reads: list[int] = []   # the size of every send_data call
        self.servers: list[asyncio.Server] = []

    async def start(self, ack_threshold: int = huawei_tcp.ACK_THRESHOLD) -> DataPair:
        for index in range(2):
            accepted: asyncio.Future = asyncio.get_running_loop().create_future()
            server = await asyncio.start_server(lambda r, w, f=accepted: f.set_result((r, w)), "127.0.0.1", 0)
            self.servers.append(server)
            self.apps.append(await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1]))
            reader, writer = await asyncio.wait_for(accepted, 5)
            pipes = TcpPipes()
            pipes.send_data = self._data_sender(index)
            pipe = TcpPipe(Connection("f", ack_threshold=ack_threshold), reader, writer, self._sender(index))
            pipes.add(pipe)
            self.pipes.append(pipe)
        for pipe in self.pipes:
            pipe.start()
        return self

    def _data_sender(self, index: int):  # type: ignore[no-untyped-def]
        async def send_data(conn_id: str, raw: bytes) -> None:
            self.reads.append(len(raw))
            await asyncio.sleep(0)   # a write, then the peer's read, later
            await self.pipes[1 - index].feed_data(raw)
        return send_data

    def _sender(self, index: int):  # type: ignore[no-untyped-def]
        async def send(payload: str) -> None:
            msg = huawei_tcp.parse(payload)
            assert msg is not None and msg.op != huawei_tcp.DATA   # data goes by send_data only
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
    made = DataPair()
    yield made
    await made.close()


async def test_reads_up_to_read_size_within_credit_in_order_with_half_close(pair):
    await pair.start()
    (r0, w0), (r1, w1) = pair.apps
    payload = os.urandom(8_000_000)
    w0.write(payload)
    w0.write_eof()
    got = await asyncio.wait_for(r1.read(-1), 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert max(pair.reads) > CHUNK          # larger reads than a forward_data chunk ...
    assert max(pair.reads) <= READ_SIZE     # ... but never over READ_SIZE
    w1.write(b"answer")
    w1.write_eof()
    assert await asyncio.wait_for(r0.read(-1), 10) == b"answer"
    await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in pair.pipes)), 10)
    sender, receiver = pair.pipes
    assert sender.conn.peak_unacked <= WINDOW and receiver.conn.peak_inbound <= WINDOW
    assert sender.conn.bytes_out == len(payload) == receiver.conn.bytes_in


async def test_a_reader_that_does_not_read_holds_at_most_the_window(pair):
    await pair.start()
    (r0, w0), (r1, w1) = pair.apps
    block = os.urandom(1 << 20)
    total = 32

    async def produce() -> None:
        for _ in range(total):
            w0.write(block)
            await w0.drain()
        w0.write_eof()

    producer = asyncio.create_task(produce())
    sender, receiver = pair.pipes
    for _ in range(3000):   # app 1 reads nothing: the sender comes to a stop at the window
        if sender.conn.credit == 0:
            break
        await asyncio.sleep(0.01)
    assert sender.conn.credit == 0 and not producer.done()
    h, n = hashlib.sha256(), 0
    while data := await asyncio.wait_for(r1.read(1 << 20), 30):
        h.update(data)
        n += len(data)
    await producer
    assert n == total * len(block) and h.digest() == hashlib.sha256(block * total).digest()
    assert sender.conn.peak_unacked <= WINDOW and receiver.conn.peak_inbound <= WINDOW


async def test_a_peer_over_the_window_aborts_the_connection():
    sent: list[str] = []

    async def told(payload: str) -> None:
        sent.append(payload)

    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    _, app = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    reader, writer = await asyncio.wait_for(accepted, 5)
    receiver = TcpPipe(Connection("f"), reader, writer, told)   # not started: what comes is queued, not acked
    try:
        await receiver.feed_data(b"x" * WINDOW)
        assert not receiver.done.is_set()
        await receiver.feed_data(b"x")   # one byte over what may be unacknowledged
        assert receiver.done.is_set() and receiver.conn.aborted and "over the window" in receiver.conn.aborted
        msg = huawei_tcp.parse(sent[-1])
        assert msg is not None and msg.op == huawei_tcp.CLOSE
        assert msg.data["status_msg"].startswith("error: protocol error")
    finally:
        app.close()
        server.close()


async def test_data_written_at_once_is_acknowledged_at_once(pair):
    """Nothing queued ahead and the socket keeps up: the bytes are written without waking the
    writer task, and acknowledged (a round trip's latency)."""
    await pair.start(ack_threshold=1)
    (r0, w0), (r1, w1) = pair.apps
    sender, receiver = pair.pipes
    for i in range(20):   # ping-pong: every byte through, and its credit back
        w0.write(b"%d" % i)
        assert await asyncio.wait_for(r1.readexactly(len(b"%d" % i)), 10) == b"%d" % i
    for _ in range(1000):
        if sender.conn.unacked == 0:
            break
        await asyncio.sleep(0.01)
    assert sender.conn.unacked == 0 and receiver.conn.inbound == 0


def test_acks_come_per_quarter_of_the_window_the_peer_sends_within():
    c = Connection("c")
    c.peer_announced({"port": 22, "window": WINDOW})   # a peer of this version
    assert (c.send_window, c.ack_threshold) == (WINDOW, WINDOW // 4)
    c.on_raw_data(WINDOW)
    assert c.on_written(WINDOW // 8) is None
    ack = huawei_tcp.parse(c.on_written(WINDOW // 8) or "")
    assert ack is not None and ack.op == huawei_tcp.ACK and ack.data == {"bytes": WINDOW // 4}
    # an older peer announces nothing: it sends within 256 KiB and takes no more than that
    old = Connection("o")
    old.peer_announced({"port": 22})
    assert (old.send_window, old.ack_threshold) == (LEGACY_WINDOW, LEGACY_WINDOW // 4)
    assert old.credit == LEGACY_WINDOW


def test_an_announced_window_is_a_positive_integer_taken_up_to_the_maximum():
    assert huawei_tcp.announced_window({"window": 5}) == 5
    assert huawei_tcp.announced_window({"window": 1 << 40}) == huawei_tcp.MAX_WINDOW
    for bad in ({}, {"window": 0}, {"window": -1}, {"window": True}, {"window": "1"}, None, [1]):
        assert huawei_tcp.announced_window(bad) is None
    opened = huawei_tcp.parse(huawei_tcp.open_message("c", 22))
    answered = huawei_tcp.parse(huawei_tcp.open_response("c", "200", "connected", window=WINDOW))
    assert opened is not None and opened.data == {"port": 22, "window": WINDOW}
    assert answered is not None and huawei_tcp.announced_window(answered.data) == WINDOW
    refused = huawei_tcp.parse(huawei_tcp.open_response("c", "403", "no"))
    assert refused is not None and refused.data == {"status_code": "403", "status_msg": "no"}


async def test_an_end_of_this_version_and_an_older_one_keep_the_older_window(pair):
    """The older receiver checks 256 KiB: the newer sender, told nothing, stays within it."""
    await pair.start()
    sender, receiver = pair.pipes
    receiver.conn = Connection("f", window=LEGACY_WINDOW, ack_threshold=32 * 1024)   # an older end
    sender.conn.peer_announced({"status_code": "200", "status_msg": "connected"})     # ... announcing nothing
    (r0, w0), (r1, w1) = pair.apps
    payload = os.urandom(8_000_000)
    w0.write(payload)
    w0.write_eof()
    got = await asyncio.wait_for(r1.read(-1), 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert receiver.conn.aborted is None and sender.conn.peak_unacked <= LEGACY_WINDOW
