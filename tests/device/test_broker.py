"""The managed MQTT broker has accounts and an ACL (issue 15, finding 4), with the real
mosquitto: no anonymous client, a device reaches only its own topics, the relay and the agent
work with their credentials, and an unknown broker on the managed port is refused."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys

import orjson
import pytest
from aiohttp.test_utils import TestServer, unused_port

from relay.broker import (RELAY_ACCOUNT, BrokerAccounts, ManagedBroker, accounts_folder, hash_password,
                          password_matches, port_answers)
from relay.errors import ConfigError
from relay.web.app import create_app
from tests.device.conftest import _binary, eventually
from tests.test_serve import SRC, clean_env

pytestmark = pytest.mark.timeout(90)


async def mqtt_client(tool: str, port: int, *args: str, user: str | None = None, password: str | None = None,
                      wait: float = 15) -> tuple[int, str, str]:
    """Runs mosquitto_sub or mosquitto_pub to its end: (exit status, stdout, stderr)."""
    login = ["-u", user, "-P", password] if user and password else []
    proc = await asyncio.create_subprocess_exec(_binary(tool), "-h", "127.0.0.1", "-p", str(port), *login, *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), wait)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def managed(relay_factory, tmp_path):
    """A relay that runs its own mosquitto (as `relay serve` does without --mqtt-url) on a free port."""
    async def start(**overrides):  # type: ignore[no-untyped-def]
        port = unused_port()
        relay = await relay_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", managed_broker=True, **overrides)
        await eventually(lambda: relay_notifier(relay).connected, timeout=20)
        return relay, port, BrokerAccounts(accounts_folder(relay.settings.db))
    return start


def relay_notifier(relay):  # type: ignore[no-untyped-def]
    from tests.device.test_delivery import relay_notifier as find
    return find(relay)


async def test_anonymous_clients_are_refused(managed):
    _, port, accounts = await managed()
    status, _, err = await mqtt_client("mosquitto_sub", port, "-t", "$oc/#", "-C", "1", "-W", "5")
    assert status != 0 and "not authorised" in err
    status, _, err = await mqtt_client("mosquitto_pub", port, "-t", "$oc/devices/d/sys/presence", "-m", "offline",
                                       "-r", "-q", "1")
    assert status != 0 and "not authorised" in err
    # nor with a made-up account, nor the relay's name with a wrong password
    for user in ("dev-x", RELAY_ACCOUNT):
        status, _, err = await mqtt_client("mosquitto_sub", port, "-t", "$oc/#", "-C", "1", "-W", "5",
                                           user=user, password="guess-guess-guess")
        assert status != 0 and "not authorised" in err
    # the accounts are private files; the password file holds hashes only
    for path in (accounts.password_file, accounts.relay_password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    relay_password = accounts.relay_password_file.read_text().strip()
    assert relay_password not in accounts.password_file.read_text()


async def test_a_device_cannot_read_another_device_s_notify(managed):
    relay, port, accounts = await managed()
    password_a, password_b = accounts.add_device("dev-a"), accounts.add_device("dev-b")
    await asyncio.sleep(1.5)   # the running broker reloads the accounts within a second

    # A listens to everything it can name; B to its own down topic.
    spy = asyncio.ensure_future(mqtt_client(
        "mosquitto_sub", port, "-t", "$oc/#", "-t", "$oc/devices/dev-b/sys/events/down", "-t", "#",
        "-q", "1", "-v", "-W", "8", user="dev-a", password=password_a))
    own = asyncio.ensure_future(mqtt_client(
        "mosquitto_sub", port, "-t", "$oc/devices/dev-b/sys/events/down", "-q", "1", "-C", "1", "-W", "20",
        user="dev-b", password=password_b))
    await asyncio.sleep(1.0)   # both subscribed
    created = await relay.create("dev-b")
    status, out, err = await own
    assert status == 0, err
    token = orjson.loads(out)["services"][0]["paras"]["tunnel_access_token"]
    assert token == created["device_access_token"]
    status, out, err = await spy
    assert status == 27 and "Timed out" in err, (status, err)   # it was connected, and heard nothing
    assert token not in out and "dev-b" not in out


async def test_a_device_cannot_publish_another_device_s_presence(managed):
    relay, port, accounts = await managed(presence_check="known")
    password_a = accounts.add_device("dev-a")
    accounts.add_device("dev-b")
    await asyncio.sleep(1.5)
    status, _, err = await mqtt_client("mosquitto_pub", port, "-t", "$oc/devices/dev-b/sys/presence", "-m", "offline",
                                       "-r", "-q", "1", user="dev-a", password=password_a)
    assert status == 0, err   # the broker takes it (MQTT 3.1.1 cannot refuse a publish) and drops it
    # A's own presence does reach the relay, after the forged one was handled
    status, _, err = await mqtt_client("mosquitto_pub", port, "-t", "$oc/devices/dev-a/sys/presence", "-m", "offline",
                                       "-r", "-q", "1", user="dev-a", password=password_a)
    assert status == 0, err
    await eventually(lambda: relay_notifier(relay).presence.state("dev-a").value == "offline")
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "dev-a"})
    assert status == 409 and body["error_code"] == "TUNNEL.409003"
    assert relay_notifier(relay).presence.state("dev-b").value == "unknown"
    await relay.create("dev-b")   # not blocked by the forged "offline"


async def test_the_relay_and_the_agent_work_with_their_accounts(managed, agent_factory):
    relay, port, accounts = await managed(presence_check="strict")
    password = accounts.add_device("dev-e")   # while the broker runs: it reloads the accounts
    agent = await agent_factory("dev-e", f"mqtt://127.0.0.1:{port}", mqtt_username="dev-e", mqtt_password=password)
    await eventually(lambda: relay_notifier(relay).presence.state("dev-e").value == "online")
    created = await relay.create("dev-e")   # strict presence: only a device heard online gets one

    async def device_connected() -> bool:
        status, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}")
        return body["device_connect_state"]["status"] == "CONNECTED"

    await eventually(device_connected, timeout=20)   # the notify reached the agent, which connected
    await agent.stop()


async def test_an_unknown_broker_on_the_managed_port_is_refused(settings_factory, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)
        port = squatter.getsockname()[1]
        broker = ManagedBroker("127.0.0.1", port, BrokerAccounts(tmp_path))
        with pytest.raises(ConfigError) as refused:
            await broker.start()
        message = str(refused.value)
        assert f"already listens on 127.0.0.1:{port}" in message
        assert f"--mqtt-url mqtt://127.0.0.1:{port}" in message and "--mqtt-url none" in message
        assert broker.process is None
        # and the relay does not start
        server = TestServer(create_app(settings_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", managed_broker=True)),
                            host="127.0.0.1", port=unused_port())
        try:
            with pytest.raises(ConfigError, match="already listens"):
                await server.start_server()
        finally:
            await server.close()


def test_serve_says_what_to_do_when_the_managed_port_is_taken(tmp_path):
    """The default port, 1883, as `relay serve` resolves --mqtt-url auto: when it is taken by
    something else (here or by another test), the relay stops with the explanation."""
    if not port_answers("127.0.0.1", 1883):
        try:
            squatter = socket.create_server(("127.0.0.1", 1883))
        except OSError:
            pytest.skip("127.0.0.1:1883 can be neither reached nor taken")
    else:
        squatter = None
    try:
        env = clean_env(RELAY_MQTT_URL="auto", RELAY_API_TOKENS="p1:t:serve-test-token-0123456789")
        env["PYTHONPATH"] = SRC
        proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--port", str(unused_port())],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        if squatter is not None:
            squatter.close()
    assert proc.returncode == 2, proc.stderr
    assert "already listens on 127.0.0.1:1883" in proc.stderr and "--mqtt-url mqtt://127.0.0.1:1883" in proc.stderr


def test_password_hashes_are_mosquitto_s(tmp_path):
    """Ours verify in mosquitto (the tests above log in with them); mosquitto_passwd's verify in ours."""
    path = tmp_path / "pw"
    path.write_text("")
    subprocess.run([_binary("mosquitto_passwd"), "-b", str(path), "alice", "s3cret-Pa55"], check=True, timeout=30)
    hashed = path.read_text().strip().split(":", 1)[1]
    assert password_matches("s3cret-Pa55", hashed) and not password_matches("other", hashed)
    mine = hash_password("s3cret-Pa55")
    assert mine.startswith("$7$") and password_matches("s3cret-Pa55", mine) and mine != hash_password("s3cret-Pa55")


def test_device_accounts_are_added_replaced_and_removed(tmp_path):
    accounts = BrokerAccounts(tmp_path)
    first = accounts.add_device("dev-1")
    with pytest.raises(ConfigError, match="--replace"):
        accounts.add_device("dev-1")
    second = accounts.add_device("dev-1", replace=True)
    assert first != second and len(second) >= 43
    for bad in ("dev/1", "+", "#", "relay.notifier", "", "x" * 129):
        with pytest.raises(ConfigError, match="device id"):
            accounts.add_device(bad)
    user, password = accounts.relay_credentials()
    assert accounts.relay_credentials() == (user, password)   # stable across restarts
    assert accounts.devices() == ["dev-1"]
    assert accounts.remove_device("dev-1") and not accounts.remove_device("dev-1")
    assert not accounts.remove_device(RELAY_ACCOUNT)
    assert accounts.devices() == []


def relay_cli(cwd, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    full = clean_env(**(env or {}))
    full["PYTHONPATH"] = SRC
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=60)


def test_relay_device_commands(tmp_path):
    added = relay_cli(tmp_path, "device", "add", "dev-c")
    assert added.returncode == 0, added.stderr
    password = added.stdout.splitlines()[1].strip()
    accounts = BrokerAccounts(tmp_path / "var")
    hashed = dict(line.split(":", 1) for line in accounts.password_file.read_text().splitlines()
                  if not line.startswith("#"))
    assert password_matches(password, hashed["dev-c"]) and password not in accounts.password_file.read_text()
    assert stat.S_IMODE(accounts.password_file.stat().st_mode) == 0o600
    again = relay_cli(tmp_path, "device", "add", "dev-c")
    assert again.returncode == 2 and "--replace" in again.stderr
    to_file = relay_cli(tmp_path, "device", "add", "dev-d", "--password-file", "dev-d.mqtt")
    assert to_file.returncode == 0 and "dev-d.mqtt" in to_file.stdout
    secret = (tmp_path / "dev-d.mqtt").read_text().strip()
    assert secret not in to_file.stdout and stat.S_IMODE((tmp_path / "dev-d.mqtt").stat().st_mode) == 0o600
    assert relay_cli(tmp_path, "device", "list").stdout.split() == ["dev-c", "dev-d"]
    assert relay_cli(tmp_path, "device", "remove", "dev-c").returncode == 0
    gone = relay_cli(tmp_path, "device", "remove", "dev-c")
    assert gone.returncode == 2 and "no account" in gone.stderr

    # the agent takes the password from that file, and its device id as user name
    from relay.cli import agent_settings, build_parser
    args = build_parser().parse_args(["agent", "--device-id", "dev-d", "--mqtt-password-file",
                                      str(tmp_path / "dev-d.mqtt")])
    settings = agent_settings(args)
    assert (settings.mqtt_username, settings.mqtt_password) == ("dev-d", secret)
