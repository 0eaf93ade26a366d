"""Fixtures for the application side: the `relay` command run as a user runs it, against an
in-process relay with real mosquitto, real sshd and the device agent (tests/device's)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any

import pytest

from tests.conftest import TOKEN_A
from tests.device.conftest import SSH_PASSWORD, SSH_USER, agent_factory, mosquitto, sshd  # noqa: F401 (fixtures)
from tests.test_serve import clean_env

DEVICE = "dev-cli"


@dataclasses.dataclass
class Cli:
    """`relay ...` in a subprocess, aimed at the relay of the test through the environment."""
    env: dict[str, str]

    async def run(self, *args: str, input: str | None = None, timeout: float = 40,
                  env: dict[str, str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", *args, env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(f"relay {' '.join(args)} did not finish within {timeout} s: {err.decode()}") from None
        return proc.returncode, out.decode(), err.decode()


def cli_env(relay: Any, **extra: str) -> dict[str, str]:
    return clean_env(RELAY_URL=relay.url, RELAY_API_TOKEN=TOKEN_A, RELAY_PROJECT="proj-a", **extra)


@pytest.fixture
async def fleet(relay_factory, mosquitto, sshd, agent_factory):  # noqa: F811 (fixtures imported above)
    """(relay, Cli, start_agent): a relay with a broker, and agents serving the real sshd."""
    relay = await relay_factory(mqtt_url=mosquitto.url)

    async def start_agent(device_id: str = DEVICE, **overrides: Any):  # type: ignore[no-untyped-def]
        return await agent_factory(device_id, mosquitto.url, ssh_port=sshd.port, **overrides)

    cli = Cli(cli_env(relay, RELAY_SSH_PASSWORD=SSH_PASSWORD, RELAY_SSH_USER=SSH_USER))
    return relay, cli, start_agent
