"""End to end with real parts: the relay (in process), mosquitto, the device agent (in
process), OpenSSH's sshd, and an application's WebSocket on the source side."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import re

import aiohttp
import orjson
import pytest

from tests.dataplane.conftest import message, receive_close, receive_json
from tests.device.conftest import eventually

LIMIT = 10240


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def setup(relay_factory, mosquitto, sshd, agent_factory):
    relay = await relay_factory(mqtt_url=mosquitto.url)

    async def start_agent(device_id: str = "dev-1", **overrides):  # type: ignore[no-untyped-def]
        return await agent_factory(device_id, mosquitto.url, ssh_port=sshd.port, **overrides)

    return relay, start_agent, sshd


async def open_source(http, relay, device_id="dev-1", **fields):  # type: ignore[no-untyped-def]
    created = await relay.create(device_id, **fields)
    source = await http.ws_connect(created["tunnel_uri"], headers={"tunnel_access_token": created["tunnel_access_token"]},
                                   autoclose=False, max_msg_size=0)
    return created, source


async def until_output(source, request_id: str, marker: str, timeout: float = 15) -> tuple[str, list[bytes]]:
    """Collect command_response data for `request_id` until `marker` shows up."""
    text, raw = "", []
    async with asyncio.timeout(timeout):
        while marker not in text:
            msg = await source.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
            raw.append(msg.data.encode())
            body = orjson.loads(msg.data)
            assert body["operation_type"] == "command_response", body
            assert body["request_id"] == request_id
            text += body["data"]
    return text, raw


async def login(source, sshd, request_id="c1", password=None) -> dict:  # type: ignore[no-untyped-def]
    await source.send_str(message("connect", request_id, {"username": sshd.user,
                                                          "password": password or sshd.password}))
    while True:
        answer = await receive_json(source, timeout=15)
        if answer["operation_type"] == "connect_response":
            return answer
        assert answer["operation_type"] == "command_response"   # nothing else may come first


async def test_create_notify_connect_command_output(setup, http, caplog):
    caplog.set_level("DEBUG")
    relay, start_agent, sshd = setup
    agent = await start_agent()
    created, source = await open_source(http, relay)
    try:
        hello = await receive_json(source, timeout=15)     # the agent got the notify and connected
        assert hello["operation_type"] == "connect_tunnel"
        answer = await login(source, sshd)
        assert answer["request_id"] == "c1"
        assert answer["data"]["status_code"] == "200"
        await source.send_str(message("command", "k1", "uname -a; echo END-$((2+3))\n"))
        text, _ = await until_output(source, "k1", "END-5")
        uname = platform.uname()
        assert re.search(rf"Linux {re.escape(uname.node)} {re.escape(uname.release)} .*\r\n", text), text
        info = (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}"))[1]
        assert info["device_connect_state"]["status"] == "CONNECTED"
        assert info["notify_status"] == "DELIVERED"
        assert agent.tunnel is not None and agent.tunnel.tunnel_id == created["tunnel_id"]
        secrets = (created["device_access_token"], created["tunnel_access_token"], sshd.password)
        for record in caplog.records:   # not even at DEBUG
            text = record.getMessage() + repr(record.__dict__)
            assert not any(secret in text for secret in secrets), record.getMessage()
    finally:
        await source.close()


async def test_wrong_password_is_a_clear_failure(setup, http):
    relay, start_agent, sshd = setup
    await start_agent()
    _, source = await open_source(http, relay)
    try:
        assert (await receive_json(source, timeout=15))["operation_type"] == "connect_tunnel"
        answer = await login(source, sshd, request_id="bad-1", password="wrong-password")
        assert answer["request_id"] == "bad-1"
        assert answer["data"]["status_code"] == "401"
        assert "refused" in answer["data"]["status_msg"]
        # a command without a session is answered, not lost
        await source.send_str(message("command", "k0", "id\n"))
        reply = await receive_json(source, timeout=10)
        assert reply["operation_type"] == "disconnect" and reply["request_id"] == "k0"
        assert reply["data"]["status_code"] == "400"
        # and a right password afterwards works
        assert (await login(source, sshd, request_id="c2"))["data"]["status_code"] == "200"
    finally:
        await source.close()


async def test_big_output_arrives_complete_in_order_and_small(setup, http):
    relay, start_agent, sshd = setup
    await start_agent()
    _, source = await open_source(http, relay)
    try:
        await receive_json(source, timeout=15)
        assert (await login(source, sshd))["data"]["status_code"] == "200"
        # `seq` output is ~190 KB; the echo of the command line does not contain END-2
        await source.send_str(message("command", "big", "seq 1 30000; echo '\"quoted\\\\'; echo END-$((1+1))\n"))
        text, raw = await until_output(source, "big", "END-2", timeout=30)
        assert len(raw) > 15
        assert all(len(m) <= LIMIT for m in raw)
        numbers = "\r\n".join(str(i) for i in range(1, 30001)) + "\r\n"
        assert numbers in text
        assert '"quoted\\' in text
    finally:
        await source.close()


async def test_several_sessions_one_after_another(setup, http):
    relay, start_agent, sshd = setup
    await start_agent()
    _, source = await open_source(http, relay)
    try:
        await receive_json(source, timeout=15)
        for round_ in range(3):
            assert (await login(source, sshd, request_id=f"c{round_}"))["data"]["status_code"] == "200"
            await source.send_str(message("command", f"k{round_}", f"echo round-$(({round_}+100))\n"))
            await until_output(source, f"k{round_}", f"round-{round_ + 100}")
            await source.send_str(message("disconnect", f"d{round_}", {"status_code": "200", "status_msg": "bye"}))
        # `exit` ends a session from the device side: the source is told
        assert (await login(source, sshd, request_id="c9"))["data"]["status_code"] == "200"
        await source.send_str(message("command", "k9", "exit\n"))
        async with asyncio.timeout(15):
            while True:
                body = await receive_json(source, timeout=15)
                if body["operation_type"] == "disconnect":
                    assert body["data"]["status_code"] == "200" and "ended" in body["data"]["status_msg"]
                    break
    finally:
        await source.close()


async def test_rotated_device_token_arrives_by_mqtt_and_is_used(setup, http):
    relay, start_agent, sshd = setup
    agent = await start_agent()
    created, source = await open_source(http, relay)
    try:
        assert (await receive_json(source, timeout=15))["operation_type"] == "connect_tunnel"
        status, _ = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}/rotate-token",
                                     json={"side": "device"})
        assert status == 200
        while True:   # the old device connection is ended (the source hears 499), the new one pairs
            body = await receive_json(source, timeout=15)
            if body["operation_type"] == "connect_tunnel":
                break
        assert (await login(source, sshd))["data"]["status_code"] == "200"
        assert agent.tunnel is not None and agent.tunnel.outcome is None
    finally:
        await source.close()


async def test_closing_the_tunnel_stops_the_agent_tunnel(setup, http):
    relay, start_agent, sshd = setup
    agent = await start_agent()
    created, source = await open_source(http, relay)
    try:
        await receive_json(source, timeout=15)
        status, _ = await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}")
        assert status == 204
        await receive_close(source, timeout=10)
        await eventually(lambda: agent.tunnel is not None and agent.tunnel.outcome is not None)
        assert "ended" in agent.tunnel.outcome
    finally:
        await source.close()


async def test_an_evicted_agent_does_not_come_back(setup, http):
    relay, start_agent, sshd = setup
    agent = await start_agent()
    created, source = await open_source(http, relay)
    try:
        await receive_json(source, timeout=15)
        # someone else connects with the device token: the agent's connection is evicted (4000)
        intruder = await http.ws_connect(created["device_tunnel_uri"],
                                         headers={"tunnel_access_token": created["device_access_token"]})
        await eventually(lambda: agent.tunnel is not None and agent.tunnel.outcome is not None)
        await intruder.close()
    finally:
        await source.close()


async def test_presence_follows_the_agent(setup, http):
    relay, start_agent, sshd = setup
    agent = await start_agent("dev-p")
    from tests.device.test_delivery import relay_notifier

    await eventually(lambda: relay_notifier(relay).presence.state("dev-p").value == "online")
    await agent.stop()   # a clean stop says offline
    await eventually(lambda: relay_notifier(relay).presence.state("dev-p").value == "offline")
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "dev-p"})
    assert status == 409 and body["error_code"] == "TUNNEL.409003"
    await start_agent("dev-p")
    await eventually(lambda: relay_notifier(relay).presence.state("dev-p").value == "online")
    await relay.create("dev-p")


async def test_a_lost_agent_is_offline_by_its_last_will(relay_factory, mosquitto, tmp_path):
    """The will fires when the device's connection dies without a goodbye: a real process, killed."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import relay as relay_package
    relay = await relay_factory(mqtt_url=mosquitto.url)
    from tests.device.test_delivery import relay_notifier

    src = str(Path(relay_package.__file__).resolve().parent.parent)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}, "PYTHONPATH": src}
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "agent", "--device-id", "dev-k", "--mqtt-url", mosquitto.url],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        await eventually(lambda: relay_notifier(relay).presence.state("dev-k").value == "online", timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await eventually(lambda: relay_notifier(relay).presence.state("dev-k").value == "offline", timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()


async def test_a_new_source_does_not_inherit_the_old_sources_ssh_login(setup, http):
    """Source A logs in; source B takes the tunnel over (same token, evicting A). B's command
    without its own `connect` must not run in A's shell."""
    relay, start_agent, sshd = setup
    await start_agent()
    created, first = await open_source(http, relay)
    second = None
    try:
        assert (await receive_json(first, timeout=15))["operation_type"] == "connect_tunnel"
        assert (await login(first, sshd))["data"]["status_code"] == "200"
        second = await http.ws_connect(created["tunnel_uri"], headers={"tunnel_access_token": created["tunnel_access_token"]},
                                       autoclose=False, max_msg_size=0)
        assert (await receive_close(first))[0] == 4000
        assert (await receive_json(second, timeout=15))["operation_type"] == "connect_tunnel"
        await second.send_str(message("command", "steal-1", "echo stolen-$((40+2))\n"))
        reply = await receive_json(second, timeout=10)
        assert reply["operation_type"] == "disconnect" and reply["request_id"] == "steal-1"
        assert reply["data"]["status_code"] == "400"   # no SSH session: send connect first
        # with its own login, B gets its own shell
        assert (await login(second, sshd, request_id="c-b"))["data"]["status_code"] == "200"
        await second.send_str(message("command", "k-b", "echo mine-$((40+2))\n"))
        text, _ = await until_output(second, "k-b", "mine-42")
        assert "mine-42" in text
    finally:
        await first.close()
        if second is not None:
            await second.close()


# -- a notify the device missed (issue 14, point 6) ---------------------------------------


async def device_state(relay, tunnel_id: str) -> dict:
    return (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}"))[1]


async def test_an_agent_that_subscribes_after_its_notify_was_acknowledged_still_gets_it(
        relay_factory, mosquitto, agent_factory):
    """The broker acknowledged the notify while no agent was subscribed (it started a moment
    later): the relay sends the notify again when the agent says `online`, and the device
    end connects."""
    relay = await relay_factory(mqtt_url=mosquitto.url)
    created = await relay.create("dev-late")
    await eventually(lambda: _notify_is(relay, created["tunnel_id"], "DELIVERED"))   # nobody listened
    await agent_factory("dev-late", mosquitto.url)
    await eventually(lambda: _device_is(relay, created["tunnel_id"], "CONNECTED"), timeout=20)
    assert (await device_state(relay, created["tunnel_id"]))["notify_status"] == "DELIVERED"


async def test_a_notify_published_while_the_agent_is_away_reaches_it_when_it_is_back(mosquitto):
    """The agent's MQTT session is persistent (clean session off, the same client id): what
    the relay publishes while the agent is away (a restart, an outage) is kept by the broker
    and handed over when it reconnects, presence or not."""
    from relay.agent.mqtt import DeviceLink
    from relay.agent.settings import AgentSettings
    from relay.notify import build_notify, down_topic

    settings = AgentSettings(device_id="dev-away", mqtt_url=mosquitto.url, mqtt_reconnect_delay=0.2)
    heard: list = []

    async def run_link() -> tuple[DeviceLink, asyncio.Task]:
        link = DeviceLink(settings, heard.append)
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(link.connected.wait(), 10)
        return link, task

    async def stop_link(link: DeviceLink, task: asyncio.Task) -> None:
        link.stopping = True
        await link.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    link, task = await run_link()
    await stop_link(link, task)
    payload = build_notify(tunnel_uri="ws://127.0.0.1:1/v5/iot/tunnels/t-away/device-connect", token="tok-away",
                           expires_in=60, now=0.0)
    await mosquitto.publish(down_topic("dev-away"), payload.decode())
    link, task = await run_link()
    try:
        await eventually(lambda: heard, timeout=10)
        assert [(n.tunnel_id, n.token) for n in heard] == [("t-away", "tok-away")]
    finally:
        await stop_link(link, task)


async def _notify_is(relay, tunnel_id: str, status: str) -> bool:
    return (await device_state(relay, tunnel_id))["notify_status"] == status


async def _device_is(relay, tunnel_id: str, status: str) -> bool:
    return (await device_state(relay, tunnel_id))["device_connect_state"]["status"] == status
