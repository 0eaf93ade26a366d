"""Fixtures for fault tests: a network namespace joined to the host by a veth pair, a relay
listening on an address of our choosing, and a TCP gate in front of the test sshd."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

# The device side's real parts (mosquitto, sshd, the in-process agent), reused as they are.
from tests.device.conftest import agent_factory, mosquitto, sshd  # noqa: F401


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@dataclasses.dataclass
class Netns:
    name: str
    host_if: str      # the veth end that stays on the host
    ns_if: str        # the end moved into the namespace
    host_addr: str    # the relay listens here
    ns_addr: str      # the device's address

    def exec_args(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        _ip("link", "set", self.host_if, "up" if up else "down")


@pytest.fixture
def netns() -> Any:
    """A namespace `relayf<pid>` with a veth pair; the /30 is the link-local 169.254.<pid % 256>.0/30
    (a point-to-point link between two ends the test made), used only on these two interfaces. Always removed at teardown."""
    pid = os.getpid()
    octet = pid % 256
    ns = Netns(f"relayf{pid}", f"rfh{pid}", f"rfn{pid}", f"169.254.{octet}.1", f"169.254.{octet}.2")
    try:
        made = _ip("netns", "add", ns.name, check=False)
    except FileNotFoundError:
        pytest.skip("iproute2 (`ip`) is not installed")
    if made.returncode != 0:
        if "Operation not permitted" in made.stderr or "Permission denied" in made.stderr:
            pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
        raise AssertionError(f"ip netns add failed: {made.stderr}")
    try:
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _ip("link", "set", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_addr}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.ns_addr}/30", "dev", ns.ns_if)
        _ip("-n", ns.name, "link", "set", ns.ns_if, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        _ip("link", "del", ns.host_if, check=False)   # deletes both ends of the pair
        _ip("netns", "del", ns.name, check=False)


@pytest.fixture
def relay_on(relay_factory) -> Callable[..., Any]:
    """relay_factory, on a host address of the test's choosing."""
    return relay_factory


class Gate:
    """A TCP forwarder on a fixed loopback port in front of `target_port`. `shut()` stops
    listening and cuts every connection through it (the server is gone: connections are
    refused); `open()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = unused_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def shut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self.writers.discard(w)
                    w.transport.abort()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if not writer.transport.is_closing():
                writer.write_eof()


@pytest.fixture
async def sshd_gate(sshd) -> AsyncIterator[Gate]:  # noqa: F811
    gate = Gate(sshd.port)
    await gate.open()
    yield gate
    await gate.shut()
