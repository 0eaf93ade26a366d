"""Real parts for the device side: mosquitto and OpenSSH's sshd on free loopback ports,
a plain MQTT subscriber (mosquitto_sub), and an in-process device agent.

The Debian packages come from scripts/install-system-deps.sh (`make test` runs it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from relay.agent.runner import Agent
from relay.agent.settings import AgentSettings
from relay.broker import find_mosquitto

SSH_USER = "relaytest"
SSH_PASSWORD = "relay-test-Pa55word"


def _binary(name: str, *folders: str) -> str:
    found = shutil.which(name) or next(
        (os.path.join(f, name) for f in folders if os.access(os.path.join(f, name), os.X_OK)), None)
    if not found:
        pytest.skip(f"{name} is not installed: run scripts/install-system-deps.sh")
    return found


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}: {_stderr(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{proc.args[0]} did not listen on {port} within {timeout} s")


def _stderr(proc: subprocess.Popen) -> str:
    return proc.stderr.read() if proc.stderr and proc.poll() is not None else ""


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


# -- mosquitto ---------------------------------------------------------------------------


class Mosquitto:
    """A broker on a free loopback port; `stop()` and `start()` again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.binary = find_mosquitto() or _binary("mosquitto", "/usr/sbin")
        self.port = unused_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "log_dest stderr\nlog_type error\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    async def subscribe(self, topic: str, count: int = 1, timeout: float = 10) -> Subscription:
        """A plain subscriber (mosquitto_sub, QoS 1) that collects `count` messages."""
        return await Subscription.start(self.port, topic, count, timeout)

    async def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        args = [_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-t", topic, "-m", payload]
        if retain:
            args.append("-r")
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err


class Subscription:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, port: int, topic: str, count: int, timeout: float) -> Subscription:
        # -N: no newline added; -F %j... is not needed: one message per line with %p and a separator
        proc = await asyncio.create_subprocess_exec(
            _binary("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
            "-C", str(count), "-W", str(int(timeout)), "-F", "%t\t%p",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.3)   # let it subscribe before the test publishes
        return cls(proc)

    async def messages(self) -> list[tuple[str, bytes]]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 15)
        found = []
        for line in out.splitlines():
            topic, _, payload = line.partition(b"\t")
            found.append((topic.decode(), payload))
        return found

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


# -- sshd --------------------------------------------------------------------------------


@dataclasses.dataclass
class Sshd:
    port: int
    user: str = SSH_USER
    password: str = SSH_PASSWORD


def _ensure_user() -> None:
    if subprocess.run(["id", SSH_USER], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip(f"the test user {SSH_USER!r} is missing and only root may create it")
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", SSH_USER], check=True, capture_output=True)
    if os.geteuid() == 0:
        subprocess.run(["chpasswd"], input=f"{SSH_USER}:{SSH_PASSWORD}", text=True, check=True, capture_output=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    binary = _binary("sshd", "/usr/sbin")
    keygen = _binary("ssh-keygen", "/usr/bin")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to log users in")
    _ensure_user()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # its privilege-separation directory
    folder = tmp_path_factory.mktemp("sshd")
    key = folder / "host_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = unused_port()
    conf = folder / "sshd_config"
    conf.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {key}", f"PidFile {folder / 'sshd.pid'}",
        "UsePAM no", "PasswordAuthentication yes", "KbdInteractiveAuthentication no", "PubkeyAuthentication no",
        "PermitRootLogin no", f"AllowUsers {SSH_USER}", "StrictModes no", "UseDNS no", "PrintMotd no",
        "PrintLastLog no", "MaxAuthTries 3", "LogLevel ERROR", "",
    ]))
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc)
        yield Sshd(port)
    finally:
        stop_process(proc)


# -- the agent ---------------------------------------------------------------------------


@pytest.fixture
async def agent_factory():
    agents: list[Agent] = []

    async def start(device_id: str, mqtt_url: str, **overrides: Any) -> Agent:
        settings = AgentSettings(device_id=device_id, mqtt_url=mqtt_url, reconnect_initial=0.2,
                                 mqtt_reconnect_delay=0.2, **overrides)
        agent = Agent(settings)
        await agent.start()
        agents.append(agent)
        await asyncio.wait_for(agent.link.connected.wait(), 10)
        return agent

    yield start
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.stop()


async def eventually(predicate, timeout: float = 10, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Wait until `predicate()` (maybe a coroutine function) is true; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
