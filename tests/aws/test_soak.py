"""Resource bounds of the AWS endpoint, as tests/test_soak.py checks the Huawei ones: repeated
connect / stream / disconnect cycles, ending in every way a connection ends (closed by the
client, closed by the relay for a broken rule, replaced by a newer connection), leave the
relay process's memory flat and release every file descriptor."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port
from aiohttp.web_protocol import RequestHandler

from relay.web.app import create_app
from relay.web.server import ConnectionGuard
from tests.aws.conftest import new_client_token
from tests.aws.spec_client import DATA, SERVICE_IDS, STREAM_START, Msg, connect, raw_frame, reset_of
from tests.conftest import TOKEN_A
from tests.test_serve import TOKEN, Served

CYCLES_WARM, CYCLES = 60, 300


@pytest.mark.timeout(180)
def test_aws_cycles_leave_memory_and_descriptors_flat(tmp_path):
    # As in tests/test_soak.py: a small SQLite page cache fills during the warm-up (the audit
    # trail grows the file with every connection), so what grows after it is a leak.
    env = {"RELAY_API_TOKENS": f"p1:soak:{TOKEN}", "RELAY_LOG_LEVEL": "WARNING"}
    relay = Served(tmp_path, "--db", "relay.db", "--sqlite-cache-kib", "64", env=env)
    process = psutil.Process(relay.proc.pid)
    try:
        status, created = relay.call("POST", "/v5/iot/p1/tunnels",
                                     body={"device_id": "soak", "protocol": "aws", "services": ["SSH"]})
        assert status == 201, created
        # client tokens, so that the access tokens open a connection per cycle
        source_ct, destination_ct = new_client_token(), new_client_token()

        async def cycles(n: int, start: int) -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(start, start + n):
                    source = await connect(session, relay.base, created["source_access_token"], "source",
                                           client_token=source_ct)
                    destination = await connect(session, relay.base, created["destination_access_token"],
                                                "destination", client_token=destination_ct)
                    for end in (source, destination):
                        assert (await end.recv()).type == SERVICE_IDS
                    start_msg = Msg(STREAM_START, stream_id=i + 1, service_id="SSH", connection_id=1)
                    await source.send(start_msg, Msg(DATA, stream_id=i + 1, service_id="SSH", connection_id=1,
                                                     payload=b"x" * 2000))
                    assert await destination.recv() == start_msg
                    assert len((await destination.recv()).payload) == 2000
                    await destination.send(Msg(DATA, stream_id=i + 1, service_id="SSH", connection_id=1,
                                               payload=b"y" * 9000))
                    assert len((await source.recv()).payload) == 9000
                    ending = i % 3
                    if ending == 0:       # the client closes
                        await destination.close()
                        assert await source.recv() == reset_of(i + 1)
                    elif ending == 1:     # the relay closes it for a broken rule
                        await source.send_bytes(raw_frame(b"\xff\xff\xff"))
                        assert (await source.expect_close())[0] == 4400
                        assert await destination.recv() == reset_of(i + 1)
                    else:                 # a newer connection replaces it
                        newer = await connect(session, relay.base, created["destination_access_token"],
                                              "destination", client_token=destination_ct)
                        assert (await newer.recv()).type == SERVICE_IDS
                        assert (await destination.expect_close())[0] == 4000
                        assert await source.recv() == reset_of(i + 1)
                        await newer.close()
                    await destination.close()
                    await source.close()

        asyncio.run(cycles(CYCLES_WARM, 0))
        rss_warm, fds_warm = process.memory_info().rss, process.num_fds()
        asyncio.run(cycles(CYCLES - CYCLES_WARM, CYCLES_WARM))
        rss_end, fds_end = process.memory_info().rss, process.num_fds()
        # 240 more cycles of two or three connections each: a leak of even 4 kB per connection would show
        assert rss_end - rss_warm < 1_500_000, (rss_warm, rss_end)
        assert fds_end <= fds_warm + 2, (fds_warm, fds_end)
    finally:
        relay.stop()


async def test_an_upgraded_connection_is_not_held_by_the_handshake_deadline(settings_factory):
    """hand_over_transport (relay/web/takeover.py) makes aiohttp forget an upgraded connection, "about
    15 kB" of handler, parser and buffers that a relay holding many tunnels cannot afford. The
    server's ConnectionGuard (relay/web/server.py) must not keep them either: once a
    connection is upgraded or gone, its aiohttp RequestHandler is garbage, not held until the
    handshake timeout (10 s by default: at a reconnect storm's rate, megabytes)."""
    port = unused_port()
    settings = settings_factory(port=port, handshake_timeout=30)
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    assert runner.server is not None
    listener = await asyncio.get_running_loop().create_server(ConnectionGuard(runner.server, settings), "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v5/iot/proj-a/tunnels", headers={"X-Auth-Token": TOKEN_A},
                                    json={"device_id": "thing", "protocol": "aws", "services": ["SSH"]}) as resp:
                assert resp.status == 201
                created = await resp.json()
            client_tokens = new_client_token(), new_client_token()
            for _ in range(20):
                ends = [await connect(session, base, created[f"{mode}_access_token"], mode, client_token=ct)
                        for mode, ct in zip(("source", "destination"), client_tokens)]
                for end in ends:
                    assert (await end.recv()).type == SERVICE_IDS
                for end in reversed(ends):
                    await end.close()
            await asyncio.sleep(0.2)
            gc.collect()
            handlers = [o for o in gc.get_objects() if isinstance(o, RequestHandler)]
            # the REST client's keep-alive connection may still have its handler; 40 tunnel
            # connections came and went
            assert len(handlers) <= 2, f"{len(handlers)} aiohttp request handlers are still alive"
    finally:
        listener.close()
        await listener.wait_closed()
        await runner.cleanup()
