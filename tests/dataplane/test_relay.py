"""The relay with real WebSocket clients against a running server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import aiohttp
import orjson
import pytest

from tests.dataplane.conftest import message, receive_close, receive_json

BASE = "/v5/iot/proj-a/tunnels"


# -- handshake ---------------------------------------------------------------------------------

async def test_source_gets_connect_tunnel_when_both_sides_are_there(tunnel):
    device = await tunnel.connect("device")
    source = await tunnel.connect("source")
    hello = await receive_json(source)
    assert hello == {"operation_type": "connect_tunnel", "tunnel_service_type": "ssh",
                     "request_id": hello["request_id"], "data": None}
    assert isinstance(hello["request_id"], str) and hello["request_id"]
    info = await tunnel.info()
    assert info["source_connect_state"]["status"] == "CONNECTED"
    assert info["device_connect_state"]["status"] == "CONNECTED"
    await device.close()
    await source.close()


@pytest.mark.parametrize("side", ["source", "device"])
async def test_refused_upgrades_have_status_and_error_body(tunnel, session, side):
    url = tunnel.source_url if side == "source" else tunnel.device_url
    wrong = tunnel.device_token if side == "source" else tunnel.source_token
    http = url.replace("ws://", "http://")
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    cases = [
        ({**upgrade}, 401, "TUNNEL.401000"),                                     # no token
        ({**upgrade, "tunnel_access_token": "x" * 43}, 401, "TUNNEL.401000"),    # unknown token
        ({**upgrade, "tunnel_access_token": wrong}, 401, "TUNNEL.401000"),       # the other side's token
        ({**upgrade, "tunnel_access_token": "x" * 300}, 401, "TUNNEL.401000"),   # too long
        ({"tunnel_access_token": "x"}, 400, "TUNNEL.400010"),                    # not an upgrade
        ({**upgrade, "Sec-WebSocket-Key": "short"}, 400, "TUNNEL.400010"),
    ]
    for headers, status, code in cases:
        async with session.get(http, headers=headers) as resp:
            assert resp.status == status, headers
            assert (await resp.json())["error_code"] == code
    missing = http.replace(tunnel.tunnel_id, "00000000-0000-4000-8000-000000000000")
    async with session.get(missing, headers={**upgrade, "tunnel_access_token": "x" * 43}) as resp:
        assert resp.status == 404 and (await resp.json())["error_code"] == "TUNNEL.404000"


async def test_closed_and_expired_tunnels_answer_410(relay, tunnel_factory):
    closed = await tunnel_factory("dev-1")
    await relay.call("PUT", f"{BASE}/{closed.tunnel_id}")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await closed.connect("device")
    assert err.value.status == 410
    expiring = await tunnel_factory("dev-2", expires_in=60)
    relay.clock.advance(61)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await expiring.connect("source")
    assert err.value.status == 410


async def test_other_ways_to_present_the_token(tunnel):
    bearer = await tunnel.connect("device", headers={"Authorization": f"Bearer {tunnel.device_token}"})
    # browsers: a subprotocol carries the token; the relay answers with its own subprotocol
    browser = await tunnel.connect("source", headers={},
                                   protocols=("iot-tunnel.v1", f"access-token.{tunnel.source_token}"))
    assert browser.protocol == "iot-tunnel.v1"
    assert (await receive_json(browser))["operation_type"] == "connect_tunnel"
    await browser.close()
    cookie = await tunnel.connect("source", headers={"Cookie": f"tunnel_access_token={tunnel.source_token}"})
    assert (await receive_json(cookie))["operation_type"] == "connect_tunnel"
    await cookie.close()
    await bearer.close()


def _raw_handshake(host: str, port: int, path: str, header_lines: list[str]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    request = "\r\n".join([f"GET {path} HTTP/1.1", *header_lines, "Upgrade: websocket", "Connection: Upgrade",
                           f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "", ""])
    sock.sendall(request.encode())
    return sock


def _read_response_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_frame(sock: socket.socket, buffered: bytes = b"") -> tuple[int, bytes, bytes]:
    data = buffered
    while True:
        if len(data) >= 2:
            n = data[1] & 0x7F
            offset = 2
            if n == 126:
                if len(data) >= 4:
                    n, offset = struct.unpack("!H", data[2:4])[0], 4
                else:
                    n = None
            if n is not None and len(data) >= offset + n:
                return data[0] & 0x0F, data[offset:offset + n], data[offset + n:]
        chunk = sock.recv(65536)
        assert chunk
        data += chunk


async def test_huawei_sdk_handshake_quirks(tunnel):
    """The C SDK writes `tunnel_access_token:TOKEN` without a space, a Host without port and an
    Origin; and a client may send its first frame in the same packet as the request."""
    port = tunnel.relay.settings.port
    path = f"/v5/iot/tunnels/{tunnel.tunnel_id}/device-connect"
    source = await tunnel.connect("source")

    def device_side() -> dict:
        sock = _raw_handshake("127.0.0.1", port, path, [
            "Host: 127.0.0.1", "Origin: http://127.0.0.1", f"tunnel_access_token:{tunnel.device_token}"])
        with sock:
            head, rest = _read_response_head(sock)
            assert head.startswith(b"HTTP/1.1 101"), head
            sock.sendall(_masked_text(message("ping", "p1").encode()))
            opcode, payload, rest = _read_frame(sock, rest)
            return {"opcode": opcode, "payload": orjson.loads(payload)}

    got = await asyncio.to_thread(device_side)
    assert got["opcode"] == 1 and got["payload"]["operation_type"] == "pong"
    assert got["payload"]["request_id"] == "p1"
    await source.close()


async def test_first_frame_in_the_upgrade_packet_is_not_lost(tunnel):
    port = tunnel.relay.settings.port
    source = await tunnel.connect("source")

    def device_side() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /v5/iot/tunnels/{tunnel.tunnel_id}/device-connect HTTP/1.1\r\nHost: x\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\ntunnel_access_token: {tunnel.device_token}\r\n\r\n").encode()
        sock.sendall(request + _masked_text(message("command_response", "r1", "early bird").encode()))
        with sock:
            head, rest = _read_response_head(sock)
            assert head.startswith(b"HTTP/1.1 101")
            # wait until the source has read the message and left (the relay then tells us)
            sock.settimeout(20)
            sock.recv(1)

    thread = asyncio.create_task(asyncio.to_thread(device_side))
    assert (await receive_json(source, timeout=15))["operation_type"] == "connect_tunnel"
    got = await receive_json(source, timeout=15)
    assert got["data"] == "early bird"
    await source.close()
    await thread


# -- relaying ----------------------------------------------------------------------------------

async def test_messages_are_relayed_byte_for_byte_both_ways(tunnel):
    source, device = await tunnel.pair()
    connect = message("connect", "c1", {"username": "root", "password": "pw"})
    await source.send_str(connect)
    assert (await device.receive(timeout=5)).data == connect
    # Huawei's SDK answers without a data field
    answer = '{"operation_type":"connect_response","tunnel_service_type":"ssh","request_id":"c1"}'
    await device.send_str(answer)
    assert (await source.receive(timeout=5)).data == answer
    # odd but valid JSON is kept exactly as sent
    odd = '{ "request_id" : "c2", "operation_type":"command","tunnel_service_type":"ssh","data":"ls\\u0020-l",  "x": [1.50, 2e3] }'
    await source.send_str(odd)
    assert (await device.receive(timeout=5)).data == odd


async def test_thousands_of_messages_arrive_exactly_in_order(tunnel):
    source, device = await tunnel.pair()
    count = 3000
    sent_down = [message("command", f"q{i}", "x" * (i % 700)) for i in range(count)]
    sent_up = [message("command_response", f"q{i}", "y" * ((i * 7) % 9000)) for i in range(count)]

    async def pump(ws, messages):
        for m in messages:
            await ws.send_str(m)

    async def drain(ws, n):
        got = []
        while len(got) < n:
            got.append((await ws.receive(timeout=10)).data)
        return got

    results = await asyncio.gather(pump(source, sent_down), pump(device, sent_up),
                                   drain(device, count), drain(source, count))
    assert results[2] == sent_down
    assert results[3] == sent_up


async def test_size_limit_is_10240_bytes(tunnel):
    source, device = await tunnel.pair()
    base = message("command", "r1", "")
    exact = message("command", "r1", "a" * (10240 - len(base)))
    assert len(exact) == 10240
    await source.send_str(exact)
    assert (await device.receive(timeout=5)).data == exact
    over = message("command", "r2", "a" * (10241 - len(base)))
    assert len(over) == 10241
    await source.send_str(over)
    code, _ = await receive_close(source)
    assert code == 1009
    # the device hears that its peer left, and nothing of the oversize message
    got = await receive_json(device)
    assert got["operation_type"] == "disconnect" and got["data"]["status_code"] == "499"


@pytest.mark.parametrize("payload, code", [
    ("not json", 4400),
    ("[1, 2]", 4400),
    ('{"operation_type":"command","tunnel_service_type":"ssh"}', 4400),                      # no request_id
    ('{"operation_type":"command","tunnel_service_type":"ssh","request_id":7}', 4400),       # not a string
    ('{"operation_type":"command","tunnel_service_type":"telnet","request_id":"a"}', 4400),  # unknown service
    ('{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"a"}', 4403),  # device's op
    ('{"operation_type":"connect_tunnel","tunnel_service_type":"ssh","request_id":"a"}', 4403),    # relay's op
])
async def test_bad_messages_close_with_documented_codes_and_are_not_forwarded(tunnel, payload, code):
    source, device = await tunnel.pair()
    await source.send_str(payload)
    got_code, reason = await receive_close(source)
    assert got_code == code and reason
    got = await receive_json(device)
    assert got["operation_type"] == "disconnect"  # the peer left; the bad message never came


async def test_binary_messages_are_refused(tunnel):
    source, device = await tunnel.pair()
    await device.send_bytes(b"\x00\x01")
    code, _ = await receive_close(device)
    assert code == 1003


async def test_reused_request_id_is_refused(tunnel):
    source, device = await tunnel.pair()
    await source.send_str(message("command", "same", "ls"))
    await device.receive(timeout=5)
    await source.send_str(message("command", "same", "ls"))
    code, _ = await receive_close(source)
    assert code == 4409
    # reconnecting does not make an old id fresh again: the window belongs to the tunnel
    source = await tunnel.connect("source")
    assert (await receive_json(source))["operation_type"] == "connect_tunnel"
    await source.send_str(message("command", "same", "ls"))
    assert (await receive_close(source))[0] == 4409


async def test_ping_message_is_answered_by_the_relay(tunnel):
    source = await tunnel.connect("source")
    await source.send_str(message("ping", "hb-1"))
    got = await receive_json(source)
    assert got == {"operation_type": "pong", "tunnel_service_type": "ssh", "request_id": "hb-1", "data": None}


async def test_messages_while_the_peer_is_absent_are_answered(tunnel):
    source = await tunnel.connect("source")
    await source.send_str(message("connect", "c1", {"username": "u", "password": "p"}))
    got = await receive_json(source)
    assert got["operation_type"] == "disconnect" and got["request_id"] == "c1"
    assert got["data"] == {"status_code": "404", "status_msg": "device is not connected"}


# -- pairing, eviction, disconnect reasons -----------------------------------------------------

async def test_new_device_connection_evicts_the_old_one(tunnel):
    source, old = await tunnel.pair()
    new = await tunnel.connect("device")
    got = await receive_json(old)
    assert got["operation_type"] == "disconnect" and got["data"]["status_code"] == "409"
    code, reason = await receive_close(old)
    assert code == 4000 and "newer connection" in reason
    # the source's session ended with the old device, and it is paired with the new one
    ended = await receive_json(source)
    assert ended["operation_type"] == "disconnect" and ended["data"]["status_code"] == "499"
    assert (await receive_json(source))["operation_type"] == "connect_tunnel"
    await source.send_str(message("command", "c1", "uptime"))
    assert orjson.loads((await new.receive(timeout=5)).data)["request_id"] == "c1"
    info = await tunnel.info()
    assert info["device_connect_state"]["status"] == "CONNECTED"


async def test_new_source_connection_evicts_the_old_one(tunnel):
    old, device = await tunnel.pair()
    new = await tunnel.connect("source")
    assert (await receive_json(old))["data"]["status_code"] == "409"
    assert (await receive_close(old))[0] == 4000
    # the device ends the old source's session: the new source cannot inherit its login
    told = await receive_json(device)
    assert told["data"] == {"status_code": "499", "status_msg": "the source was replaced by a newer connection"}
    assert (await receive_json(new))["operation_type"] == "connect_tunnel"
    await device.send_str(message("command_response", "x", "hello"))
    assert orjson.loads((await new.receive(timeout=5)).data)["data"] == "hello"


async def test_what_the_device_sends_for_a_replaced_source_does_not_reach_the_new_one(tunnel):
    """Output the device sent for the old source's session before it read that session's end
    (its shell prompt, request c1) arrives after the new source took over: it is dropped; what
    the device sends for the new source, or on its own, goes through (issue 14, point 8)."""
    old, device = await tunnel.pair()
    await old.send_str(message("connect", "c1", {"username": "u", "password": "p"}))
    assert orjson.loads((await device.receive(timeout=5)).data)["request_id"] == "c1"
    await old.send_str(message("command", "k1", "ls\n"))
    assert orjson.loads((await device.receive(timeout=5)).data)["request_id"] == "k1"
    new = await tunnel.connect("source")
    assert (await receive_close(old))[0] == 4000
    assert (await receive_json(new))["operation_type"] == "connect_tunnel"
    # still in flight from the device when the new source came: the old session's output
    await device.send_str(message("command_response", "c1", "old-prompt$ "))
    await device.send_str(message("command_response", "k1", "old-listing"))
    await device.send_str(message("disconnect", "k1", {"status_code": "200", "status_msg": "old shell ended"}))
    await device.send_str(message("command_response", "device", "the device's own"))
    got = await receive_json(new)
    assert (got["request_id"], got["data"]) == ("device", "the device's own")
    await new.send_str(message("connect", "c2", {"username": "u", "password": "p"}))
    told = await receive_json(device)
    assert told["operation_type"] == "disconnect"   # the old source's session is over
    assert (await receive_json(device))["request_id"] == "c2"
    await device.send_str(message("connect_response", "c2", {"status_code": "200", "status_msg": "ok"}))
    assert (await receive_json(new))["request_id"] == "c2"


async def test_peer_leaving_is_told_and_the_other_side_stays(tunnel):
    source, device = await tunnel.pair()
    await device.close()
    got = await receive_json(source)
    assert got["data"] == {"status_code": "499", "status_msg": "the device disconnected"}
    assert not source.closed
    for _ in range(50):
        if (await tunnel.info())["device_connect_state"]["status"] == "DISCONNECTED":
            break
        await asyncio.sleep(0.02)
    assert (await tunnel.info())["device_connect_state"]["status"] == "DISCONNECTED"
    # the device comes back: the source is told again
    device = await tunnel.connect("device")
    assert (await receive_json(source))["operation_type"] == "connect_tunnel"


@pytest.mark.parametrize("how, status_code, close_code", [
    ("close", "410", 1000),
    ("expire", "408", 1000),
])
async def test_closing_or_expiry_ends_both_sockets_at_once(relay, tunnel_factory, how, status_code, close_code):
    tunnel = await tunnel_factory(expires_in=60)
    source, device = await tunnel.pair()
    if how == "close":
        assert (await relay.call("PUT", f"{BASE}/{tunnel.tunnel_id}"))[0] == 204
    else:
        relay.clock.advance(61)  # the sweeper notices within its interval
    for ws in (source, device):
        got = await receive_json(ws)
        assert got["operation_type"] == "disconnect" and got["data"]["status_code"] == status_code
        assert (await receive_close(ws))[0] == close_code


async def test_rotating_a_side_ends_its_socket_and_old_token(relay, tunnel):
    source, device = await tunnel.pair()
    status, body = await relay.call("POST", f"{BASE}/{tunnel.tunnel_id}/rotate-token", json={"side": "device"})
    assert status == 200
    got = await receive_json(device)
    assert got["data"]["status_code"] == "401"
    assert (await receive_close(device))[0] == 4001
    assert (await receive_json(source))["data"]["status_code"] == "499"
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await tunnel.connect("device")
    assert err.value.status == 401
    device = await tunnel.connect("device", token=body["device_access_token"])
    assert (await receive_json(source))["operation_type"] == "connect_tunnel"


async def test_shutdown_tells_every_socket(relay_factory, tunnel_factory, session):
    relay = await relay_factory()
    tunnel = await tunnel_factory(relay_=relay)
    source, device = await tunnel.pair()
    shutdown = asyncio.create_task(relay.client.server.app.shutdown())
    for ws in (source, device):
        got = await receive_json(ws)
        assert got["data"]["status_code"] == "503"
        assert (await receive_close(ws))[0] == 1001
    await shutdown


# -- keepalive and backpressure ------------------------------------------------------------------

async def test_silent_connections_are_dropped(relay_factory, tunnel_factory):
    relay = await relay_factory(heartbeat_interval=0.1)
    tunnel = await tunnel_factory(relay_=relay)
    port = relay.settings.port
    source = await tunnel.connect("source")
    # aiohttp answers pings while something reads: keep reading, so the source stays
    inbox: asyncio.Queue = asyncio.Queue()

    async def read_source() -> None:
        while True:
            msg = await source.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            inbox.put_nowait(orjson.loads(msg.data))

    reader = asyncio.create_task(read_source())

    def silent_device() -> bytes:
        sock = _raw_handshake("127.0.0.1", port, f"/v5/iot/tunnels/{tunnel.tunnel_id}/device-connect",
                              ["Host: x", f"tunnel_access_token: {tunnel.device_token}"])
        with sock:
            _read_response_head(sock)
            sock.settimeout(5)
            data = b""
            while True:  # never answer: read until the relay gives up on us
                chunk = sock.recv(65536)
                if not chunk:
                    return data
                data += chunk

    data = await asyncio.to_thread(silent_device)
    assert b"\x89" in data  # it was pinged before being dropped
    assert b'"504"' in data
    assert (await asyncio.wait_for(inbox.get(), 5))["operation_type"] == "connect_tunnel"
    assert (await asyncio.wait_for(inbox.get(), 5))["data"]["status_code"] == "499"
    await source.send_str(message("ping", "still-here"))
    assert (await asyncio.wait_for(inbox.get(), 5))["operation_type"] == "pong"
    await source.close()
    await reader


async def test_slow_reader_backpressure_bounds_memory_and_loses_nothing(relay, tunnel):
    """The source stops reading; the device keeps sending. The relay must stop reading the
    device (so the device's sends stall) instead of buffering without bound, then deliver
    every message once the source reads again."""
    source, device = await tunnel.pair()
    hub = relay.client.server.app[__import__("relay.web.sockets", fromlist=["HUB"]).HUB]
    pairing = hub.pairings[tunnel.tunnel_id]
    relay_to_source = pairing.ends[__import__("relay.model", fromlist=["Side"]).Side.SOURCE].transport
    payload = "z" * 9000
    sent = 0
    max_buffer = 0

    async def flood() -> None:
        nonlocal sent, max_buffer
        for i in range(2000):  # bounded: 2000 x 9 KB = 18 MB offered
            await device.send_str(message("command_response", f"r{i}", payload))
            sent += 1
            max_buffer = max(max_buffer, relay_to_source.get_write_buffer_size())

    # aiohttp's client reads into its own queue; stop it reading by pausing its transport.
    source._response.connection.transport.pause_reading()
    flooding = asyncio.create_task(flood())
    await asyncio.sleep(1.0)
    stalled_at = sent
    assert stalled_at < 2000, "the device was never slowed down"
    assert max_buffer <= 256 * 1024 + 512 * 1024  # the high-water mark plus what one read can add
    source._response.connection.transport.resume_reading()
    received = 0
    while received < 2000:
        msg = await source.receive(timeout=10)
        assert orjson.loads(msg.data)["request_id"] == f"r{received}"
        received += 1
    await flooding


async def test_aiohttp_lets_go_of_upgraded_connections(relay, tunnel):
    """After the upgrade the relay owns the socket; aiohttp keeps no per-connection state."""
    server = relay.client.server.runner.server
    before = len(server.connections)
    source, device = await tunnel.pair()
    await asyncio.sleep(0.05)
    assert len(server.connections) == before
    hub = relay.client.server.app[__import__("relay.web.sockets", fromlist=["HUB"]).HUB]
    ends = hub.pairings[tunnel.tunnel_id].ends.values()
    assert all(end.transport.get_protocol() is end for end in ends)
    # and the pair still works
    await source.send_str(message("command", "c1", "x"))
    assert orjson.loads((await device.receive(timeout=5)).data)["data"] == "x"


async def test_connections_per_address_can_be_limited(relay_factory, tunnel_factory):
    relay = await relay_factory(max_connections_per_address=3)
    first = await tunnel_factory("dev-a", relay_=relay)
    second = await tunnel_factory("dev-b", relay_=relay)
    await first.pair()
    extra = await second.connect("device")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await second.connect("source")
    assert err.value.status == 429
    await extra.close()  # a connection that goes frees its place
    for _ in range(50):
        hub = relay.client.server.app[__import__("relay.web.sockets", fromlist=["HUB"]).HUB]
        if sum(hub.per_address.values()) == 2:
            break
        await asyncio.sleep(0.02)
    source = await second.connect("source")
    await source.send_str(message("ping", "p"))
    assert (await receive_json(source))["operation_type"] == "pong"


async def test_socket_buffer_bounds_the_kernel_buffers_of_tunnel_sockets(relay_factory, tunnel_factory):
    from relay.web.sockets import HUB
    relay = await relay_factory(socket_buffer=65536)
    tunnel = await tunnel_factory(relay_=relay)
    await tunnel.pair()
    ends = relay.client.server.app[HUB].local_ends()
    assert len(ends) == 2
    for end in ends:
        sock = end.transport.get_extra_info("socket")
        # Linux reports twice what was set (it counts its bookkeeping); autotuning is then off.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536


async def test_an_sdk_devices_oversized_output_reaches_the_source_in_pieces_and_the_device_stays(tunnel):
    """Huawei's device SDK sends each 2048-byte read of terminal output as one message, escaped
    by cJSON: control-dense output makes ~12.4 KB. The relay splits it within the limit."""
    from tests.sdk_device import cjson_print, cjson_string
    source, device = await tunnel.pair()
    await source.send_str(message("command", "cmd-1", "cat big\n"))
    assert (await receive_json(device))["request_id"] == "cmd-1"
    reads = [b"\x1b" * 2048, b"\x01\x02" * 1024, b"tail\r\n$ "]
    sent = [cjson_print([("operation_type", "command_response"), ("tunnel_service_type", "ssh"),
                         ("request_id", "cmd-1"), ("data", cjson_string(read))]) for read in reads]
    assert [len(m) > 10240 for m in sent] == [True, True, False]
    for text in sent:
        await device.send_str(text)
    got = []
    while "".join(m["data"] for m in got) != b"".join(reads).decode():
        msg = await source.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        assert len(msg.data.encode()) <= 10240
        got.append(orjson.loads(msg.data))
    assert {(m["operation_type"], m["request_id"]) for m in got} == {("command_response", "cmd-1")}
    assert len(got) == 5
    # the device kept its connection: later commands still reach it
    await source.send_str(message("command", "cmd-2", "echo more\n"))
    assert (await receive_json(device))["request_id"] == "cmd-2"
    assert (await tunnel.info())["device_connect_state"]["status"] == "CONNECTED"
    # beyond the ceiling the rule of every message holds
    await device.send_str(message("command_response", "cmd-2", "\x1b" * 2800))
    assert (await receive_close(device))[0] == 1009
