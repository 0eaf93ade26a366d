"""The destination token of an aws tunnel reaches its device on AWS's topic, in AWS's format,
through the same outbox (real mosquitto, as in tests/device)."""

from __future__ import annotations

import orjson
import pytest

from relay.notify import aws_notify_topic, build_aws_notify, parse_aws_notify
from tests.aws.conftest import BASE
from tests.device.conftest import eventually, mosquitto  # noqa: F401  (the broker fixture)


def test_the_payload_is_aws_s():
    payload = build_aws_notify(token="tok", region="eu-west-1", services=("SSH", "HTTP"))
    assert orjson.loads(payload) == {"clientAccessToken": "tok", "clientMode": "destination",
                                     "region": "eu-west-1", "services": ["SSH", "HTTP"]}
    parsed = parse_aws_notify(payload)
    assert (parsed.token, parsed.region, parsed.services) == ("tok", "eu-west-1", ("SSH", "HTTP"))
    assert "tok" not in repr(parsed)
    assert aws_notify_topic("thing-1") == "$aws/things/thing-1/tunnels/notify"


@pytest.mark.parametrize("payload", [
    b"nope", b"[]", b"{}",
    orjson.dumps({"clientAccessToken": "t", "clientMode": "source", "region": "r", "services": []}),
    orjson.dumps({"clientAccessToken": "", "clientMode": "destination", "region": "r", "services": []}),
    orjson.dumps({"clientAccessToken": "t", "clientMode": "destination", "region": 1, "services": []}),
    orjson.dumps({"clientAccessToken": "t", "clientMode": "destination", "region": "r", "services": "SSH"}),
])
def test_bad_notifies_are_refused(payload):
    with pytest.raises(ValueError):
        parse_aws_notify(payload)


async def delivered(relay, tunnel_id: str) -> bool:
    status, info = await relay.call("GET", f"{BASE}/{tunnel_id}")
    return info["notify_status"] == "DELIVERED"


async def test_the_destination_token_goes_to_the_thing_s_topic(relay_factory, mosquitto):  # noqa: F811
    relay = await relay_factory(mqtt_url=mosquitto.url, aws_region="on-prem-1")
    aws_sub = await mosquitto.subscribe("$aws/things/dev-9/tunnels/notify")
    huawei_sub = await mosquitto.subscribe("$oc/devices/dev-9/sys/events/down", timeout=1)
    created = await relay.create("dev-9", protocol="aws", services=["SSH", "VNC"])
    [(topic, payload)] = await aws_sub.messages()
    assert topic == "$aws/things/dev-9/tunnels/notify"
    assert orjson.loads(payload) == {"clientAccessToken": created["destination_access_token"],
                                     "clientMode": "destination", "region": "on-prem-1", "services": ["SSH", "VNC"]}
    assert await huawei_sub.messages() == []   # not the Huawei notify as well
    await eventually(lambda: delivered(relay, created["tunnel_id"]))


async def test_a_destination_rotation_sends_the_new_token_the_aws_way(relay_factory, mosquitto):  # noqa: F811
    relay = await relay_factory(mqtt_url=mosquitto.url)
    created = await relay.create("dev-1", protocol="aws", services=["SSH"])
    await eventually(lambda: delivered(relay, created["tunnel_id"]))
    sub = await mosquitto.subscribe("$aws/things/dev-1/tunnels/notify")
    status, rotated = await relay.call("POST", f"{BASE}/{created['tunnel_id']}/rotate-token",
                                       json={"side": "device"})
    assert status == 200
    [(_, payload)] = await sub.messages()
    body = orjson.loads(payload)
    assert body["clientAccessToken"] == rotated["destination_access_token"] != created["destination_access_token"]
    assert body["region"] == "self-hosted"   # the default region
    await eventually(lambda: delivered(relay, created["tunnel_id"]))
