"""Real servers the tests start on loopback and stop afterwards."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999   # Linux's default


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, chosen *below* the kernel's ephemeral range.

    A port the kernel hands out for bind(0) is in the ephemeral range, and between the test
    choosing it and a server binding it (seconds, for a container) any outgoing connection
    may take it as its local port: a CI run lost a replica that way ("address already in
    use"). Below the range only a server that chose it on purpose can hold it."""
    low, _ = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    rng = random.SystemRandom()
    if len(_handed_out) > (low - first) // 2:
        _handed_out.clear()
    for _ in range(500):
        port = rng.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as a server binds it
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {first}-{low - 1}")


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


class RedisServer:
    """redis-server (Debian's package) on a free loopback port; no persistence unless
    `start_args` asks for it."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/install-system-deps.sh (make test does)")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start_args: list[str] = ["--save", "", "--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), *self.start_args,
             "--dir", str(self.folder), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
