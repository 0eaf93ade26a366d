"""Three replicas sharing Redis, behind haproxy: any replica takes any request or socket."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import orjson
import pytest

from tests.dataplane.conftest import message

pytestmark = pytest.mark.timeout(120)


async def ws(session: aiohttp.ClientSession, base: str, tunnel_id: str, side: str, token: str):
    url = base.replace("http://", "ws://") + f"/v5/iot/tunnels/{tunnel_id}/{side}-connect"
    return await session.ws_connect(url, headers={"tunnel_access_token": token}, autoclose=False, heartbeat=None)


async def receive(sock: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> aiohttp.WSMessage:
    """The next message, within `timeout` seconds. asyncio's timeout, not aiohttp's: aiohttp
    starts its own again after every ping it answers, so against a replica that pings it may
    never expire."""
    async with asyncio.timeout(timeout):
        return await sock.receive()


async def next_json(sock, timeout: float = 10) -> dict:
    msg = await receive(sock, timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return orjson.loads(msg.data)


async def close_code(sock, timeout: float = 10) -> int:
    while True:
        msg = await receive(sock, timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return sock.close_code


def create(rig, base: str, device: str) -> dict:
    status, body = rig.call(base, "POST", "/v5/iot/p1/tunnels", {"device_id": device})
    assert status == 201, body
    return body


async def split_pair(session, rig, source_replica, device_replica, device="dev-1"):
    body = create(rig, rig.replicas[0].base, device)
    source = await ws(session, source_replica.base, body["tunnel_id"], "source", body["tunnel_access_token"])
    device_ws = await ws(session, device_replica.base, body["tunnel_id"], "device", body["device_access_token"])
    hello = await next_json(source)
    assert hello["operation_type"] == "connect_tunnel"
    return body, source, device_ws


async def test_ends_on_different_replicas_relay_byte_exact_both_ways(rig):
    r1, r2, _ = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        down = [message("command", f"c{i}", "x" * (i * 37 % 9000)) for i in range(500)]
        up = [message("command_response", f"c{i}", "y" * (i * 53 % 9000)) for i in range(500)]

        async def send(sock, items):
            for item in items:
                await sock.send_str(item)

        async def recv(sock, n):
            return [(await receive(sock)).data for _ in range(n)]

        got = await asyncio.gather(send(source, down), send(device, up), recv(device, 500), recv(source, 500))
        assert got[2] == down and got[3] == up
        # the connection states are shared
        status, info = rig.call(rig.replicas[2].base, "GET", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")
        assert info["source_connect_state"]["status"] == "CONNECTED"
        assert info["device_connect_state"]["status"] == "CONNECTED"
        await source.close()
        await device.close()


async def test_through_haproxy_round_robin(rig):
    lb = rig.start_lb()
    async with aiohttp.ClientSession() as session:
        for n in range(6):  # round robin puts the ends of most of these on different replicas
            body = create(rig, lb.base, f"lb-{n}")
            source = await ws(session, lb.base, body["tunnel_id"], "source", body["tunnel_access_token"])
            device = await ws(session, lb.base, body["tunnel_id"], "device", body["device_access_token"])
            assert (await next_json(source))["operation_type"] == "connect_tunnel"
            await source.send_str(message("command", "q", "uname -a"))
            assert orjson.loads((await receive(device)).data)["data"] == "uname -a"
            await device.send_str(message("command_response", "q", "Linux"))
            assert (await next_json(source))["data"] == "Linux"
            await source.close()
            await device.close()


async def test_eviction_across_replicas(rig):
    r1, r2, r3 = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, old = await split_pair(session, rig, r1, r2)
        new = await ws(session, r3.base, body["tunnel_id"], "device", body["device_access_token"])
        got = await next_json(old)
        assert got["operation_type"] == "disconnect" and got["data"]["status_code"] == "409"
        assert await close_code(old) == 4000
        # the source hears the device is there again, and talks to the new one
        while (msg := await next_json(source))["operation_type"] != "connect_tunnel":
            assert msg["operation_type"] == "disconnect"
        await source.send_str(message("command", "after", "id"))
        assert orjson.loads((await receive(new)).data)["request_id"] == "after"
        status, info = rig.call(r1.base, "GET", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")
        assert info["device_connect_state"]["status"] == "CONNECTED"  # the stale replica did not undo it
        await source.close()
        await new.close()


async def test_close_through_a_third_replica_ends_both(rig):
    r1, r2, r3 = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        status, _ = rig.call(r3.base, "PUT", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")
        assert status == 204
        for sock in (source, device):
            while (msg := await next_json(sock))["data"]["status_code"] != "410":
                assert msg["operation_type"] == "disconnect"
            assert await close_code(sock) == 1000


async def test_sigterm_drains_and_the_device_comes_back_elsewhere(rig):
    r1, r2, r3 = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        r2.signal(signal.SIGTERM)
        got = await next_json(device)
        assert got["data"]["status_code"] == "503"
        assert await close_code(device) == 1001
        assert (await next_json(source))["data"]["status_code"] == "499"
        assert await asyncio.to_thread(r2.wait) == 0   # the loop goes on answering the replicas
        device = await ws(session, r3.base, body["tunnel_id"], "device", body["device_access_token"])
        assert (await next_json(source))["operation_type"] == "connect_tunnel"
        # the source speaks first, as the protocol has it: connect_tunnel comes from the source's
        # replica, and the device's replica may still be linking its end of the bridge
        await source.send_str(message("command", "x", "echo back"))
        assert (await next_json(device))["data"] == "echo back"
        await device.send_str(message("command_response", "x", "back"))
        assert (await next_json(source))["data"] == "back"
        await source.close()
        await device.close()


async def test_sigkill_of_a_replica_is_noticed_by_the_other_end(rig):
    r1, r2, _ = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        r2.signal(signal.SIGKILL)
        got = await next_json(source, timeout=20)
        assert got["data"]["status_code"] == "499"
        await asyncio.to_thread(r2.wait)
        await source.close()
        await device.close()


async def test_redis_restart(rig):
    r1, r2, r3 = rig.replicas
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        rig.redis.stop()
        # tunnel data never passes through Redis: the pair keeps working while it is down
        await source.send_str(message("command", "during", "ls"))
        assert orjson.loads((await receive(device)).data)["request_id"] == "during"
        status, err = rig.call(r3.base, "GET", "/v5/iot/p1/tunnels")
        assert status == 503 and err["error_code"] == "TUNNEL.503000"
        # what happens meanwhile is kept for the audit trail, and written once Redis is back
        await device.close()
        rig.redis.start()
        for _ in range(50):
            status, info = rig.call(r3.base, "GET", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200 and info["status"] == "OPEN"  # kept in Redis's append-only file
        path = f"/v5/iot/p1/audit?tunnel_id={body['tunnel_id']}&event_type=device_disconnected"
        for _ in range(100):   # the writer retries with a backoff of at most 10 s
            status, trail = rig.call(r1.base, "GET", path)
            if status == 200 and trail["count"]:
                break
            await asyncio.sleep(0.3)
        assert status == 200 and [e["actor"] for e in trail["events"]] == ["device"]
        create(rig, r3.base, "after-restart")
        device = await ws(session, r2.base, body["tunnel_id"], "device", body["device_access_token"])
        while (await next_json(source))["operation_type"] != "connect_tunnel":
            pass   # the disconnect of the device's first connection comes first
        await source.send_str(message("command", "after", "ls"))
        assert orjson.loads((await receive(device)).data)["request_id"] == "after"
        await source.close()
        await device.close()


async def test_a_dead_replica_costs_the_next_upgrade_through_haproxy_nothing(rig):
    """Until the health checks mark a killed replica down (a second or two), haproxy still
    picks it; the shipped config then retries the request on another replica at once, so
    the client's first try succeeds (without it: 3 s of retries on the dead one, then 503)."""
    lb = rig.start_lb()
    victim = rig.replicas[1]
    for _ in range(3):   # a round only proves something if haproxy picked the dead replica
        for _ in range(100):
            if all(lb.stats()[f"relays/{r.name}"]["status"] == "UP" for r in rig.replicas):
                break
            await asyncio.sleep(0.2)
        bodies = [create(rig, lb.base, f"after-kill-{n}") for n in range(3)]
        before = int(lb.stats()["relays/BACKEND"]["wredis"])
        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait)
        async with aiohttp.ClientSession() as session:
            for body in bodies:   # round robin: one of any three requests is for the dead replica
                source = await ws(session, lb.base, body["tunnel_id"], "source", body["tunnel_access_token"])
                await source.close()
        for body in bodies:
            assert rig.call(lb.base, "PUT", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")[0] == 204
        if int(lb.stats()["relays/BACKEND"]["wredis"]) > before:
            return   # the dead replica was picked, and the upgrade went to another one
        victim.start()   # the health checks were quicker this time: once more
    pytest.fail("haproxy never picked the killed replica before its health checks marked it down")
