"""Resource bounds: repeated connect / relay / disconnect cycles leave memory flat and release
every file descriptor (no leak in Python or in the Rust extension)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import psutil
import pytest

from tests.dataplane.conftest import message
from tests.test_serve import TOKEN, Served

CYCLES_WARM, CYCLES = 60, 300


@pytest.mark.timeout(180)
@pytest.mark.parametrize("recorded", [False, True], ids=["plain", "audited-and-recorded"])
def test_cycles_leave_memory_and_descriptors_flat(tmp_path, recorded):
    """`recorded`: each cycle is an SSH session the audit trail follows: a login and its
    answer (two events), terminal traffic recorded as asciicast, and the recording saved when
    the device leaves; so the decoders' notes cross from the codec into Python every cycle."""
    # WARNING: the test reads the relay's log only at the end, so it must stay short
    # The audit trail grows the SQLite file with every cycle, and SQLite's page cache (a
    # bounded cache, 2 MB by default) with it: a small cache fills during the warm-up, so
    # what grows after it is a leak.
    extra = ("--record-projects", "p1") if recorded else ()
    relay = Served(tmp_path, "--db", "relay.db", "--sqlite-cache-kib", "64", *extra,
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
                    if recorded:
                        await source.send_str(message("connect", f"l{i}", {"username": "pi", "password": "pw"}))
                        assert (await device.receive_json(timeout=5))["operation_type"] == "connect"
                        await device.send_str(message("connect_response", f"l{i}", {"status_code": "200"}))
                        assert (await source.receive_json(timeout=5))["operation_type"] == "connect_response"
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
        if recorded:   # the sessions really were followed: every login and recording is in the trail
            assert wait_for_count(relay, "/v5/iot/p1/audit?event_type=ssh_login_succeeded&limit=1000", "events") == CYCLES
            assert wait_for_count(relay, "/v5/iot/p1/audit?event_type=session_recorded&limit=1000", "events") == CYCLES
        # 240 more cycles of two connections each: a leak of even 4 kB per connection would show
        assert rss_end - rss_warm < 1_500_000, (rss_warm, rss_end)
        assert fds_end <= fds_warm + 2, (fds_warm, fds_end)
    finally:
        relay.stop()


def wait_for_count(relay: Served, path: str, key: str, rounds: int = 100) -> int:
    """How many items `path` lists once the audit log's background writer has caught up."""
    count = -1
    for _ in range(rounds):
        status, page = relay.call("GET", path)
        assert status == 200, page
        if len(page[key]) == count:   # the same twice: nothing more is on its way
            return count
        count = len(page[key])
        time.sleep(0.2)
    return count
