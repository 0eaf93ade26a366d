"""Fault tests: what the user sees when a part of the system fails, and that the system
comes back by itself once the part is back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import textwrap

import aiohttp
import orjson
import pytest

from relay.model import Side
from relay.web.sockets import HUB, WRITE_HIGH_WATER
from tests.dataplane.conftest import message, receive_json
from tests.device.conftest import eventually, stop_process

# -- 1. the device's network is cut ---------------------------------------------------------

DEVICE_CLIENT = textwrap.dedent('''
    """A minimal device: connects to device-connect, answers `command` with a
    `command_response` echoing its data, and reconnects with backoff when the connection dies."""
    import asyncio, json, sys, time
    import aiohttp

    async def main(url, token, lifetime):
        deadline = time.monotonic() + lifetime
        delay = 0.2
        timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while time.monotonic() < deadline:
                try:
                    # heartbeat: the client pings too, so it notices a dead link by itself
                    async with http.ws_connect(url, headers={"tunnel_access_token": token},
                                               heartbeat=1.0) as ws:
                        print("connected", flush=True)
                        delay = 0.2
                        async for msg in ws:
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                break
                            body = json.loads(msg.data)
                            if body.get("operation_type") == "command":
                                await ws.send_str(json.dumps({
                                    "operation_type": "command_response", "tunnel_service_type": "ssh",
                                    "request_id": body["request_id"], "data": "echo:" + body["data"]}))
                    print("closed", ws.close_code, flush=True)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    print("failed", type(exc).__name__, flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
''')


async def _receive_op(ws: aiohttp.ClientWebSocketResponse, op: str, timeout: float) -> dict:
    """Skip to the next message whose operation_type is `op` (at most 50 messages)."""
    async with asyncio.timeout(timeout):
        for _ in range(50):
            body = await receive_json(ws, timeout=timeout)
            if body["operation_type"] == op:
                return body
    raise AssertionError(f"no {op} among 50 messages")


async def _round_trip(source: aiohttp.ClientWebSocketResponse, request_id: str, timeout: float = 5) -> None:
    await source.send_str(message("command", request_id, "hello"))
    answer = await _receive_op(source, "command_response", timeout)
    assert answer["request_id"] == request_id and answer["data"] == "echo:hello", answer


async def _device_state(relay, tunnel_id: str) -> str:  # type: ignore[no-untyped-def]
    status, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}")
    assert status == 200, body
    return body["device_connect_state"]["status"]


@pytest.mark.timeout(120)
async def test_cut_device_network_is_noticed_and_the_device_comes_back(netns, relay_on, tmp_path):
    interval = 1.0
    relay = await relay_on(host=netns.host_addr, heartbeat_interval=interval)
    created = await relay.create("dev-net")
    tunnel_id = created["tunnel_id"]
    port = relay.settings.port
    device_url = f"http://{netns.host_addr}:{port}/v5/iot/tunnels/{tunnel_id}/device-connect"
    source_url = f"http://{netns.host_addr}:{port}/v5/iot/tunnels/{tunnel_id}/source-connect"
    script = tmp_path / "device.py"
    script.write_text(DEVICE_CLIENT)
    log_path = tmp_path / "device.log"
    with open(log_path, "w") as log:
        device = subprocess.Popen(netns.exec_args(sys.executable, str(script), device_url,
                                                  created["device_access_token"], "100"),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            source = await http.ws_connect(source_url, headers={"tunnel_access_token": created["tunnel_access_token"]},
                                           autoclose=False, max_msg_size=0)
            try:
                hello = await _receive_op(source, "connect_tunnel", 15)
                assert hello["data"] is None
                await _round_trip(source, "k1")
                assert await _device_state(relay, tunnel_id) == "CONNECTED"

                netns.link(up=False)        # no FIN, no RST: the packets just stop
                # What the user sees: a disconnect within a few heartbeat intervals (the
                # receive's bound; a relay that never notices fails it).
                gone = await _receive_op(source, "disconnect", 6 * interval)
                assert gone["data"]["status_code"] in ("504", "499"), gone
                await eventually(lambda: _state_is(relay, tunnel_id, "DISCONNECTED"), timeout=10)
                # The source stays connected and is told the device is absent.
                await source.send_str(message("command", "k2", "hello"))
                absent = await _receive_op(source, "disconnect", 5)
                assert absent["request_id"] == "k2" and absent["data"]["status_code"] == "404", absent

                netns.link(up=True)
                # The device notices its dead socket by itself (its own heartbeat) and reconnects.
                again = await _receive_op(source, "connect_tunnel", 20)
                assert again["operation_type"] == "connect_tunnel"
                await _round_trip(source, "k3")
                assert await _device_state(relay, tunnel_id) == "CONNECTED"
            finally:
                await source.close()
    finally:
        netns.link(up=True)
        stop_process(device)
    lines = log_path.read_text().splitlines()
    assert lines.count("connected") >= 2, lines


async def _state_is(relay, tunnel_id: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    return await _device_state(relay, tunnel_id) == state


# -- 2. the device's sshd is gone -----------------------------------------------------------


async def _connect(source: aiohttp.ClientWebSocketResponse, request_id: str, sshd) -> dict:  # type: ignore[no-untyped-def]
    await source.send_str(message("connect", request_id, {"username": sshd.user, "password": sshd.password}))
    answer = await _receive_op(source, "connect_response", 20)
    assert answer["request_id"] == request_id
    return answer


@pytest.mark.timeout(120)
async def test_missing_sshd_is_a_clear_failure_and_connect_works_once_it_is_back(
        relay_factory, mosquitto, sshd, sshd_gate, agent_factory):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    await agent_factory("dev-ssh", mosquitto.url, ssh_port=sshd_gate.port)
    created = await relay.create("dev-ssh")
    async with aiohttp.ClientSession() as http:
        source = await http.ws_connect(created["tunnel_uri"], headers={"tunnel_access_token": created["tunnel_access_token"]},
                                       autoclose=False, max_msg_size=0)
        try:
            await _receive_op(source, "connect_tunnel", 15)
            await sshd_gate.shut()                      # nothing listens on the SSH port now
            failed = await asyncio.wait_for(_connect(source, "c1", sshd), 10)   # an answer, not a hang
            assert failed["data"]["status_code"] == "502", failed
            assert "cannot reach the SSH server" in failed["data"]["status_msg"], failed
            # The tunnel itself is fine: the device stays connected.
            assert (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}"))[1][
                "device_connect_state"]["status"] == "CONNECTED"

            await sshd_gate.open()                      # the SSH server is back on its port
            ok = await _connect(source, "c2", sshd)
            assert ok["data"]["status_code"] == "200", ok
            await source.send_str(message("command", "k1", "echo ba''ck\n"))
            text = ""
            for _ in range(200):                        # bounded; each wait at most 15 s
                if re.search(r"[\r\n]back\r\n", text):   # the echoed line has ba''ck
                    break
                body = await _receive_op(source, "command_response", 15)
                if body["request_id"] == "k1":
                    text += body["data"]
            assert re.search(r"[\r\n]back\r\n", text), text
        finally:
            await source.close()


# -- 3. a message flood -----------------------------------------------------------------------

FLOOD = 20_000


def _frame(text: bytes) -> bytes:
    """A masked client text frame (mask key 0: the payload goes as is)."""
    n = len(text)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    else:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + text


async def _raw_ws(host: str, port: int, path: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand, so that the test decides when (and whether) it reads. Its
    receive buffer is kept small so that the relay's own buffer is what fills up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    # limit: the StreamReader stops reading the socket once it holds 2 x 4 KiB unread
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\ntunnel_access_token: {token}\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


@pytest.mark.timeout(120)
async def test_a_flood_is_held_back_others_go_on_and_every_pong_arrives_in_order(relay_factory):
    relay = await relay_factory()
    hub = relay.client.server.app[HUB]
    flooded = await relay.create("dev-flood")
    other = await relay.create("dev-other")
    port = relay.settings.port
    reader, writer = await _raw_ws("127.0.0.1", port, f"/v5/iot/tunnels/{flooded['tunnel_id']}/source-connect",
                                   flooded["tunnel_access_token"])
    samples: list[int] = []
    during_flood: list[bool] = []   # per round trip of the other tunnel: the flooder still held back
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession() as http:
        base = relay.url + f"/v5/iot/tunnels/{other['tunnel_id']}"
        src = await http.ws_connect(base + "/source-connect", headers={"tunnel_access_token": other["tunnel_access_token"]},
                                    autoclose=False, max_msg_size=0)
        dev = await http.ws_connect(base + "/device-connect", headers={"tunnel_access_token": other["device_access_token"]},
                                    autoclose=False, max_msg_size=0)
        try:
            assert (await receive_json(src))["operation_type"] == "connect_tunnel"
            conn = hub.pairings[flooded["tunnel_id"]].ends[Side.SOURCE]
            # On loopback the kernel would grow the relay's socket send buffer to 4 MB and
            # swallow the whole flood; a WAN client's small window does the same as this.
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            flooding = True

            async def sample() -> None:
                for _ in range(20_000):          # bounded: 20,000 x 2 ms at most
                    if not flooding:
                        return
                    samples.append(conn.transport.get_write_buffer_size())
                    await asyncio.sleep(0.002)

            async def flood() -> None:
                batch = []
                for i in range(FLOOD):
                    batch.append(_frame(message("ping", f"p{i:05d}").encode()))
                    if len(batch) == 100:
                        writer.write(b"".join(batch))
                        batch.clear()
                        await writer.drain()     # blocks while the relay holds the flooder back
                writer.write(b"".join(batch))
                await writer.drain()

            sampler = asyncio.create_task(sample())
            flooder = asyncio.create_task(flood())
            tasks.extend((sampler, flooder))
            # The flooder is held back: the relay stopped reading it ...
            await eventually(lambda: not conn.transport.is_reading(), timeout=10)
            # ... and meanwhile another tunnel relays (each step bounded by its receive timeout).
            for i in range(10):
                await src.send_str(message("command", f"o{i}", "still there?"))
                got = await receive_json(dev, timeout=5)
                assert got["request_id"] == f"o{i}"
                await dev.send_str(message("command_response", f"o{i}", "yes"))
                back = await receive_json(src, timeout=5)
                assert back["request_id"] == f"o{i}"
                during_flood.append(not conn.transport.is_reading())
                await asyncio.sleep(0.05)
            # Its buffer stayed bounded.
            held = max(samples)
            print(f"flood held back: relay write buffer at most {held} bytes")
            flooding = False
            await sampler

            # Now the flooder reads: every pong, in order.
            expected = 0
            async with asyncio.timeout(60):
                while expected < FLOOD:
                    opcode, payload = await _read_frame(reader)
                    if opcode != 0x1:
                        continue           # a heartbeat ping, say
                    body = orjson.loads(payload)
                    assert body["operation_type"] == "pong", body
                    assert body["request_id"] == f"p{expected:05d}", (expected, body)
                    expected += 1
            await asyncio.wait_for(flooder, 10)
        finally:
            flooding = False
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            writer.close()
            for ws in (src, dev):
                await ws.close()
    with_one_read = WRITE_HIGH_WATER + 256 * 1024
    assert held > WRITE_HIGH_WATER // 2, held    # the flood really filled the relay's buffer
    assert max(samples) <= with_one_read, max(samples)
    assert during_flood == [True] * 10, during_flood   # the other tunnel went on while the flood was held
