"""Prometheus metrics on the internal port."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer

from relay.web.app import create_internal_app
from tests.dataplane.conftest import message, receive_close, receive_json


def sample(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{inner}}}" if labels else name) + r" (\S+)"
    found = re.search(f"^{pattern}$", text, re.M)
    assert found, f"{name} {labels} missing from:\n{text}"
    return float(found.group(1))


async def test_metrics_follow_the_data_plane(relay, tunnel):
    internal = TestClient(TestServer(create_internal_app(relay.client.server.app), host="127.0.0.1"))
    await internal.start_server()
    try:
        source, device = await tunnel.pair()
        for i in range(3):
            await source.send_str(message("command", f"c{i}", "ls"))
            await device.receive(timeout=5)
        await device.send_str(message("command_response", "c0", "out"))
        await source.receive(timeout=5)
        text = await (await internal.get("/metrics")).text()
        assert sample(text, "relay_connections", protocol="huawei", side="source") == 1
        assert sample(text, "relay_connections", protocol="huawei", side="device") == 1
        assert sample(text, "relay_tunnels_paired") == 1
        assert sample(text, "relay_messages_total", protocol="huawei", side="source") == 3
        assert sample(text, "relay_messages_total", protocol="huawei", side="device") == 1
        assert sample(text, "relay_message_bytes_total", protocol="huawei", side="source") == 3 * len(message("command", "c0", "ls"))
        assert sample(text, "relay_tunnels", status="OPEN") == 1

        await tunnel.connect("device")            # evicts the first device: 4000
        await receive_json(device)
        assert (await receive_close(device))[0] == 4000
        await source.send_str("not json")         # rejected: 4400
        assert (await receive_close(source))[0] == 4400
        text = await (await internal.get("/metrics")).text()
        assert sample(text, "relay_closes_total", code="4000") == 1
        assert sample(text, "relay_closes_total", code="4400") == 1
        assert sample(text, "relay_connections", protocol="huawei", side="source") == 0
        assert sample(text, "relay_messages_total", protocol="huawei", side="source") == 3  # nothing lost from the count
        assert (await internal.get("/readyz")).status == 200
        assert (await internal.get("/livez")).status == 200
    finally:
        await internal.close()
