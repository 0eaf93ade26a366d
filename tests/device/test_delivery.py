"""The platform side with a real mosquitto: tunnel notifies as a plain subscriber sees them,
the outbox across broker outages, presence."""

from __future__ import annotations

import asyncio
import re

import orjson

from relay.broker import BrokerAccounts, ManagedBroker, port_answers
from tests.device.conftest import eventually

TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")


async def info(relay, tunnel_id: str) -> dict:
    status, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}")
    assert status == 200, body
    return body


async def delivered(relay, tunnel_id: str) -> bool:
    return (await info(relay, tunnel_id))["notify_status"] == "DELIVERED"


async def test_the_notify_is_the_seed_message_field_by_field(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    sub = await mosquitto.subscribe("$oc/devices/dev-7/sys/events/down")
    created = await relay.create("dev-7", custom_info="rack=3", expires_in=3600)
    [(topic, payload)] = await sub.messages()
    assert topic == "$oc/devices/dev-7/sys/events/down"
    body = orjson.loads(payload)
    assert list(body) == ["services"] and len(body["services"]) == 1
    service = body["services"][0]
    assert service["service_id"] == "$tunnel_manager"
    assert service["event_type"] == "tunnel_notify"
    assert TIME_RE.match(service["event_time"])
    paras = service["paras"]
    assert set(paras) == {"tunnel_uri", "tunnel_access_token", "expires_in", "custom_info"}
    assert paras["tunnel_uri"] == relay.settings.tunnel_uri(created["tunnel_id"], "device")
    assert paras["tunnel_uri"].endswith(f"/v5/iot/tunnels/{created['tunnel_id']}/device-connect")
    assert paras["tunnel_access_token"] == created["device_access_token"]   # the device token
    assert paras["tunnel_access_token"] != created["tunnel_access_token"]
    assert paras["expires_in"] == 3600
    assert paras["custom_info"] == "rack=3"
    await eventually(lambda: delivered(relay, created["tunnel_id"]))


async def test_without_custom_info_paras_are_exactly_the_seeds(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    sub = await mosquitto.subscribe("$oc/devices/+/sys/events/down")
    await relay.create("dev-8")
    [(_, payload)] = await sub.messages()
    assert set(orjson.loads(payload)["services"][0]["paras"]) == {"tunnel_uri", "tunnel_access_token", "expires_in"}


async def test_a_device_token_rotation_sends_the_new_token(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    created = await relay.create("dev-1")
    await eventually(lambda: delivered(relay, created["tunnel_id"]))
    sub = await mosquitto.subscribe("$oc/devices/dev-1/sys/events/down")
    status, rotated = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}/rotate-token",
                                       json={"side": "device"})
    assert status == 200
    [(_, payload)] = await sub.messages()
    assert orjson.loads(payload)["services"][0]["paras"]["tunnel_access_token"] == rotated["device_access_token"]
    await eventually(lambda: delivered(relay, created["tunnel_id"]))


async def test_a_source_rotation_sends_nothing(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    created = await relay.create("dev-1")
    await eventually(lambda: delivered(relay, created["tunnel_id"]))
    sub = await mosquitto.subscribe("$oc/devices/dev-1/sys/events/down", timeout=1)
    status, _ = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}/rotate-token",
                                 json={"side": "source"})
    assert status == 200
    assert await sub.messages() == []


async def test_broker_down_during_create_then_up_delivers(relay_factory, mosquitto, caplog):
    relay = await relay_factory(mqtt_url=mosquitto.url, mqtt_reconnect_delay=0.2)
    await eventually(lambda: relay_notifier(relay).connected)
    mosquitto.stop()
    await eventually(lambda: not relay_notifier(relay).connected)
    created = await relay.create("dev-1")   # the broker is down: the create still succeeds
    assert (await info(relay, created["tunnel_id"]))["notify_status"] == "PENDING"
    mosquitto.start()
    sub = await mosquitto.subscribe("$oc/devices/dev-1/sys/events/down")
    [(_, payload)] = await sub.messages()
    assert orjson.loads(payload)["services"][0]["paras"]["tunnel_access_token"] == created["device_access_token"]
    await eventually(lambda: delivered(relay, created["tunnel_id"]))
    for record in caplog.records:   # the device token is a secret
        assert created["device_access_token"] not in record.getMessage() + str(record.__dict__)


async def test_the_outbox_survives_a_restart(relay_factory, mosquitto, tmp_path):
    mosquitto.stop()
    relay = await relay_factory(mqtt_url=mosquitto.url, mqtt_reconnect_delay=0.2)
    created = await relay.create("dev-1")
    await relay.client.close()   # the relay stops with the notify undelivered
    mosquitto.start()
    sub = await mosquitto.subscribe("$oc/devices/dev-1/sys/events/down")
    relay = await relay_factory(mqtt_url=mosquitto.url)   # same database file
    [(_, payload)] = await sub.messages()
    assert orjson.loads(payload)["services"][0]["paras"]["tunnel_access_token"] == created["device_access_token"]
    await eventually(lambda: delivered(relay, created["tunnel_id"]))


async def test_a_tunnel_closed_before_delivery_is_never_delivered(relay_factory, mosquitto):
    mosquitto.stop()
    relay = await relay_factory(mqtt_url=mosquitto.url, mqtt_reconnect_delay=0.2)
    created = await relay.create("dev-1")
    status, _ = await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}")
    assert status == 204
    assert (await info(relay, created["tunnel_id"]))["notify_status"] is None
    mosquitto.start()
    sub = await mosquitto.subscribe("$oc/devices/dev-1/sys/events/down", timeout=2)
    await eventually(lambda: relay_notifier(relay).connected)
    assert await sub.messages() == []


async def test_no_broker_no_notify_status(relay):
    created = await relay.create("dev-1")
    assert (await info(relay, created["tunnel_id"]))["notify_status"] is None


# -- presence ----------------------------------------------------------------------------


async def test_a_device_that_said_offline_is_refused(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url)
    await mosquitto.publish("$oc/devices/dev-1/sys/presence", "offline", retain=True)
    await eventually(lambda: relay_notifier(relay).presence.state("dev-1").value == "offline")
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "dev-1"})
    assert status == 409 and body["error_code"] == "TUNNEL.409003"
    assert "dev-1" in body["error_msg"] and "offline" in body["error_msg"]
    await mosquitto.publish("$oc/devices/dev-1/sys/presence", "online", retain=True)
    await eventually(lambda: relay_notifier(relay).presence.state("dev-1").value == "online")
    await relay.create("dev-1")


async def test_retained_presence_is_known_at_start(relay_factory, mosquitto):
    await mosquitto.publish("$oc/devices/dev-2/sys/presence", "offline", retain=True)
    relay = await relay_factory(mqtt_url=mosquitto.url)
    await eventually(lambda: relay_notifier(relay).presence.state("dev-2").value == "offline")
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "dev-2"})
    assert status == 409 and body["error_code"] == "TUNNEL.409003"


async def test_strict_presence_refuses_devices_never_heard_of(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url, presence_check="strict")
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "ghost"})
    assert status == 409 and body["error_code"] == "TUNNEL.409003"
    assert "relay agent" in body["error_msg"]


async def test_presence_check_off(relay_factory, mosquitto):
    relay = await relay_factory(mqtt_url=mosquitto.url, presence_check="off")
    await mosquitto.publish("$oc/devices/dev-1/sys/presence", "offline", retain=True)
    await relay.create("dev-1")


# -- the managed broker ------------------------------------------------------------------


async def test_the_managed_broker_starts_and_stops(mosquitto, tmp_path):
    mosquitto.stop()   # only to borrow its free port
    accounts = BrokerAccounts(tmp_path)
    broker = ManagedBroker("127.0.0.1", mosquitto.port, accounts)
    await broker.start()
    try:
        assert broker.process is not None and port_answers("127.0.0.1", mosquitto.port)
        user, password = accounts.relay_credentials()
        args = ["-h", "127.0.0.1", "-p", str(mosquitto.port), "-u", user, "-P", password, "-q", "1"]
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub", *args, "-t", "$oc/devices/+/sys/presence", "-C", "1", "-W", "10",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)
        device = accounts.add_device("dev-1")
        await eventually(lambda: _publish(mosquitto.port, "dev-1", device), timeout=10)
        out, err = await asyncio.wait_for(sub.communicate(), 15)
        assert out == b"online\n", err
    finally:
        await broker.stop()
    assert not port_answers("127.0.0.1", mosquitto.port)


async def _publish(port: int, user: str, password: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-q", "1",
        "-t", f"$oc/devices/{user}/sys/presence", "-m", "online",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


def relay_notifier(relay):  # type: ignore[no-untyped-def]
    from relay.notifier import Notifier
    from relay.web import rest

    service = relay.client.server.app[rest.SERVICE]
    return next(listener for listener in service.listeners if isinstance(listener, Notifier))

