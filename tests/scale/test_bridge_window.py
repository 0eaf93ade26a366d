"""The moment a bridge is built (relay/web/bridge.py): the source's replica links its end as
soon as it answers 101, the device's replica only once it has read that answer. What the
device sends in between must be relayed, not answered "peer absent".

Two replicas in this process, sharing the session's Redis, each with its internal port
served. The device's replica is made to wait, after the 101 answer has arrived and before it
attaches the bridge, until the test has had the device send (so the window is as wide as the
test wants, and no sleep decides anything)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import struct
import termios
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from relay.clock import ManualClock
from relay.model import Side
from relay.store.redis import RedisStore
from relay.web import bridge as bridge_module
from relay.web import sockets
from relay.web.app import create_app, create_internal_app
from relay.web.server import SHUTDOWN_TIMEOUT
from tests.aws.spec_client import DATA, SERVICE_IDS, STREAM_START, Msg
from tests.aws.spec_client import connect as aws_connect
from tests.conftest import TOKEN_A
from tests.dataplane.conftest import message
from tests.scale.conftest import BRIDGE_SECRET

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass
class Replica:
    client: TestClient
    internal: TestServer

    @property
    def app(self) -> web.Application:
        return self.client.server.app  # type: ignore[return-value]

    @property
    def hub(self) -> sockets.Hub:
        return self.app[sockets.HUB]

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def create(self, **body: Any) -> dict:
        async with self.client.post("/v5/iot/proj-a/tunnels", json=body, headers={"X-Auth-Token": TOKEN_A}) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()


@pytest.fixture
async def replicas(settings_factory, redis_server) -> AsyncIterator[Callable[[str], Any]]:
    prefix = f"window-{uuid.uuid4().hex[:8]}:"   # the session's Redis, this test's keys
    clock = ManualClock()
    started: list[Replica] = []

    async def start(name: str, reconcile_interval: float = 0.5) -> Replica:
        port, internal_port = unused_port(), unused_port()
        settings = settings_factory(port=port, store_url=redis_server.url, internal_port=internal_port,
                                    replica_id=name, heartbeat_interval=20.0, reconcile_interval=reconcile_interval,
                                    bridge_secret=BRIDGE_SECRET)
        app = create_app(settings, clock=clock, store=RedisStore(redis_server.url, prefix=prefix))
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server(shutdown_timeout=SHUTDOWN_TIMEOUT)   # as `relay serve` stops
        client = TestClient(server)
        await client.start_server()
        internal = TestServer(create_internal_app(app), host="127.0.0.1", port=internal_port)
        await internal.start_server(shutdown_timeout=SHUTDOWN_TIMEOUT)
        replica = Replica(client, internal)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.internal.close()
        await replica.client.close()


class Gate:
    """Replaces the bridge's _UpgradeAnswer: once a 101 answer has arrived, `_open` learns of
    it only when `opened` is set. What the other replica sends after the answer arrives
    meanwhile, as it does when `_open` is slow to run again on a busy replica. A refusal (an
    attempt made before the source's replica could take it; reconciliation tries again)
    passes at once."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()   # the 101 answer is here, held back
        self.opened = asyncio.Event()     # let `_open` have it
        self.held: list[Any] = []         # the protocol whose answer is held back
        gate = self

        class HeldAnswer(bridge_module._UpgradeAnswer):
            def answered(self, head: bytes) -> None:
                if not head.startswith(b"HTTP/1.1 101") or gate.answered.is_set():
                    super().answered(head)
                    return
                gate.held.append(self)
                gate.answered.set()
                asyncio.ensure_future(self._later(head))

            async def _later(self, head: bytes) -> None:
                await gate.opened.wait()
                if not self.answer.done():
                    super().answered(head)

        self.cls = HeldAnswer


@pytest.fixture
def gate(monkeypatch) -> Iterator[Gate]:
    g = Gate()
    monkeypatch.setattr(bridge_module, "_UpgradeAnswer", g.cls)
    yield g
    g.opened.set()   # a test that failed midway leaves no attempt waiting


async def until(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Check `condition` at every turn of the loop (a few ms apart) for `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


def huawei_ws(session: aiohttp.ClientSession, replica: Replica, tunnel_id: str, side: str, token: str):  # type: ignore[no-untyped-def]
    """A Huawei end's WebSocket to `replica`."""
    return session.ws_connect(f"{replica.base.replace('http', 'ws')}/v5/iot/tunnels/{tunnel_id}/{side}-connect",
                              headers={"tunnel_access_token": token}, autoclose=False, heartbeat=None)


def _unread(transport: asyncio.Transport) -> int:
    """Bytes waiting in the kernel's receive buffer of the relay's socket."""
    fd = transport.get_extra_info("socket").fileno()
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0)))[0]


def _claimed(replica: Replica, tunnel_id: str, side: Side) -> bool:
    pairing = replica.hub.pairings.get(tunnel_id)
    end = pairing.ends[side] if pairing is not None else None
    return end is not None and end.claim is not None and end.claim.done()


async def _device_message_arrived(b: Replica, tunnel_id: str, size: int) -> None:
    """The device's message has reached the device's replica: read by it (no hold), or
    waiting in its kernel buffer (held)."""
    device = b.hub.pairings[tunnel_id].ends[Side.DEVICE]
    decoder = b.hub.pairings[tunnel_id].decoders[Side.DEVICE]
    await until(lambda: decoder.messages > 0 or _unread(device.transport) >= size,
                "the device's message reached its replica")


async def test_huawei_device_message_sent_while_the_bridge_is_built_is_relayed(replicas, gate):
    a, b = await replicas("window-a"), await replicas("window-b")
    body = await a.create(device_id=f"dev-{uuid.uuid4().hex[:8]}")
    tunnel_id = body["tunnel_id"]
    async with aiohttp.ClientSession() as session:
        def ws(replica: Replica, side: str, token: str):  # type: ignore[no-untyped-def]
            return huawei_ws(session, replica, tunnel_id, side, token)

        # The device on B, then the source on A: A's hint has B open the bridge.
        device = await ws(b, "device", body["device_access_token"])
        await until(lambda: _claimed(b, tunnel_id, Side.DEVICE), "the device's lease")
        source = await ws(a, "source", body["tunnel_access_token"])
        # A answered 101 and linked its end: the source is told the tunnel is up ...
        hello = orjson.loads((await source.receive(timeout=10)).data)
        assert hello["operation_type"] == "connect_tunnel"
        await asyncio.wait_for(gate.answered.wait(), 5)   # ... while B holds that answer back
        up = message("command_response", "r1", "Linux box 6.1 " + "x" * 300)
        await device.send_str(up)
        await _device_message_arrived(b, tunnel_id, len(up))
        gate.opened.set()

        try:
            got = await source.receive(timeout=5)
        except TimeoutError:
            raise AssertionError("the device's message, sent once the source had connect_tunnel, was not relayed") from None
        assert got.type == aiohttp.WSMsgType.TEXT and got.data == up
        # and the device was not told "peer absent": the next thing it hears is the source
        down = message("command", "after", "id")
        await source.send_str(down)
        first = await device.receive(timeout=5)
        assert first.type == aiohttp.WSMsgType.TEXT and first.data == down, first
        device_end = b.hub.pairings[tunnel_id].ends[Side.DEVICE]
        assert device_end.transport.is_reading() and not device_end.peer_full
        await source.close()
        await device.close()


async def test_huawei_source_message_right_after_connect_tunnel_is_relayed(replicas, gate):
    """The source's replica links the source as soon as it has answered the bridge's upgrade,
    and tells it connect_tunnel: the source's first message may reach the device's replica
    after the answer, before that replica has handed the socket to the bridge. It is relayed,
    not lost with the bytes that followed the answer (CI once lost it on a loaded machine)."""
    a, b = await replicas("first-a"), await replicas("first-b")
    body = await a.create(device_id=f"dev-{uuid.uuid4().hex[:8]}")
    tunnel_id = body["tunnel_id"]
    async with aiohttp.ClientSession() as session:
        device = await huawei_ws(session, b, tunnel_id, "device", body["device_access_token"])
        await until(lambda: _claimed(b, tunnel_id, Side.DEVICE), "the device's lease")
        source = await huawei_ws(session, a, tunnel_id, "source", body["tunnel_access_token"])
        hello = orjson.loads((await source.receive(timeout=10)).data)
        assert hello["operation_type"] == "connect_tunnel"
        await asyncio.wait_for(gate.answered.wait(), 5)   # B has the answer; `_open` does not yet
        down = message("command", "first", "uname -a")
        await source.send_str(down)
        await until(lambda: len(gate.held[0].buffer) > len(down), "the source's message reached B behind the answer")
        gate.opened.set()
        got = await device.receive(timeout=5)
        assert got.type == aiohttp.WSMsgType.TEXT and got.data == down, got
        await device.send_str(message("command_response", "first", "Linux"))
        assert orjson.loads((await source.receive(timeout=5)).data)["data"] == "Linux"
        await source.close()
        await device.close()


async def test_aws_destination_data_sent_while_the_bridge_is_built_is_relayed(replicas, gate):
    a, b = await replicas("window-a"), await replicas("window-b")
    body = await a.create(device_id=f"thing-{uuid.uuid4().hex[:8]}", protocol="aws", services=["SSH"])
    tunnel_id = body["tunnel_id"]
    async with aiohttp.ClientSession() as session:
        destination = await aws_connect(session, b.base, body["destination_access_token"], "destination")
        assert await destination.recv(timeout=10) == Msg(SERVICE_IDS, available_service_ids=("SSH",))
        await until(lambda: _claimed(b, tunnel_id, Side.DEVICE), "the destination's lease")
        source = await aws_connect(session, a.base, body["source_access_token"], "source")
        assert await source.recv(timeout=10) == Msg(SERVICE_IDS, available_service_ids=("SSH",))
        await asyncio.wait_for(gate.answered.wait(), 5)   # B has the 101 answer, held back
        # A has linked its end (there is no connect_tunnel in AWS: its source's STREAM_START
        # goes into the bridge instead of being answered STREAM_RESET) ...
        assert isinstance(a.hub.pairings[tunnel_id].ends[Side.DEVICE], bridge_module.BridgeEnd)
        start = Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1)
        await source.send(start)
        held = gate.held[0]
        await until(lambda: bool(held.buffer), "the STREAM_START reached B through the bridge, behind the answer")
        # ... while B has not linked the destination yet: what it sends now must be relayed.
        data = Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"SSH-2.0-OpenSSH_9.2\r\n" * 20)
        await destination.send(data)
        await _device_message_arrived(b, tunnel_id, len(data.payload))
        gate.opened.set()

        assert await destination.recv(timeout=5) == start   # not a STREAM_RESET for its DATA
        try:
            got = await source.recv(timeout=5)
        except TimeoutError:
            raise AssertionError("the destination's DATA, sent once the source's end was linked, was not relayed") from None
        assert got == data
        with contextlib.suppress(Exception):
            await source.close()
            await destination.close()


async def test_a_device_connecting_after_its_source_is_bridged_at_once(replicas):
    """The device's replica bridges it when its lease is claimed, not at the next
    reconciliation (made an hour away here): the source hears connect_tunnel at once."""
    a, b = await replicas("window-a", reconcile_interval=3600), await replicas("window-b", reconcile_interval=3600)
    body = await a.create(device_id=f"dev-{uuid.uuid4().hex[:8]}")
    tunnel_id = body["tunnel_id"]
    async with aiohttp.ClientSession() as session:
        def ws(replica: Replica, side: str, token: str):  # type: ignore[no-untyped-def]
            return huawei_ws(session, replica, tunnel_id, side, token)

        source = await ws(a, "source", body["tunnel_access_token"])
        await until(lambda: _claimed(a, tunnel_id, Side.SOURCE), "the source's lease")
        device = await ws(b, "device", body["device_access_token"])
        hello = orjson.loads((await source.receive(timeout=10)).data)
        assert hello["operation_type"] == "connect_tunnel"
        await source.send_str(message("command", "c1", "uname"))
        assert orjson.loads((await device.receive(timeout=5)).data)["request_id"] == "c1"
        await source.close()
        await device.close()
