"""Three replicas as containers of the image behind haproxy, sharing Redis and a mosquitto
broker: the replica tests of tests/scale, run here against the image instead of processes
(the `rig` fixture of tests/image/conftest.py replaces the one of tests/scale)."""

from __future__ import annotations

import signal
import urllib.request

import aiohttp
import orjson
import pytest

from tests.image.conftest import BUILD_TIMEOUT, manifest_env
from tests.scale.test_replicas import (  # noqa: F401  (collected here, on the containers' rig)
    close_code,
    create,
    next_json,
    split_pair,
    test_ends_on_different_replicas_relay_byte_exact_both_ways,
    test_sigkill_of_a_replica_is_noticed_by_the_other_end,
    test_sigterm_drains_and_the_device_comes_back_elsewhere,
    test_through_haproxy_round_robin,
)

# The first test of the session also waits for the image to be built.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 180)


async def test_the_notify_reaches_the_broker_with_the_public_tunnel_uri(rig):
    lb = rig.start_lb()
    sub = await rig.mosquitto.subscribe("$oc/devices/dev-img/sys/events/down")
    try:
        created = create(rig, lb.base, "dev-img")
        [(_, payload)] = await sub.messages()
    finally:
        await sub.close()
    paras = orjson.loads(payload)["services"][0]["paras"]
    # RELAY_PUBLIC_URL (the load balancer), not the replica's own address
    assert paras["tunnel_uri"] == lb.base.replace("http://", "ws://") + \
        f"/v5/iot/tunnels/{created['tunnel_id']}/device-connect"
    assert paras["tunnel_access_token"] == created["device_access_token"]


async def test_sigterm_drains_over_the_deployments_drain_time(rig):
    """A replica with the Deployment's own RELAY_DRAIN_SECONDS, as the kubelet stops it: its
    device hears 503 and close 1001 at once, /readyz answers 503 for the rest of the drain (the
    pod leaves the Service) while /livez still answers 200 (no restart), then it exits 0."""
    r1, r2, _ = rig.replicas
    r2.stop()
    r2.drain_seconds = None
    assert float(manifest_env()["RELAY_DRAIN_SECONDS"]) >= 5   # long enough to look at it while it drains
    r2.start()
    async with aiohttp.ClientSession() as session:
        body, source, device = await split_pair(session, rig, r1, r2)
        r2.signal(signal.SIGTERM)
        assert (await next_json(device))["data"]["status_code"] == "503"
        assert await close_code(device) == 1001
        # one pairing: it is told first, then the relay waits out the drain time
        assert r2.ready() == 503
        with urllib.request.urlopen(f"http://127.0.0.1:{r2.internal_port}/livez", timeout=5) as resp:
            assert resp.status == 200
        assert r2.wait(timeout=60) == 0
        # the JSON log lines of the manifest's RELAY_LOG_FORMAT
        records = [orjson.loads(line) for line in r2.logs().splitlines() if line.startswith("{")]
        (stopping,) = [r for r in records if r["message"] == "shutting down"]
        assert stopping["drain_seconds"] == float(manifest_env()["RELAY_DRAIN_SECONDS"])
        await source.close()
