"""A managed MQTT broker: mosquitto as a child process of the relay.

So that `relay serve` on its defaults also gives devices a broker: when no `--mqtt-url` is
given and a `mosquitto` binary is installed, the relay runs one on 127.0.0.1:1883 (loopback
only, anonymous, no persistence: the notify outbox lives in the relay's own store) and stops
it when it stops. Deployments point `--mqtt-url` at their own broker instead. Why mosquitto
and not a broker written in Python inside the relay: it is the broker deployments most often
run, it is one Debian package, it does MQTT 3.1.1 and 5 completely (retained messages, last
wills, QoS 1 and 2), and it costs the relay's event loop nothing. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from relay.errors import ConfigError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in EXTRA_DIRS:
        candidate = os.path.join(folder, "mosquitto")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedBroker:
    def __init__(self, host: str, port: int, binary: str | None = None) -> None:
        self.host = host
        self.port = port
        self.binary = binary or find_mosquitto()
        self.process: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if port_answers(self.host, self.port):
            log.warning("something already listens on %s:%s; using it as the MQTT broker instead of starting one",
                        self.host, self.port)
            return
        if not self.binary:
            raise ConfigError("no mosquitto binary found: install mosquitto, or give --mqtt-url (or --mqtt-url none)")
        self._dir = tempfile.TemporaryDirectory(prefix="relay-mosquitto-")
        conf = os.path.join(self._dir.name, "mosquitto.conf")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(config_text(self.host, self.port))
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-c", conf,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._log_task = asyncio.create_task(self._forward_log(), name="mosquitto-log")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await asyncio.to_thread(port_answers, self.host, self.port, 0.2):
            if self.process.returncode is not None or loop.time() > deadline:
                code = self.process.returncode
                await self.stop()
                raise ConfigError(f"the managed mosquitto did not start on {self.host}:{self.port}"
                                  f" ({'exit code ' + str(code) if code is not None else 'timed out'});"
                                  f" its messages are in the log above")
            await asyncio.sleep(0.05)
        log.info("started mosquitto on %s:%s (pid %s)", self.host, self.port, self.process.pid)

    async def _forward_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            log.info("mosquitto: %s", raw.decode("utf-8", "replace").rstrip())

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
                except asyncio.TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            log.info("stopped mosquitto")
        if self._log_task is not None:
            try:
                await asyncio.wait_for(self._log_task, STOP_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            self._log_task = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel stop mosquitto when the relay dies
    without cleaning up (SIGKILL, a crash), so no orphan broker keeps the port. The kernel
    forgets this when mosquitto changes its user, which it does when started as root (it
    drops to the `mosquitto` user): then an orphan may stay, and the next relay finds the
    port answering and uses that broker."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def config_text(host: str, port: int) -> str:
    return (
        "# written by the relay for its managed broker\n"
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "connection_messages false\n"
    )
