"""A demo device on this machine (`relay demo-device`): the agent plus an SSH server of its own.

A newcomer has a relay but rarely a device with an SSH server whose password they know. This
module gives the agent one: an SSH server on a loopback port (relay/agent/ssh.py), one account (`demo`, with a
random password written to a 0600 file), which opens the shell of the user running it on a
pseudo-terminal. Through it `relay ssh`, `relay exec`, `relay forward --port 22` and the
console's terminal all work on one machine, with no root and no system sshd.

It is never part of `relay agent`: it hands a shell of the user who runs it to whoever holds the
password, so it belongs on a developer's machine only (docs/demo.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

from relay.agent.runner import Agent
from relay.agent.settings import AgentSettings
from relay.agent.ssh import DEMO_USER, DemoSshServer

log = logging.getLogger(__name__)


def write_password_file(path: Path) -> str:
    """A new random password in `path` (0600, replaced atomically); returned."""
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.replace(tmp, path)
    return password


def banner(device_id: str, mqtt_url: str, ssh_port: int, password_file: Path) -> str:
    """What `relay demo-device` prints once it is ready: how to reach it, and what it is."""
    pw = str(password_file)
    return (
        f"demo device {device_id} is running: its agent is on MQTT {mqtt_url}, its own SSH server on "
        f"127.0.0.1:{ssh_port}\n"
        f"  log in as user '{DEMO_USER}'; the password (new each run) is in {pw}\n"
        f"  try: relay exec {device_id} --user {DEMO_USER} --password-stdin -- uname -a < {pw}\n"
        f"       relay ssh {device_id} --user {DEMO_USER}        (type the password from {pw})\n"
        f"  DEMO ONLY: it gives your shell to whoever has that password; never run it on a real device.\n"
        f"  Ctrl-C stops it.")


async def run_demo(settings: AgentSettings, password_file: Path, print_banner: Callable[[str], None]) -> int:
    """The SSH server, then the agent pointed at it, until SIGINT or SIGTERM."""
    password = write_password_file(password_file)
    server = DemoSshServer(password)
    await server.start()
    settings = dataclasses.replace(
        settings, ssh_host="127.0.0.1", ssh_port=server.port, forward_host="127.0.0.1",
        forward_ports=(22,), forward_port_map=((22, server.port),),
        aws_services=(("SSH", "127.0.0.1", server.port),))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings)
    try:
        await agent.start()
        # the banner says "running" only once the device is on the broker (and can hear notifies)
        connected = asyncio.create_task(agent.link.connected.wait())
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({connected, stopping}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                print_banner(f"demo device {settings.device_id}: waiting for the MQTT broker at {settings.mqtt_url} "
                             f"(is `relay serve` running? it starts the broker; run this command in the relay's directory, where the "
                             f"broker's accounts are)...")
                await asyncio.wait({connected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            stopping.cancel()
        if not stop.is_set():
            print_banner(banner(settings.device_id, settings.mqtt_url, server.port, password_file))
            await stop.wait()
    finally:
        await agent.stop()
        await server.stop()
        with contextlib.suppress(FileNotFoundError):
            password_file.unlink()   # the password dies with the server
    log.info("demo device stopped")
    return 0
