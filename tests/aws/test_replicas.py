"""AWS-protocol tunnels across replicas sharing Redis (the rig of tests/scale): ends on
different replicas are bridged like Huawei ones, token lookups and client-token claims are
shared."""

from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest

from tests.aws.conftest import new_client_token, upgrade_headers
from tests.aws.helpers import bridged_stream
from tests.aws.spec_client import DATA, SERVICE_IDS, V3, Msg, connect, reset_of
from tests.scale.conftest import rig  # noqa: F401  (three replicas and Redis)

pytestmark = pytest.mark.timeout(120)


def create(rig, base: str, device: str) -> dict:  # noqa: F811
    status, body = rig.call(base, "POST", "/v5/iot/p1/tunnels", {"device_id": device, "protocol": "aws",
                                                                 "services": ["SSH"]})
    assert status == 201, body
    return body


async def test_ends_on_different_replicas(rig):  # noqa: F811
    r1, r2, r3 = rig.replicas
    body = create(rig, r3.base, "thing-1")
    async with aiohttp.ClientSession() as session:
        source = await connect(session, r1.base, body["source_access_token"], "source")
        client_token = new_client_token()
        destination = await connect(session, r2.base, body["destination_access_token"], "destination",
                                    client_token=client_token)
        for end in (source, destination):
            assert await end.recv(timeout=10) == Msg(SERVICE_IDS, available_service_ids=("SSH",))
        # The replicas bridge the ends once the destination's lease is known; until then the
        # source's replica answers a STREAM_START with STREAM_RESET (no peer). Try until it passes.
        stream = await bridged_stream(source, destination)
        up, down = os.urandom(300_000), os.urandom(200_000)
        for i in range(0, len(up), 60000):
            await source.send(Msg(DATA, stream_id=stream, service_id="SSH", connection_id=1,
                                  payload=up[i:i + 60000]))
        for i in range(0, len(down), 60000):
            await destination.send(Msg(DATA, stream_id=stream, service_id="SSH", connection_id=1,
                                       payload=down[i:i + 60000]))
        got_up = await destination.recv_data(len(up))
        assert hashlib.sha256(got_up[(stream, 1)]).digest() == hashlib.sha256(up).digest()
        got_down = await source.recv_data(len(down))
        assert hashlib.sha256(got_down[(stream, 1)]).digest() == hashlib.sha256(down).digest()
        # a second connection with the token, on a third replica: only with the client token
        async with session.get(f"{r3.base}/tunnel?local-proxy-mode=destination", headers=upgrade_headers(
                **{"access-token": body["destination_access_token"], "Sec-WebSocket-Protocol": V3})) as refused:
            assert refused.status == 401 and (await refused.json())["error_code"] == "TUNNEL.401001"
        again = await connect(session, r3.base, body["destination_access_token"], "destination",
                              client_token=client_token)
        assert (await again.recv(timeout=10)).type == SERVICE_IDS
        assert await destination.expect_close(timeout=10) == (4000, "replaced by a newer connection")
        assert await source.recv(timeout=10) == reset_of(stream)   # the streams of the replaced one are over
        await again.close()
        await source.close()
