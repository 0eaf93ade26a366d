"""Prometheus metrics of AWS tunnels: their connections, messages and bytes carry
`protocol="aws"`, next to the Huawei tunnels' series (tests/dataplane/test_metrics.py)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from relay.web.app import create_internal_app
from tests.aws.spec_client import DATA, STREAM_START, Msg
from tests.dataplane.test_metrics import sample


async def test_aws_connections_and_messages_are_counted_by_protocol(relay, aws_tunnel):
    internal = TestClient(TestServer(create_internal_app(relay.client.server.app), host="127.0.0.1"))
    await internal.start_server()
    try:
        source, destination = await aws_tunnel.pair()
        await source.send(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1))
        await destination.recv()
        for piece in (b"a" * 100, b"b" * 200):
            await source.send(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=piece))
        assert len((await destination.recv_data(300))[(1, 1)]) == 300
        await destination.send(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"c" * 50))
        await source.recv_data(50)

        text = await (await internal.get("/metrics")).text()
        assert sample(text, "relay_connections", protocol="aws", side="source") == 1
        assert sample(text, "relay_connections", protocol="aws", side="device") == 1
        assert sample(text, "relay_connections", protocol="huawei", side="source") == 0
        assert sample(text, "relay_messages_total", protocol="aws", side="source") == 3   # STREAM_START, 2 DATA
        assert sample(text, "relay_messages_total", protocol="aws", side="device") == 1
        assert sample(text, "relay_message_bytes_total", protocol="aws", side="source") == 300
        assert sample(text, "relay_messages_total", protocol="huawei", side="source") == 0

        await source.ws.close()
        await destination.ws.close()
        await destination.ws.receive()
        for _ in range(100):   # the relay sees both ends go, then the tunnel's counts are kept as retired
            text = await (await internal.get("/metrics")).text()
            if sample(text, "relay_connections", protocol="aws", side="device") == 0:
                break
            await asyncio.sleep(0.02)
        assert sample(text, "relay_connections", protocol="aws", side="source") == 0
        assert sample(text, "relay_messages_total", protocol="aws", side="source") == 3   # nothing lost from the count
        assert sample(text, "relay_message_bytes_total", protocol="aws", side="device") == 50
    finally:
        await internal.close()
