"""The AWS endpoint (/tunnel) against clients that break the WebSocket protocol, flood, go
silent or reconnect in a loop, through a real relay on loopback. Each abuse must end only the
offending connection, with the close code docs/aws.md and docs/codec.md give, tell the other
end of its tunnel (a reset of its streams), and leave every other tunnel relaying bytes exactly.

tests/aws/test_relay.py has the tunnel-message rules (4400, 4403, 1009 payload, 1003 text
frame, oversize frame); here are the WebSocket-level ones, sent byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct

import pytest

from relay.model import Side
from relay.web.sockets import HUB, WRITE_HIGH_WATER
from tests.aws.helpers import RawAws, binary, pong, raw_aws, relays_exactly, tunnel_frames  # noqa: F401
from tests.aws.conftest import new_client_token
from tests.aws.spec_client import (DATA, MAX_PAYLOAD, SERVICE_IDS, STREAM_RESET, STREAM_START, Msg, SpecClient, frame,
                                   open_stream, reset_of)
from tests.codec.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from tests.codec.frames import frame as ws_frame
from tests.device.conftest import eventually
from tests.test_serve import TOKEN, Served

pytestmark = pytest.mark.timeout(90)

START = Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1)
SOME = frame(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"abc"))


async def bystanders(aws_factory) -> tuple[SpecClient, SpecClient]:  # type: ignore[no-untyped-def]
    """Another tunnel on the same relay, both ends connected."""
    return await (await aws_factory("dev-bystander")).pair()


async def offender_and_peer(tunnel, raw_aws, mode: str) -> tuple[RawAws, SpecClient]:  # type: ignore[no-untyped-def]  # noqa: F811
    """`mode`'s end spoken by hand, the other end a spec client; both past SERVICE_IDS, and
    the tunnel relays both ways."""
    other = "destination" if mode == "source" else "source"
    peer = await tunnel.connect(other, client_token=new_client_token())
    offender = await raw_aws(tunnel.relay.settings.port, tunnel.source_token if mode == "source"
                             else tunnel.destination_token, mode)
    for end in (offender, peer):
        assert (await end.recv()).type == SERVICE_IDS
    source, destination = (offender, peer) if mode == "source" else (peer, offender)
    await relays_exactly(source, destination, stream_id=1, size=5000)
    return offender, peer


async def peer_is_reset_and_stays(peer: SpecClient, stream: int | None = 1) -> None:
    """The other end hears a reset of the stream it had open, if any (nothing of the offending
    bytes before it), stays connected, and is told its peer is absent (that answer is the
    next message: nothing else came)."""
    if stream is not None:
        assert await peer.recv() == reset_of(stream)
    await peer.send(Msg(DATA, stream_id=9, service_id="SSH", connection_id=1, payload=b"anyone?"))
    assert await peer.recv() == Msg(STREAM_RESET, stream_id=9, service_id="SSH", connection_id=1)


async def only_the_offender_left(relay, tunnel, mode: str, held: int) -> None:  # type: ignore[no-untyped-def]
    hub = relay.client.server.app[HUB]
    side = Side.SOURCE if mode == "source" else Side.DEVICE
    await eventually(lambda: hub.pairings[tunnel.tunnel_id].ends[side] is None
                     and sum(hub.per_address.values()) == held, timeout=5)
    assert len(hub.local_ends()) == held


# -- WebSocket protocol errors -----------------------------------------------------------------

PAYLOAD_LEN_MSB = bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + b"mask"

VIOLATIONS = {
    "unmasked frame": (ws_frame(SOME, OP_BINARY, masked=False), 1002, "client frames must be masked"),
    "RSV1 set": (ws_frame(SOME, OP_BINARY, rsv=4), 1002, "reserved bits must be zero"),
    "RSV3 set": (ws_frame(SOME, OP_BINARY, rsv=1), 1002, "reserved bits must be zero"),
    "reserved data opcode": (ws_frame(SOME, 3), 1002, "unknown opcode 3"),
    "reserved control opcode": (ws_frame(b"", 0xB), 1002, "unknown opcode 11"),
    "64-bit length with its MSB set": (PAYLOAD_LEN_MSB, 1002, "frame length has the most significant bit set"),
    "ping over 125 bytes": (ws_frame(b"p" * 126, OP_PING), 1002, "control frame payload exceeds 125 bytes"),
    "pong over 125 bytes": (ws_frame(b"p" * 126, OP_PONG), 1002, "control frame payload exceeds 125 bytes"),
    "close over 125 bytes": (ws_frame(b"\x03\xe8" + b"r" * 124, OP_CLOSE), 1002,
                             "control frame payload exceeds 125 bytes"),
    "fragmented ping": (ws_frame(b"hb", OP_PING, fin=False), 1002, "control frames must not be fragmented"),
    "continuation without a start": (ws_frame(SOME, OP_CONT, fin=False), 1002, "unexpected continuation frame"),
    "last continuation without a start": (ws_frame(SOME, OP_CONT, fin=True), 1002, "unexpected continuation frame"),
    "new binary frame inside a fragmented one": (ws_frame(SOME[:4], OP_BINARY, fin=False) + ws_frame(SOME[4:], OP_BINARY),
                                                 1002, "expected a continuation frame"),
    "close frame of 1 byte": (ws_frame(b"\x03", OP_CLOSE), 1002, "close frame payload of 1 byte"),
    "close code 1005": (ws_frame(b"\x03\xed", OP_CLOSE), 1002, "invalid close code 1005"),
    "close reason not UTF-8": (ws_frame(b"\x0f\xa0\xff", OP_CLOSE), 1007, "invalid UTF-8 in close reason"),
    # the header alone decides: the relay does not wait for (or buffer) the announced bytes
    "frame announcing 131077 bytes": (ws_frame(b"", OP_BINARY, length=131077), 1009, "frame exceeds 131076 bytes"),
    "frame announcing 1 TiB": (ws_frame(b"", OP_BINARY, length=1 << 40), 1009, "frame exceeds 131076 bytes"),
    "continuation announcing 131077 bytes": (ws_frame(SOME[:4], OP_BINARY, fin=False)
                                             + ws_frame(b"", OP_CONT, length=131077), 1009, "frame exceeds 131076 bytes"),
    "fragmented text frame": (ws_frame(b"{", OP_TEXT, fin=False), 1003,
                              "text messages are not supported: this endpoint speaks the binary AWS tunnel protocol"),
}


@pytest.mark.parametrize("mode", ["source", "destination"])
@pytest.mark.parametrize("case", list(VIOLATIONS))
async def test_a_websocket_protocol_error_ends_only_that_connection_with_its_code(
        relay, aws_factory, raw_aws, mode, case):  # noqa: F811
    wire, code, reason = VIOLATIONS[case]
    tunnel = await aws_factory()
    offender, peer = await offender_and_peer(tunnel, raw_aws, mode)
    others = await bystanders(aws_factory)
    await offender.send(wire)
    assert await offender.expect_close() == (code, reason)
    await peer_is_reset_and_stays(peer)
    await only_the_offender_left(relay, tunnel, mode, held=3)
    await relays_exactly(*others, stream_id=5)


async def test_a_protocol_error_in_the_upgrade_packet_is_answered_after_the_101(relay, aws_factory, raw_aws):  # noqa: F811
    """A client that sends its first frame with the request: the relay upgrades, sends
    SERVICE_IDS, then reads the frame and closes on it."""
    tunnel = await aws_factory()
    destination = await tunnel.connect("destination", client_token=new_client_token())
    assert (await destination.recv()).type == SERVICE_IDS
    source = await raw_aws(relay.settings.port, tunnel.source_token, "source",
                           early=ws_frame(SOME, OP_BINARY, masked=False))
    assert (await source.recv()).type == SERVICE_IDS
    assert await source.expect_close() == (1002, "client frames must be masked")
    await peer_is_reset_and_stays(destination, stream=None)   # no stream was open


async def test_a_frame_in_the_upgrade_packet_is_relayed(relay, aws_factory, raw_aws):  # noqa: F811
    tunnel = await aws_factory()
    destination = await tunnel.connect("destination", client_token=new_client_token())
    assert (await destination.recv()).type == SERVICE_IDS
    source = await raw_aws(relay.settings.port, tunnel.source_token, "source", early=tunnel_frames(START))
    assert (await source.recv()).type == SERVICE_IDS
    assert await destination.recv() == START
    await relays_exactly(source, destination, stream_id=2)


@pytest.mark.parametrize("close, echoed", [
    (b"", 1000), (b"\x03\xe8bye", 1000), (b"\x0b\xb8", 3000), (b"\x13\x87why", 4999),
])
async def test_a_client_close_frame_is_echoed_and_the_peer_is_reset(relay, aws_factory, raw_aws, close, echoed):  # noqa: F811
    tunnel = await aws_factory()
    offender, peer = await offender_and_peer(tunnel, raw_aws, "destination")
    await offender.send(ws_frame(close, OP_CLOSE))
    assert await offender.expect_close() == (echoed, "")
    await peer_is_reset_and_stays(peer)


async def test_fragments_may_add_up_past_the_frame_limit_and_control_frames_between_them_are_answered(
        aws_tunnel, raw_aws):  # noqa: F811
    """docs/codec.md: the 131,076-byte limit is per WebSocket frame; a fragmented message has no
    limit of its own (its tunnel messages have theirs). So a 400 kB message in fragments of at
    most the limit is relayed exactly, and pings between the fragments are answered in turn."""
    destination = await aws_tunnel.connect("destination", client_token=new_client_token())
    source = await raw_aws(aws_tunnel.relay.settings.port, aws_tunnel.source_token, "source")
    for end in (source, destination):
        assert (await end.recv()).type == SERVICE_IDS
    data = os.urandom(400_000)
    msgs = [START] + [Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=data[i:i + MAX_PAYLOAD])
                      for i in range(0, len(data), MAX_PAYLOAD)]
    stream = frame(*msgs)
    pieces = [stream[i:i + 131076] for i in range(0, len(stream), 131076)]
    assert len(pieces) >= 4 and len(stream) > 3 * 131076
    wire = b""
    for n, piece in enumerate(pieces):
        op = OP_BINARY if n == 0 else OP_CONT
        wire += binary(piece, fin=n == len(pieces) - 1, op=op)
        wire += ws_frame(f"ping {n}".encode() + b"." * (125 - 7), OP_PING) + ws_frame(b"unasked", OP_PONG)
    await source.send(wire)
    assert await destination.recv() == START
    got = await destination.recv_data(len(data))
    assert hashlib.sha256(got[(1, 1)]).digest() == hashlib.sha256(data).digest()
    for n in range(len(pieces)):   # a pong for each ping, with its payload, in order; the pongs sent are consumed
        assert await source.read_frame() == (True, OP_PONG, f"ping {n}".encode() + b"." * (125 - 7))
    await destination.nothing_more()


async def test_a_payload_over_63_kib_split_across_fragments_is_closed_with_1009(aws_tunnel, raw_aws):  # noqa: F811
    destination = await aws_tunnel.connect("destination", client_token=new_client_token())
    source = await raw_aws(aws_tunnel.relay.settings.port, aws_tunnel.source_token, "source")
    for end in (source, destination):
        assert (await end.recv()).type == SERVICE_IDS
    fine = Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"f" * MAX_PAYLOAD)
    over = Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"o" * (MAX_PAYLOAD + 1))
    stream = frame(START, fine, over)
    cuts = [0, 10, 70_000, 100_000, len(stream)]
    await source.send(b"".join(binary(stream[a:b], fin=b == len(stream), op=OP_BINARY if a == 0 else OP_CONT)
                               for a, b in zip(cuts, cuts[1:])))
    assert await source.expect_close() == (1009, f"payload exceeds {MAX_PAYLOAD} bytes")
    assert [await destination.recv(), await destination.recv()] == [START, fine]   # what came before it
    await peer_is_reset_and_stays(destination)


# -- what the relay does with the connection after the upgrade --------------------------------

async def test_aiohttp_lets_go_of_aws_connections_and_their_socket_buffers_are_bounded(relay_factory, aws_factory):
    relay = await relay_factory(socket_buffer=65536)
    server = relay.client.server.runner.server
    tunnel = await aws_factory(relay_=relay)
    before = len(server.connections)   # the REST client's keep-alive connection
    source, destination = await tunnel.pair()
    await eventually(lambda: len(server.connections) == before, timeout=5)
    ends = relay.client.server.app[HUB].local_ends()
    assert len(ends) == 2
    for end in ends:
        assert end.transport.get_protocol() is end
        sock = end.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536   # Linux reports twice
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536
    await relays_exactly(source, destination, stream_id=1)


async def test_a_reconnect_loop_with_a_client_token_leaves_one_connection(relay, aws_factory):
    """A destination reconnecting in a tight loop with its client token: each connection
    replaces the one before (4000), the source hears a reset of the stream it had with each, and in the end
    the relay holds exactly two connections, which relay."""
    tunnel = await aws_factory()
    hub = relay.client.server.app[HUB]
    source = await tunnel.connect("source", client_token=new_client_token())
    assert (await source.recv()).type == SERVICE_IDS
    client_token = new_client_token()
    previous = None
    for stream in range(1, 26):
        current = await tunnel.connect("destination", client_token=client_token)
        assert (await current.recv()).type == SERVICE_IDS
        if previous is not None:
            assert await previous.expect_close() == (4000, "replaced by a newer connection")
            assert await source.recv() == reset_of(stream - 1)
            await previous.close()
        await open_stream(source, current, stream)
        previous = current
    await eventually(lambda: sum(hub.per_address.values()) == 2, timeout=5)
    assert len(hub.local_ends()) == 2 and list(hub.pairings) == [tunnel.tunnel_id]
    await relays_exactly(source, previous, stream_id=30)


# -- the handshake never finished (slowloris) -----------------------------------------------------

@pytest.mark.timeout(60)
def test_a_stalled_tunnel_handshake_is_cut_off_and_its_token_stays_unused(tmp_path):
    """tests/test_serve.py cuts a stalled Huawei request; the same for /tunnel, and the stalled
    request (it carried the access token) does not use the token up."""
    relay = Served(tmp_path, "--db", "relay.db", "--handshake-timeout", "0.5",
                   env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    try:
        status, body = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "thing", "protocol": "aws",
                                                                      "services": ["SSH"]})
        assert status == 201, body
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(b"GET /tunnel?local-proxy-mode=destination HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n"
                         + f"access-token: {body['destination_access_token']}\r\n".encode())   # never ends
            assert sock.recv(1024) == b""   # closed by the relay (the timeout: a hang, not a speed claim)

        async def prompt() -> Msg:
            client = await RawAws.open(relay.port, body["destination_access_token"], "destination")
            try:
                return await client.recv()
            finally:
                client.close()

        assert asyncio.run(prompt()).type == SERVICE_IDS
    finally:
        relay.stop()


# -- silent ends ---------------------------------------------------------------------------------

async def test_a_silent_end_is_pinged_then_closed_with_4008_and_its_peer_reset(relay_factory, aws_factory, raw_aws):  # noqa: F811
    relay = await relay_factory(heartbeat_interval=0.5)
    tunnel = await aws_factory(relay_=relay)
    source = await tunnel.connect("source", client_token=new_client_token())   # aiohttp answers pings while it reads
    client_token = new_client_token()
    silent = await raw_aws(relay.settings.port, tunnel.destination_token, "destination", client_token=client_token)
    for end in (source, silent):
        assert (await end.recv()).type == SERVICE_IDS
    await source.send(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1))   # reaches the silent one
    closed, told = await asyncio.gather(silent.expect_close(timeout=10), source.recv(timeout=10))
    assert closed == (4008, "no answer to heartbeats")
    assert silent.pings and set(silent.pings) == {b"hb"}   # it was pinged before it was dropped
    assert told == reset_of(1)
    await source.send(Msg(STREAM_START, stream_id=4, service_id="SSH", connection_id=1))
    assert await source.recv() == Msg(STREAM_RESET, stream_id=4, service_id="SSH", connection_id=1)
    # docs/aws.md: after 4008, reconnect; the client token lets the same access token in again
    back = await tunnel.connect("destination", client_token=client_token)
    assert (await back.recv()).type == SERVICE_IDS
    await relays_exactly(source, back, stream_id=5)


async def _answer_pings(end: RawAws, frames: int) -> int:
    """Read `frames` frames, answering each ping; anything else fails. The pings answered."""
    for _ in range(frames):
        _, opcode, payload = await end.read_frame(timeout=5)
        assert opcode == OP_PING, (opcode, payload)
        await end.send(pong(payload))
    return frames


async def test_an_end_that_only_answers_pings_is_kept(relay_factory, aws_factory, raw_aws):  # noqa: F811
    relay = await relay_factory(heartbeat_interval=0.25)
    tunnel = await aws_factory(relay_=relay)
    port = relay.settings.port
    source = await raw_aws(port, tunnel.source_token, "source")
    destination = await raw_aws(port, tunnel.destination_token, "destination")
    for end in (source, destination):
        assert (await end.recv()).type == SERVICE_IDS
    # 4 pings each: at least 8 heartbeat intervals with nothing but pongs from the clients
    assert await asyncio.gather(_answer_pings(source, 4), _answer_pings(destination, 4)) == [4, 4]
    await relays_exactly(source, destination, stream_id=1, size=20_000)


# -- floods ----------------------------------------------------------------------------------

class Sampler:
    """The relay's write buffer for one connection, sampled every 2 ms until stopped (bounded)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.samples: list[int] = []
        self.running = True
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for _ in range(30_000):   # at most about a minute
            if not self.running:
                return
            self.samples.append(self.transport.get_write_buffer_size())
            await asyncio.sleep(0.002)

    async def stop(self) -> int:
        self.running = False
        await self.task
        return max(self.samples)


async def _other_tunnel_goes_on(others: tuple[SpecClient, SpecClient], rounds: int = 5) -> None:
    for n in range(rounds):
        await relays_exactly(*others, stream_id=100 + n, size=20_000)
        await asyncio.sleep(0.05)


FLOOD_MESSAGES = 2000
FLOOD_PAYLOAD = 4096


@pytest.mark.timeout(120)
async def test_a_flood_to_a_destination_that_does_not_read_is_held_back_and_arrives_whole_in_order(
        relay_factory, aws_factory, raw_aws):  # noqa: F811
    """The source sends DATA as fast as TCP lets it; the destination does not read. The relay
    stops reading the source once its buffer to the destination is full, instead of buffering
    8 MB; another tunnel goes on; once the destination reads, every message arrives, in order."""
    relay = await relay_factory(heartbeat_interval=60, socket_buffer=65536)
    hub = relay.client.server.app[HUB]
    port = relay.settings.port
    tunnel = await aws_factory("dev-flood", relay_=relay)
    destination = await raw_aws(port, tunnel.destination_token, "destination", rcvbuf=4096, limit=4096)
    source = await raw_aws(port, tunnel.source_token, "source", sndbuf=16384)
    for end in (source, destination):
        assert (await end.recv()).type == SERVICE_IDS
    others = await bystanders(aws_factory)
    ends = hub.pairings[tunnel.tunnel_id].ends
    to_destination, from_source = ends[Side.DEVICE], ends[Side.SOURCE]
    pool = os.urandom(1 << 20)
    payloads = [struct.pack(">I", i) + pool[i * 397:i * 397 + FLOOD_PAYLOAD - 4] for i in range(FLOOD_MESSAGES)]
    sent = 0

    async def flood() -> None:
        nonlocal sent
        await source.send_msgs(START)
        for i in range(0, FLOOD_MESSAGES, 16):
            await source.send_msgs(*(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=p)
                                     for p in payloads[i:i + 16]))   # drains: blocks while held back
            sent = i + 16

    sampler = Sampler(to_destination.transport)
    flooder = asyncio.create_task(flood())
    try:
        await _other_tunnel_goes_on(others)
        await eventually(lambda: not from_source.transport.is_reading(), timeout=10)
        assert not flooder.done() and sent < FLOOD_MESSAGES, "the source was never held back"
        held = await sampler.stop()
        print(f"held back after {sent} of {FLOOD_MESSAGES} messages; relay buffer at most {held} bytes")
        # now the destination reads: everything, in order, byte for byte
        assert await destination.recv(timeout=10) == START
        digest = hashlib.sha256()
        async with asyncio.timeout(60):
            for i in range(FLOOD_MESSAGES):
                msg = await destination.recv(timeout=10)
                assert msg.type == DATA and struct.unpack(">I", msg.payload[:4])[0] == i, (i, msg)
                digest.update(msg.payload)
        assert digest.digest() == hashlib.sha256(b"".join(payloads)).digest()
        await asyncio.wait_for(flooder, 10)
    finally:
        flooder.cancel()
        sampler.running = False
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await flooder
    assert held > WRITE_HIGH_WATER // 2, held                  # the flood really filled the relay's buffer
    assert held <= WRITE_HIGH_WATER + 256 * 1024, held          # and no more than one read past the mark
    await relays_exactly(source, destination, stream_id=2, size=20_000)


ANSWERED = 60_000


@pytest.mark.timeout(120)
async def test_a_flood_answered_by_the_relay_is_held_back_while_the_sender_does_not_read(
        relay_factory, aws_factory, raw_aws):  # noqa: F811
    """A source alone sends DATA as fast as it can and never reads: the relay answers each
    with STREAM_RESET (no peer). Its buffer of answers to the source stays bounded (it stops
    reading the source), another tunnel goes on, and once the source reads every answer is
    there, in order."""
    relay = await relay_factory(heartbeat_interval=60, socket_buffer=65536)
    hub = relay.client.server.app[HUB]
    tunnel = await aws_factory("dev-alone", relay_=relay)
    source = await raw_aws(relay.settings.port, tunnel.source_token, "source", rcvbuf=4096, sndbuf=16384, limit=4096)
    assert (await source.recv()).type == SERVICE_IDS
    others = await bystanders(aws_factory)
    conn = hub.pairings[tunnel.tunnel_id].ends[Side.SOURCE]
    base = 1_000_000

    async def flood() -> None:
        for i in range(0, ANSWERED, 500):
            await source.send_msgs(*(Msg(DATA, stream_id=base + n, service_id="SSH", connection_id=1, payload=b"?")
                                     for n in range(i, i + 500)))

    sampler = Sampler(conn.transport)
    flooder = asyncio.create_task(flood())
    try:
        await _other_tunnel_goes_on(others)
        await eventually(lambda: not conn.transport.is_reading(), timeout=10)
        assert not flooder.done(), "the source was never held back"
        held = await sampler.stop()
        print(f"answers to the source held back at {held} bytes")
        async with asyncio.timeout(60):
            for n in range(ANSWERED):
                assert await source.recv(timeout=10) == Msg(STREAM_RESET, stream_id=base + n, service_id="SSH",
                                                            connection_id=1)
        await asyncio.wait_for(flooder, 10)
    finally:
        flooder.cancel()
        sampler.running = False
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await flooder
    assert WRITE_HIGH_WATER // 2 < held <= WRITE_HIGH_WATER + 256 * 1024, held
