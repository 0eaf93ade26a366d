"""Who may open a bridge between replicas (issue 15, finding 9). A bridge's traffic goes to the
source unchecked (the device's replica checked it), so a bridge request must come from a
replica: a credential made for that one bridge with a secret the replicas share and Redis
never holds, used once, before it expires, by the holder of the device end's lease.

Two replicas in this process sharing the session's Redis (the fixture of test_bridge_window)."""

from __future__ import annotations

import asyncio
import math
import secrets
import uuid

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from relay.cluster import BridgeClaim, bridge_credential, bridge_refusal
from relay.errors import ConfigError
from relay.model import Side
from relay.store.redis import RedisStore
from relay.web import bridge as bridge_module
from relay.web.app import create_app
from tests.scale.conftest import BRIDGE_SECRET
from tests.scale.test_bridge_window import Replica, _claimed, huawei_ws, replicas, until  # noqa: F401

pytestmark = pytest.mark.timeout(60)


async def bridge_request(replica: Replica, headers: dict[str, str]) -> tuple[int, bytes]:
    """A raw bridge request to the replica's internal port: (status, the whole answer's head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.internal.port)
    lines = [f"GET {bridge_module.BRIDGE_PATH} HTTP/1.1", f"Host: 127.0.0.1:{replica.internal.port}",
             "Connection: Upgrade", "Upgrade: relay-bridge", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), head


async def raw_request(replica: Replica, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.internal.port)
    writer.write(request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1])


async def bridged_tunnel(session, a: Replica, b: Replica):  # type: ignore[no-untyped-def]
    """A tunnel with its source on A and its device on B, bridged: (tunnel_id, source epoch, the two ends)."""
    body = await a.create(device_id=f"dev-{uuid.uuid4().hex[:8]}")
    tunnel_id = body["tunnel_id"]
    source = await huawei_ws(session, a, tunnel_id, "source", body["tunnel_access_token"])
    await until(lambda: _claimed(a, tunnel_id, Side.SOURCE), "the source's lease")
    device = await huawei_ws(session, b, tunnel_id, "device", body["device_access_token"])
    hello = orjson.loads((await source.receive(timeout=15)).data)
    assert hello["operation_type"] == "connect_tunnel"
    await until(lambda: isinstance(a.hub.pairings[tunnel_id].ends[Side.DEVICE], bridge_module.BridgeEnd),
                "the bridge", timeout=15)
    return tunnel_id, a.hub.pairings[tunnel_id].ends[Side.SOURCE].claim.result(), (source, device)


def forged_headers(tunnel_id: str, source_epoch: int, value: str) -> dict[str, str]:
    """A bridge request for a real tunnel from a replica that does not exist, with `value` in
    every place a secret or credential could go."""
    return {"X-Relay-Secret": value, "X-Relay-Credential": value, "X-Relay-Tunnel": tunnel_id,
            "X-Relay-Side": "device", "X-Relay-Epoch": "999999", "X-Relay-Peer-Epoch": str(source_epoch),
            "X-Relay-Replica": "intruder", "X-Relay-Address": "127.0.0.1:9", "X-Relay-Expires": "9999999999",
            "X-Relay-Nonce": "00"}


async def redis_values(url: str) -> set[str]:
    client = aioredis.from_url(url, decode_responses=True)
    found: set[str] = set()
    try:
        async for key in client.scan_iter(count=1000):
            found.add(key)
            kind = await client.type(key)
            if kind == "string":
                found.add(await client.get(key) or "")
            elif kind == "hash":
                found.update((await client.hgetall(key)).values())
    finally:
        await client.aclose()
    return {v for v in found if v}


async def test_what_redis_holds_opens_no_bridge(replicas, redis_server):
    a, b = await replicas("auth-a"), await replicas("auth-b")
    async with aiohttp.ClientSession() as session:
        tunnel_id, source_epoch, ends = await bridged_tunnel(session, a, b)
        values = await redis_values(redis_server.url)
        for value in sorted(values):
            if "\r" in value or "\n" in value or len(value) > 4000:
                continue
            status, head = await bridge_request(a, forged_headers(tunnel_id, source_epoch, value))
            assert status == 403, (value[:80], head)
        assert BRIDGE_SECRET not in values and not any("bridge-secret" in v for v in values)
        # the real bridge is untouched
        assert isinstance(a.hub.pairings[tunnel_id].ends[Side.DEVICE], bridge_module.BridgeEnd)
        for ws in ends:
            await ws.close()


async def test_a_bridge_credential_opens_one_bridge_once(replicas, monkeypatch):
    sent: list[bytes] = []

    class Recorder(bridge_module._UpgradeAnswer):
        def __init__(self, request: bytes) -> None:
            sent.append(request)
            super().__init__(request)

    monkeypatch.setattr(bridge_module, "_UpgradeAnswer", Recorder)
    a, b = await replicas("once-a"), await replicas("once-b")
    async with aiohttp.ClientSession() as session:
        tunnel_id, _, ends = await bridged_tunnel(session, a, b)
        # someone who saw the request on the wire plays it again
        assert await raw_request(a, sent[-1]) == 403
        assert b"X-Relay-Credential: " in sent[-1] and BRIDGE_SECRET.encode() not in sent[-1]
        assert isinstance(a.hub.pairings[tunnel_id].ends[Side.DEVICE], bridge_module.BridgeEnd)
        for ws in ends:
            await ws.close()


async def test_expired_foreign_or_misdirected_credentials_are_refused(replicas):
    a, b = await replicas("dir-a"), await replicas("dir-b")
    async with aiohttp.ClientSession() as session:
        tunnel_id, source_epoch, ends = await bridged_tunnel(session, a, b)
        device_lease = await b.hub.bridges.cluster.owner(tunnel_id, Side.DEVICE)
        now = a.hub.service.clock.now()

        def request(secret: str, expires: float, replica: str = device_lease.replica_id) -> dict[str, str]:
            claim = BridgeClaim(tunnel_id, replica, device_lease.address, device_lease.epoch, source_epoch,
                                math.ceil(expires), secrets.token_hex(16))
            return {"X-Relay-Tunnel": claim.tunnel_id, "X-Relay-Replica": claim.replica_id,
                    "X-Relay-Address": claim.address, "X-Relay-Epoch": str(claim.epoch),
                    "X-Relay-Peer-Epoch": str(claim.peer_epoch), "X-Relay-Expires": str(claim.expires),
                    "X-Relay-Nonce": claim.nonce, "X-Relay-Credential": bridge_credential(secret, claim)}

        status, head = await bridge_request(a, request(BRIDGE_SECRET, now - 1))
        assert status == 403
        status, _ = await bridge_request(a, request(BRIDGE_SECRET, now + 3600))   # too far ahead
        assert status == 403
        status, _ = await bridge_request(a, request("another-relay-s-secret-0123456789abcdef", now + 20))
        assert status == 403
        status, _ = await bridge_request(a, {k: v for k, v in request(BRIDGE_SECRET, now + 20).items()
                                             if k != "X-Relay-Nonce"})
        assert status == 403
        # right secret, but the replica named does not hold the device end
        status, _ = await bridge_request(a, request(BRIDGE_SECRET, now + 20, replica="dir-c"))
        assert status == 404
        assert isinstance(a.hub.pairings[tunnel_id].ends[Side.DEVICE], bridge_module.BridgeEnd)
        for ws in ends:
            await ws.close()


def test_credentials_bind_every_field():
    claim = BridgeClaim("t1", "r1", "10.0.0.1:8081", 3, 2, 1_000_030, "ab")
    good = bridge_credential("s" * 32, claim)
    assert bridge_refusal("s" * 32, claim, good, 1_000_000) is None
    for field, value in (("tunnel_id", "t2"), ("replica_id", "r2"), ("address", "10.0.0.2:8081"), ("epoch", 4),
                         ("peer_epoch", 1), ("expires", 1_000_031), ("nonce", "ac")):
        changed = BridgeClaim(**{**{f: getattr(claim, f) for f in claim.__dataclass_fields__}, field: value})
        assert bridge_refusal("s" * 32, changed, good, 1_000_000) == "not a replica of this relay", field
    assert "expired" in bridge_refusal("s" * 32, claim, good, 1_000_030)
    assert "no bridge secret" in bridge_refusal("", claim, good, 1_000_000)


async def test_replicas_refuse_to_start_without_a_bridge_secret(settings_factory, redis_server):
    for secret in ("", "too-short"):
        settings = settings_factory(store_url=redis_server.url, internal_port=1, bridge_secret=secret)
        store = RedisStore(redis_server.url, prefix=f"nosecret-{uuid.uuid4().hex[:8]}:")
        try:
            with pytest.raises(ConfigError, match="--bridge-secret-file"):
                create_app(settings, store=store)
        finally:
            await store.aclose()
