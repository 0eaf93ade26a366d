"""Resource bounds: repeated connect / relay / disconnect cycles leave memory flat and release
every file descriptor (no leak in Python or in the Rust extension)."""

from __future__ import annotations

import asyncio

import aiohttp
import psutil
import pytest

from tests.dataplane.conftest import message
from tests.test_serve import TOKEN, Served

CYCLES_WARM, CYCLES = 60, 300


@pytest.mark.timeout(180)
def test_cycles_leave_memory_and_descriptors_flat(tmp_path):
    # WARNING: the test reads the relay's log only at the end, so it must stay short
    # The audit trail grows the SQLite file with every cycle, and SQLite's page cache (a
    # bounded cache, 2 MB by default) with it: a small cache fills during the warm-up, so
    # what grows after it is a leak.
    relay = Served(tmp_path, "--db", "relay.db", "--sqlite-cache-kib", "64",
                   env={"RELAY_API_TOKENS": f"p1:soak:{TOKEN}", "RELAY_LOG_LEVEL": "WARNING"})
    process = psutil.Process(relay.proc.pid)
    try:
        status, created = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "soak"})
        assert status == 201
        source_url, device_url = created["tunnel_uri"], created["device_tunnel_uri"]

        async def cycles(n: int, start: int) -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(start, start + n):
                    source = await session.ws_connect(source_url, headers={"tunnel_access_token": created["tunnel_access_token"]})
                    device = await session.ws_connect(device_url, headers={"tunnel_access_token": created["device_access_token"]})
                    assert (await source.receive_json(timeout=5))["operation_type"] == "connect_tunnel"
                    await source.send_str(message("command", f"c{i}", "x" * 2000))
                    assert (await device.receive(timeout=5)).data.endswith('"}')
                    await device.send_str(message("command_response", f"c{i}", "y" * 9000))
                    assert len((await source.receive(timeout=5)).data) > 9000
                    await device.close()
                    await source.close()

        asyncio.run(cycles(CYCLES_WARM, 0))
        rss_warm, fds_warm = process.memory_info().rss, process.num_fds()
        asyncio.run(cycles(CYCLES - CYCLES_WARM, CYCLES_WARM))
        rss_end, fds_end = process.memory_info().rss, process.num_fds()
        # 240 more cycles of two connections each: a leak of even 4 kB per connection would show
        assert rss_end - rss_warm < 1_500_000, (rss_warm, rss_end)
        assert fds_end <= fds_warm + 2, (fds_warm, fds_end)
    finally:
        relay.stop()
