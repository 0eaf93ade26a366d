"""Shared fixtures: a relay app on a loopback port with a clock the test controls."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from relay.clock import ManualClock
from relay.config import ApiKey, Settings
from relay.web.app import create_app
from tests import leaks

leaks.install()   # a ResourceWarning for a transport names the test that opened it

TOKEN_A = "token-of-project-a-0123456789"
TOKEN_A2 = "second-token-of-project-a-xyz"
TOKEN_B = "token-of-project-b-9876543210"
API_KEYS = (ApiKey("proj-a", "alice", TOKEN_A), ApiKey("proj-a", "ci", TOKEN_A2), ApiKey("proj-b", "bob", TOKEN_B))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran relay processes (the rig of tests/scale) shows the end of each
    one's log beside its traceback: a failure in CI is then read, not guessed."""
    outcome = yield
    report = outcome.get_result()
    rig = getattr(item, "funcargs", {}).get("rig")
    if report.failed and rig is not None and hasattr(rig, "log_tails"):
        report.sections.append(("relay logs", rig.log_tails()))


@dataclasses.dataclass
class Relay:
    client: TestClient
    clock: ManualClock
    settings: Settings

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def call(self, method: str, path: str, *, token: str | None = TOKEN_A, json: Any = None,
                   headers: dict[str, str] | None = None, data: Any = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["X-Auth-Token"] = token
        async with self.client.request(method, path, json=json, data=data, headers=hdrs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, body

    async def create(self, device_id: str = "dev-1", project: str = "proj-a", token: str = TOKEN_A, **fields: Any) -> dict:
        status, body = await self.call("POST", f"/v5/iot/{project}/tunnels", token=token,
                                       json={"device_id": device_id, **fields})
        assert status == 201, body
        return body


@pytest.fixture
def settings_factory(tmp_path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base = dict(db=str(tmp_path / "relay.db"), api_keys=API_KEYS, sweep_interval=0.05,
                    heartbeat_interval=5.0)
        base.update(overrides)
        return Settings(**base)
    return make


@pytest.fixture
async def relay_factory(settings_factory) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient] = []

    async def start(clock: ManualClock | None = None, host: str = "127.0.0.1", **overrides: Any) -> Relay:
        clock = clock or ManualClock()
        port = unused_port()  # known before the app is built, so tunnel_uri names it
        settings = settings_factory(port=port, **overrides)
        server = TestServer(create_app(settings, clock=clock), host=host, port=port)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Relay(client, clock, settings)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def relay(relay_factory) -> Relay:
    return await relay_factory()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.servers import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
