"""The relay's JSON logs for AWS tunnels: each connection is logged with its tunnel, side and
subprotocol, each reset the relay sends with its tunnel, side and why, and no access token or
client token appears anywhere in them."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.aws.conftest import new_client_token, upgrade_headers
from tests.aws.spec_client import V3, Msg, connect, open_stream, reset_of
from tests.test_serve import TOKEN, Served


def test_json_logs_of_aws_tunnels_carry_tunnel_and_side_and_no_secret(tmp_path):
    relay = Served(tmp_path, "--db", "relay.db", "--log-format", "json", env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    client_tokens = [new_client_token(), new_client_token()]
    try:
        status, created = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "dev-aws", "protocol": "aws",
                                                                         "services": ["SSH"]})
        assert status == 201, created

        async def pair() -> None:
            async with aiohttp.ClientSession() as session:
                source = await connect(session, relay.base, created["source_access_token"], "source",
                                       client_token=client_tokens[0])
                destination = await connect(session, relay.base, created["destination_access_token"], "destination",
                                            client_token=client_tokens[1])
                for end in (source, destination):
                    assert (await end.recv()).type == 5   # SERVICE_IDS: both are connected
                # a refused token is logged without the token either
                async with session.get(relay.base + "/tunnel?local-proxy-mode=source",
                                       headers=upgrade_headers(**{"access-token": "not-a-token-" + client_tokens[0],
                                                               "Sec-WebSocket-Protocol": V3})) as refused:
                    assert refused.status == 401
                await open_stream(source, destination)
                await destination.ws.close()
                assert await source.recv() == reset_of(1)
                await source.send(Msg(2, stream_id=2, service_id="SSH", connection_id=1))   # alone: answered
                assert await source.recv() == reset_of(2)
                await source.ws.close()

        asyncio.run(pair())
        status, rotated = relay.call("POST", f"/v5/iot/p1/tunnels/{created['tunnel_id']}/rotate-token",
                                     body={"side": "source"})
        assert status == 200 and rotated is not None, rotated
        relay.call("PUT", f"/v5/iot/p1/tunnels/{created['tunnel_id']}")
    finally:
        log = relay.stop()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    connected = [r for r in records if r["message"] == "connected"]
    assert {(r["tunnel_id"], r["side"], r["protocol"]) for r in connected} == {
        (created["tunnel_id"], "source", V3), (created["tunnel_id"], "device", V3)}
    resets = [(r["tunnel_id"], r["side"], r["reason"], r["resets"]) for r in records if r["level"] == "INFO"
              and r["message"] in ("reset the streams of the end that stays", "answered a stream with a reset")]
    assert resets == [
        (created["tunnel_id"], "source", "the destination left: it disconnected", "STREAM_RESET SSH/1/1"),
        (created["tunnel_id"], "source", "no destination is connected", "STREAM_RESET SSH/2/1")]
    secrets = [TOKEN, created["source_access_token"], created["destination_access_token"], *client_tokens]
    secrets.append(rotated["source_access_token"])
    for secret in secrets:
        assert secret not in log
