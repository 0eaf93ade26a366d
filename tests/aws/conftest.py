"""Fixtures for AWS-protocol tunnels: a relay, aws tunnels, and spec clients."""

from __future__ import annotations

import base64
import dataclasses
import os
from typing import Any

import aiohttp
import pytest

from tests.aws.spec_client import V3, SpecClient, connect

BASE = "/v5/iot/proj-a/tunnels"


@dataclasses.dataclass
class AwsTunnel:
    relay: Any
    session: aiohttp.ClientSession
    body: dict
    opened: list = dataclasses.field(default_factory=list)

    @property
    def tunnel_id(self) -> str:
        return self.body["tunnel_id"]

    @property
    def source_token(self) -> str:
        return self.body["source_access_token"]

    @property
    def destination_token(self) -> str:
        return self.body["destination_access_token"]

    async def connect(self, mode: str, token: str | None = None, **kwargs: Any) -> SpecClient:
        if token is None:
            token = self.source_token if mode == "source" else self.destination_token
        client = await connect(self.session, self.relay.url, token, mode, **kwargs)
        self.opened.append(client)
        return client

    async def pair(self, protocols: tuple[str, ...] = (V3,)) -> tuple[SpecClient, SpecClient]:
        """Both ends connected, each past its SERVICE_IDS."""
        source = await self.connect("source", protocols=protocols, client_token=new_client_token())
        destination = await self.connect("destination", protocols=protocols, client_token=new_client_token())
        for end in (source, destination):
            assert (await end.recv()).type == 5   # SERVICE_IDS (ignorable for 1.0)
        return source, destination

    async def info(self) -> dict:
        status, body = await self.relay.call("GET", f"{BASE}/{self.tunnel_id}")
        assert status == 200, body
        return body


def new_client_token() -> str:
    return os.urandom(20).hex()   # 40 of [0-9a-f]: within ^[a-zA-Z0-9-]{32,128}$


def upgrade_headers(**extra: str) -> dict[str, str]:
    """A WebSocket upgrade request's headers, for requests the relay must refuse."""
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **extra}


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def aws_factory(relay, session):
    made: list[AwsTunnel] = []

    async def make(device_id: str = "dev-1", services: list[str] | None = None, relay_=None, **fields: Any) -> AwsTunnel:
        r = relay_ or relay
        body = await r.create(device_id, protocol="aws", services=services or ["SSH"], **fields)
        tunnel = AwsTunnel(r, session, body)
        made.append(tunnel)
        return tunnel

    yield make
    for tunnel in made:
        for client in tunnel.opened:
            await client.ws.close()


@pytest.fixture
async def aws_tunnel(aws_factory) -> AwsTunnel:
    return await aws_factory()
