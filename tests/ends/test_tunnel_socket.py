"""The Huawei ends' raw data path (relay/ends/websocket.py's TunnelSocket): aiohttp does the
upgrade, then one codec call per read. Against a small relay stand-in on loopback that writes
server frames byte for byte as the test wants them (the 101 answer and frames in one write,
frames cut anywhere, pings and closes between data), with both codecs (RELAY_CODEC)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct

import orjson
import pytest

from relay.closes import ABNORMAL
from relay.ends import huawei_tcp
from relay.aws_messages import MessageReader, MessageType, ProxyMessage, subprotocols
from relay.aws_messages import frame as aws_frame
from relay.ends.websocket import HIGH, AwsSocket, Connector, TunnelSocket

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (not masked), FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def data_frame(conn_id: str, raw: bytes) -> bytes:
    return frame(1, huawei_tcp.message(huawei_tcp.DATA, conn_id, base64.b64encode(raw).decode()).encode())


def text_frame(doc: dict) -> bytes:
    return frame(1, orjson.dumps(doc))


def parse_client_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete client frames (masked, as RFC 6455 asks) taken off `buf`: (opcode, payload)."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert b1 & 0x80, "client frames must be masked"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, pos = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < pos + 4 + n:
            break
        key = buf[pos:pos + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos + 4:pos + 4 + n]))
        del buf[:pos + 4 + n]
        out.append((b0 & 0x0F, payload))
    return out


class FakeRelay:
    """Accepts one WebSocket upgrade; `first` is written in the same write as the 101 answer."""

    def __init__(self, first: bytes = b"", protocol: str = "") -> None:
        self.first = first
        self.protocol = protocol
        self.connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None
        self.received = bytearray()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v5/iot/tunnels/t/device-connect"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     + (f"Sec-WebSocket-Protocol: {self.protocol}\r\n".encode() if self.protocol else b"")
                     + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.first)
        self.connected.set_result((reader, writer))

    async def frames(self, reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
        """The next `count` client frames."""
        out: list[tuple[int, bytes]] = []
        while len(out) < count:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            assert chunk, f"the client closed after {out}"
            self.received += chunk
            out += parse_client_frames(self.received)
        return out

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        if self.connected.done():
            self.connected.result()[1].close()


@contextlib.asynccontextmanager
async def tunnel_socket(first: bytes = b"", heartbeat: float | None = None,  # type: ignore[no-untyped-def]
                        protocols: tuple[str, ...] = ()):
    relay = FakeRelay(first, protocols[-1] if protocols else "")
    url = await relay.start()
    async with Connector() as connector:
        ws = await connector.open(url, headers={"tunnel_access_token": "t"}, heartbeat=heartbeat, protocols=protocols)
        assert isinstance(ws, AwsSocket if protocols else TunnelSocket)
        reader, writer = await asyncio.wait_for(relay.connected, 30)
        try:
            yield ws, relay, reader, writer
        finally:
            await ws.close(timeout=1)
            await relay.close()


def collect(ws: TunnelSocket) -> list[object]:
    """What the socket hands on, in order: messages (str) and data items ((conn_id, bytes))."""
    seen: list[object] = []

    async def on_data(conn_id: str, raw: bytes) -> None:
        seen.append((conn_id, raw))

    ws.on_data = on_data
    return seen


async def read_all(ws: TunnelSocket, seen: list[object]) -> None:
    async for message in ws:
        seen.append(message)


def joined(seen: list[object]) -> list[object]:
    """Consecutive data of one connection joined (how a read cuts them is the transport's)."""
    out: list[object] = []
    for item in seen:
        if isinstance(item, tuple) and out and isinstance(out[-1], tuple) and out[-1][0] == item[0]:
            out[-1] = (item[0], out[-1][1] + item[1])
        else:
            out.append(item)
    return out


async def test_frames_in_the_upgrade_answer_and_cut_anywhere_arrive_in_order():
    hello = {"operation_type": "connect_tunnel", "request_id": "r"}
    a, b = os.urandom(7000), os.urandom(5000)
    stream = data_frame("c1", a) + text_frame({"operation_type": "forward_ack", "request_id": "c1",
                                               "tunnel_service_type": "tcp", "data": {"bytes": 5}}) + data_frame("c1", b)
    bye = frame(8, struct.pack("!H", 1000))
    async with tunnel_socket(first=text_frame(hello) + stream[:3]) as (ws, relay, reader, writer):
        seen = collect(ws)
        task = asyncio.create_task(read_all(ws, seen))
        for i in range(3, len(stream), 997):   # reads that cut frames and headers anywhere
            writer.write(stream[i:i + 997])
            await writer.drain()
        writer.write(bye)
        await asyncio.wait_for(task, 30)
        assert ws.close_code == 1000
        got = joined(seen)
        assert len(got) == 4
        assert orjson.loads(got[0]) == hello
        assert got[1] == ("c1", a)
        assert orjson.loads(got[2])["operation_type"] == "forward_ack"
        assert got[3] == ("c1", b)
        (opcode, payload), = await relay.frames(reader, 1)
        assert (opcode, payload[:2]) == (8, struct.pack("!H", 1000))   # the echo of the relay's close


async def test_a_ping_mid_transfer_is_answered_and_the_data_goes_on():
    chunks = [os.urandom(7000) for _ in range(20)]
    async with tunnel_socket() as (ws, relay, reader, writer):
        seen = collect(ws)
        task = asyncio.create_task(read_all(ws, seen))
        stream = b"".join(data_frame("c", c) for c in chunks[:10]) + frame(9, b"are-you-there") + \
            b"".join(data_frame("c", c) for c in chunks[10:])
        writer.write(stream)
        (opcode, payload), = await relay.frames(reader, 1)
        assert (opcode, payload) == (10, b"are-you-there")   # the pong, masked, with the ping's payload
        writer.write(frame(8, struct.pack("!H", 1000)))
        await asyncio.wait_for(task, 30)
        assert joined(seen) == [("c", b"".join(chunks))]


async def test_a_close_from_the_relay_mid_transfer_ends_the_socket_with_its_code():
    before, after = os.urandom(20000), os.urandom(7000)
    async with tunnel_socket() as (ws, relay, reader, writer):
        seen = collect(ws)
        task = asyncio.create_task(read_all(ws, seen))
        writer.write(b"".join(data_frame("c", before[i:i + 7000]) for i in range(0, len(before), 7000))
                     + frame(8, struct.pack("!H", 4000) + b"replaced") + data_frame("c", after))
        await asyncio.wait_for(task, 30)
        assert ws.close_code == 4000 and ws.closed
        assert joined(seen) == [("c", before)]   # nothing after the close
        (opcode, payload), = await relay.frames(reader, 1)
        assert (opcode, payload[:2]) == (8, struct.pack("!H", 4000))
        with pytest.raises(ConnectionError):
            await ws.send_data("c", b"x")
        with pytest.raises(ConnectionError):
            await ws.send("{}")


async def test_a_connection_lost_without_a_close_frame_is_1006():
    async with tunnel_socket() as (ws, relay, reader, writer):
        task = asyncio.create_task(read_all(ws, []))
        writer.transport.abort()   # the network drops it: no close frame
        await asyncio.wait_for(task, 30)
        assert ws.close_code == ABNORMAL and ws.closed and not ws.broke_rules


async def test_a_slow_consumer_stops_the_reading_of_the_relay_bounded_in_memory():
    chunk = os.urandom(7000)
    total = 4000   # 28 MB: far over HIGH and what the kernel buffers on loopback
    async with tunnel_socket() as (ws, relay, reader, writer):
        release = asyncio.Event()
        got: list[int] = []
        peak = 0

        async def slow(conn_id: str, raw: bytes) -> None:
            nonlocal peak
            peak = max(peak, ws._queued)
            await release.wait()
            got.append(len(raw))

        ws.on_data = slow
        task = asyncio.create_task(read_all(ws, []))
        frames = b"".join(data_frame("c", chunk) for _ in range(total))
        writer.write(frames)
        # the relay's writes back up: the end stopped reading (its queue is over HIGH)
        for _ in range(3000):
            if ws._paused and writer.transport.get_write_buffer_size() > 0:
                break
            await asyncio.sleep(0.01)
        assert ws._paused and writer.transport.get_write_buffer_size() > 0
        assert ws._queued <= HIGH + 512 * 1024   # one read past the mark at most
        release.set()
        await asyncio.wait_for(writer.drain(), 60)
        writer.write(frame(8, struct.pack("!H", 1000)))
        await asyncio.wait_for(task, 60)
        assert sum(got) == total * len(chunk)
        assert peak <= HIGH + 512 * 1024


async def test_send_data_waits_for_the_relay_to_read():
    async with tunnel_socket() as (ws, relay, reader, writer):
        piece = os.urandom(65536)
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for _ in range(4096):   # 256 MiB at most: far more than the kernel's buffers
                await ws.send_data("c", piece)
                sent += 1

        task = asyncio.create_task(sender())
        for _ in range(3000):   # the relay reads nothing: the sender must come to wait
            if not ws._writable.is_set():
                break
            await asyncio.sleep(0.01)
        assert not ws._writable.is_set() and not task.done()
        waiting_at = sent
        # the relay reads: the frames are forward_data of the pieces, in order
        decoded = b""
        while len(decoded) < 3 * len(piece):
            for opcode, payload in await relay.frames(reader, 1):
                msg = huawei_tcp.parse(payload)
                assert opcode == 1 and msg is not None and msg.op == huawei_tcp.DATA and msg.conn_id == "c"
                decoded += base64.b64decode(msg.data)
        assert decoded[:3 * len(piece)] == piece * 3
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert waiting_at < 4096


async def test_send_data_now_sends_only_while_the_relay_keeps_up():
    async with tunnel_socket() as (ws, relay, reader, writer):
        assert ws.send_data_now("c", b"first")
        (opcode, payload), = await relay.frames(reader, 1)
        msg = huawei_tcp.parse(payload)
        assert msg is not None and msg.conn_id == "c" and base64.b64decode(msg.data) == b"first"
        piece = os.urandom(65536)
        for _ in range(4096):   # the relay reads nothing: the transport comes over its limit
            if not ws.send_data_now("c", piece):
                break
        assert not ws._writable.is_set()
        assert not ws.send_data_now("c", b"refused")   # nothing written: it must wait, as send_data does
        await ws.close(timeout=0.1)
        assert not ws.send_data_now("c", b"closed")


def fast_collect(ws: TunnelSocket, refuse_every: int = 0) -> tuple[list[object], list[int]]:
    """`collect`, with the socket's synchronous way taken too: data items it takes are appended
    in the same call; every `refuse_every`-th it refuses (that item must come by on_data)."""
    seen = collect(ws)
    counts = [0, 0]   # taken, refused

    def deliver_now(item: tuple) -> bool:
        if refuse_every and sum(counts) % refuse_every == refuse_every - 1:
            counts[1] += 1
            return False
        counts[0] += 1
        seen.append((item[0], item[1]))
        return True

    ws.deliver_now = deliver_now
    return seen, counts


@pytest.mark.parametrize("refuse_every", [0, 3])
async def test_data_taken_in_the_read_keeps_its_order_with_messages_and_refusals(refuse_every):
    chunks = [os.urandom(3000) for _ in range(60)]
    stream = b""
    expected: list[object] = []
    for i, chunk in enumerate(chunks):
        stream += data_frame("c", chunk)
        expected.append(("c", chunk))
        if i % 7 == 3:
            stream += text_frame({"operation_type": "forward_ack", "request_id": "c", "n": i})
            expected.append(i)
    async with tunnel_socket() as (ws, relay, reader, writer):
        seen, counts = fast_collect(ws, refuse_every)

        async def read_slowly() -> None:   # a message takes its reader a while: data arrives meanwhile
            async for message in ws:
                seen.append(message)
                await asyncio.sleep(0.003)

        task = asyncio.create_task(read_slowly())
        for i in range(0, len(stream), 4001):   # reads that cut frames anywhere, a pause between some
            writer.write(stream[i:i + 4001])
            await writer.drain()
            if i % 3:
                await asyncio.sleep(0.001)
        writer.write(frame(8, struct.pack("!H", 1000)))
        await asyncio.wait_for(task, 30)
        got = [orjson.loads(x)["n"] if isinstance(x, str) else x for x in seen]
        assert joined(got) == joined(expected)
        assert counts[0] > 0   # the synchronous way was taken ...
        assert (counts[1] > 0) == bool(refuse_every)   # ... and, when refused, the task's way kept the order


async def test_no_answer_to_the_heartbeat_ends_the_socket():
    async with tunnel_socket(heartbeat=0.2) as (ws, relay, reader, writer):
        seen = collect(ws)
        await asyncio.wait_for(read_all(ws, seen), 30)   # the relay never answers the ping
        assert ws.close_code == ABNORMAL
        (opcode, _), = (await relay.frames(reader, 1))[:1]
        assert opcode == 9


async def test_the_heartbeat_keeps_a_socket_whose_relay_answers():
    async with tunnel_socket(heartbeat=0.1) as (ws, relay, reader, writer):
        task = asyncio.create_task(read_all(ws, []))
        for _ in range(5):   # five pings answered: still open
            (opcode, payload), = await relay.frames(reader, 1)
            assert opcode == 9
            writer.write(frame(10, payload))
        assert not task.done() and not ws.closed
        writer.write(frame(8, struct.pack("!H", 1000)))
        await asyncio.wait_for(task, 30)


# -- the AWS protocol's socket ---------------------------------------------------------------------


async def test_aws_data_goes_to_on_data_and_other_messages_come_whole_in_order():
    protocols = tuple(subprotocols(3))
    payload = os.urandom(150_000)
    data = b"".join(aws_frame(ProxyMessage(MessageType.DATA, 5, payload=payload[i:i + 60000], service_id="SSH",
                                           connection_id=2)) for i in range(0, len(payload), 60000))
    reset = aws_frame(ProxyMessage(MessageType.CONNECTION_RESET, 5, service_id="SSH", connection_id=2))
    stream = frame(2, data[:70000]) + frame(2, data[70000:] + reset)   # a message across frames, two in one
    async with tunnel_socket(protocols=protocols) as (ws, relay, reader, writer):
        assert isinstance(ws, AwsSocket) and ws.protocol == protocols[-1]
        seen: list[object] = []

        async def on_data(sid: str, stream_id: int, cid: int, raw: bytes) -> None:
            seen.append(((sid, stream_id, cid), raw))

        ws.on_data = on_data
        task = asyncio.create_task(read_all(ws, seen))
        for i in range(0, len(stream), 4099):
            writer.write(stream[i:i + 4099])
            await writer.drain()
        # out: DATA of at most MAX_PAYLOAD, in one write, masked binary frames
        await ws.send_data("SSH", 5, 2, payload)
        out = b""
        while len(out) < len(payload):
            for opcode, body in await relay.frames(reader, 1):
                if opcode == 2:
                    for m in MessageReader().feed(body):
                        assert (m.type, m.service_id, m.stream_id, m.connection_id) == (MessageType.DATA, "SSH", 5, 2)
                        out += m.payload
        assert out == payload
        writer.write(frame(8, struct.pack("!H", 1000)))
        await asyncio.wait_for(task, 30)
        got = joined(seen)
        assert got[0] == (("SSH", 5, 2), payload)
        (message,) = MessageReader().feed(got[1])   # a control message: as a binary frame carries it
        assert (message.type, message.stream_id, message.connection_id) == (MessageType.CONNECTION_RESET, 5, 2)
        assert len(got) == 2 and ws.close_code == 1000 and not ws.broke_rules


async def test_aws_text_from_the_relay_is_closed_by_this_end_as_not_the_protocol():
    async with tunnel_socket(protocols=tuple(subprotocols(3))) as (ws, relay, reader, writer):
        task = asyncio.create_task(read_all(ws, []))
        writer.write(frame(1, b"{}"))
        await asyncio.wait_for(task, 30)
        assert ws.close_code == 1003 and ws.broke_rules   # relay/closes.py: ours, so reconnect
        (opcode, body), = await relay.frames(reader, 1)
        assert (opcode, body[:2]) == (8, struct.pack("!H", 1003))


# -- TLS, on both event loops the ends run on ----------------------------------------------------


def self_signed(tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A certificate for 127.0.0.1 and its key, as files (cryptography: asyncssh's dependency)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_raw_path_over_tls(tmp_path, loop):
    import ssl

    import uvloop

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    payload = os.urandom(300_000)

    async def scenario() -> None:
        relay = FakeRelay(text_frame({"operation_type": "connect_tunnel", "request_id": "r"}))
        relay.server = await asyncio.start_server(relay._handle, "127.0.0.1", 0, ssl=server_ctx)
        port = relay.server.sockets[0].getsockname()[1]
        async with Connector() as connector:
            ws = await connector.open(f"wss://127.0.0.1:{port}/v5/iot/tunnels/t/device-connect",
                                      headers={"tunnel_access_token": "t"}, ssl=client_ctx)
            assert isinstance(ws, TunnelSocket)
            reader, writer = await asyncio.wait_for(relay.connected, 30)
            seen = collect(ws)
            task = asyncio.create_task(read_all(ws, seen))
            writer.write(b"".join(data_frame("c", payload[i:i + 7000]) for i in range(0, len(payload), 7000)))
            await ws.send_data("c", payload)
            out = b""
            while len(out) < len(payload):
                for opcode, body in await relay.frames(reader, 1):
                    msg = huawei_tcp.parse(body)
                    assert opcode == 1 and msg is not None and msg.op == huawei_tcp.DATA
                    out += base64.b64decode(msg.data)
            assert out == payload
            writer.write(frame(8, struct.pack("!H", 1000)))
            await asyncio.wait_for(task, 30)
            assert joined(seen)[1:] == [("c", payload)] and ws.close_code == 1000
            await ws.close(timeout=1)
            await relay.close()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(scenario(), 60))
