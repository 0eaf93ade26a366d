"""Three replicas as containers of the image behind haproxy, sharing Redis and a mosquitto
broker: the replica tests of tests/scale, run here against the image instead of processes
(the `rig` fixture of tests/image/conftest.py replaces the one of tests/scale)."""

from __future__ import annotations

import orjson
import pytest

from tests.image.conftest import BUILD_TIMEOUT
from tests.scale.test_replicas import (  # noqa: F401  (collected here, on the containers' rig)
    create,
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
