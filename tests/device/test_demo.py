"""`relay demo-device` (docs/demo.md): the agent plus an SSH server of its own, as a real
process against a relay with a real broker, driven by the `relay` command as a user drives it."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from tests.client.conftest import Cli, cli_env
from tests.device.conftest import mosquitto  # noqa: F401 (fixture)
from tests.test_serve import clean_env

DEVICE = "dev-demo"


class DemoDevice:
    def __init__(self, proc: asyncio.subprocess.Process, password_file: Path) -> None:
        self.proc = proc
        self.password_file = password_file
        self.banner = ""

    @classmethod
    async def start(cls, folder: Path, mqtt_url: str, device: str = DEVICE) -> DemoDevice:
        password_file = folder / "demo.password"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "demo-device", device, "--mqtt-url", mqtt_url,
            "--password-file", str(password_file), env=clean_env(), cwd=folder,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        demo = cls(proc, password_file)
        assert proc.stderr is not None
        lines = []
        while "Ctrl-C stops it" not in demo.banner:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, f"relay demo-device exited: {b''.join(lines).decode()}"
            lines.append(line)
            demo.banner = b"".join(lines).decode()
        return demo

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError("relay demo-device did not stop on SIGTERM within 20 s") from None


@pytest.fixture
async def demo_fleet(relay_factory, mosquitto, tmp_path):  # noqa: F811 (fixture imported above)
    relay = await relay_factory(mqtt_url=mosquitto.url)
    demo = await DemoDevice.start(tmp_path, mosquitto.url)
    yield relay, demo, Cli(cli_env(relay))
    await demo.stop()


async def test_exec_and_forward_reach_the_demo_devices_own_ssh_server(demo_fleet):
    relay, demo, cli = demo_fleet
    assert f"relay exec {DEVICE} --user demo --password-stdin" in demo.banner
    assert stat.S_IMODE(os.stat(demo.password_file).st_mode) == 0o600
    code, out, err = await cli.run("exec", DEVICE, "--user", "demo", "--password-stdin", "-q", "--",
                                   "echo demo-$((6*7)); exit 5", input=demo.password + "\n")
    assert (code, out) == (5, "demo-42\n"), err

    # `relay forward --port 22` is mapped to the demo's own SSH server
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--listen", "127.0.0.1:0", "--port", "22",
        env=cli.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("forwarding 127.0.0.1:"), line
        port = int(line.split()[1].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        banner = await asyncio.wait_for(reader.readline(), 15)
        assert banner.startswith(b"SSH-2.0-"), banner
        writer.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_only_the_demo_account_with_its_password_logs_in(demo_fleet):
    _, demo, cli = demo_fleet
    code, _, err = await cli.run("exec", DEVICE, "--user", "demo", "--password-stdin", "--", "true",
                                 input="not-the-password\n")
    assert code == 255 and "login failed (401)" in err
    code, _, err = await cli.run("exec", DEVICE, "--user", "root", "--password-stdin", "--", "true",
                                 input=demo.password + "\n")
    assert code == 255 and "login failed (401)" in err


async def test_the_password_is_new_each_run_and_removed_on_exit(mosquitto, tmp_path):  # noqa: F811
    first = await DemoDevice.start(tmp_path, mosquitto.url)
    password = first.password
    assert await first.stop() == 0
    assert not first.password_file.exists()
    second = await DemoDevice.start(tmp_path, mosquitto.url)
    try:
        assert second.password != password and len(second.password) >= 16
    finally:
        await second.stop()


async def test_it_says_what_it_waits_for_when_there_is_no_broker(tmp_path):
    from aiohttp.test_utils import unused_port

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "demo-device", DEVICE, "--mqtt-url", f"mqtt://127.0.0.1:{unused_port()}",
        "--password-file", str(tmp_path / "pw"), env=clean_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        text = b""
        while b"is `relay serve` running?" not in text:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, text.decode()
            text += line
        assert b"waiting for the MQTT broker" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_a_bad_device_id_is_refused(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "demo-device", "bad id!", env=clean_env(), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"must be 1-128 of A-Z a-z 0-9 _ -" in err
