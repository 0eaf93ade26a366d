"""Fixtures for the data plane: a running relay, a tunnel, and real WebSocket clients."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import orjson
import pytest


@dataclasses.dataclass
class Tunnel:
    relay: Any
    tunnel_id: str
    source_token: str
    device_token: str
    source_url: str
    device_url: str
    session: aiohttp.ClientSession
    opened: list = dataclasses.field(default_factory=list)

    async def connect(self, side: str, token: str | None = None, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        url = self.source_url if side == "source" else self.device_url
        token = token if token is not None else (self.source_token if side == "source" else self.device_token)
        headers = kwargs.pop("headers", {"tunnel_access_token": token})
        ws = await self.session.ws_connect(url, headers=headers, autoclose=False, max_msg_size=0, **kwargs)
        self.opened.append(ws)
        return ws

    async def pair(self) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]:
        """Connect both sides; returns (source, device) once the source has `connect_tunnel`."""
        source = await self.connect("source")
        device = await self.connect("device")
        hello = await receive_json(source)
        assert hello["operation_type"] == "connect_tunnel"
        return source, device

    async def info(self) -> dict:
        status, body = await self.relay.call("GET", f"/v5/iot/proj-a/tunnels/{self.tunnel_id}")
        assert status == 200
        return body


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return orjson.loads(msg.data)


async def receive_close(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> tuple[int, str]:
    """Skip to the close frame and return (code, reason)."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code or msg.data, msg.extra or ""


def message(op: str, request_id: str, data: Any = None, **extra: Any) -> str:
    body = {"operation_type": op, "tunnel_service_type": "ssh", "request_id": request_id, **extra}
    if data is not None:
        body["data"] = data
    return orjson.dumps(body).decode()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def tunnel_factory(relay, session):
    made: list[Tunnel] = []

    async def make(device_id: str = "dev-1", relay_=None, **fields: Any) -> Tunnel:
        r = relay_ or relay
        body = await r.create(device_id, **fields)
        tunnel = Tunnel(r, body["tunnel_id"], body["tunnel_access_token"], body["device_access_token"],
                        body["tunnel_uri"], body["device_tunnel_uri"], session)
        made.append(tunnel)
        return tunnel

    yield make
    for tunnel in made:
        for ws in tunnel.opened:
            await ws.close()


@pytest.fixture
async def tunnel(tunnel_factory) -> Tunnel:
    return await tunnel_factory()
