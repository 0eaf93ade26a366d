"""The local multi-replica rig: Redis, three relay processes and haproxy, all on loopback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.servers import RedisServer, free_port, wait_for_port
from tests.test_serve import clean_env

TOKEN = "rig-token-0123456789abcdef0123"
BRIDGE_SECRET = "rig-bridge-secret-0123456789abcdef0123456789"   # the replicas' shared secret
# How often a replica pings a quiet client. A test's aiohttp client answers a ping only while
# it waits in receive(), and a replica drops a client that has not answered after two more
# intervals: at 1 s a test that spent 3 s elsewhere (a replica stopping, Redis restarting, a
# loaded CI machine) lost its idle connections. No rig test is about heartbeats (tests/faults
# and tests/aws/test_faults.py are, on relays of their own).
HEARTBEAT_INTERVAL = "10"


class Replica:
    def __init__(self, name: str, folder: Path, redis_url: str, public_url: str) -> None:
        self.name = name
        self.folder = folder
        self.redis_url = redis_url
        self.public_url = public_url
        self.port = free_port()
        self.internal_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = clean_env(RELAY_API_TOKENS=f"p1:rig:{TOKEN}", RELAY_LOG_LEVEL="INFO", RELAY_BRIDGE_SECRET=BRIDGE_SECRET)
        self.log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 (held until stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--port", str(self.port), "--public-url", self.public_url,
             "--store-url", self.redis_url, "--internal-port", str(self.internal_port), "--replica-id", self.name,
             "--reconcile-interval", "0.5", "--drain-seconds", "1", "--heartbeat-interval", HEARTBEAT_INTERVAL],
            cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for_port(self.internal_port, self.proc, f"relay {self.name}")
        wait_for_port(self.port, self.proc, f"relay {self.name}")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.internal_port}/readyz", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code


SHIPPED_HAPROXY = Path(__file__).resolve().parents[2] / "deploy" / "local" / "haproxy.cfg"


def shipped_haproxy_config(lb_port: int, stats_port: int, replicas: list[Replica]) -> str:
    """deploy/local/haproxy.cfg as shipped, only its ports moved to these replicas' (so the
    tests run the very settings users get: retries, redispatch, health checks)."""
    text = SHIPPED_HAPROXY.read_text()
    moves = [(r"bind 127\.0\.0\.1:18080\b", f"bind 127.0.0.1:{lb_port}"),
             (r"bind 127\.0\.0\.1:18089\b", f"bind 127.0.0.1:{stats_port}")]
    moves += [(rf"server {r.name} 127\.0\.0\.1:\d+ check port \d+",
               f"server {r.name} 127.0.0.1:{r.port} check port {r.internal_port}") for r in replicas]
    for pattern, replacement in moves:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"{pattern!r} is not once in {SHIPPED_HAPROXY}"
    return text


class Haproxy:
    def __init__(self, folder: Path, replicas: list[Replica], port: int | None = None) -> None:
        self.port = port or free_port()
        self.stats_port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(shipped_haproxy_config(self.port, self.stats_port, replicas))
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.proc = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "haproxy")

    def stats(self) -> dict[str, dict[str, str]]:
        """haproxy's stats CSV: a row per proxy/server name ("relays/r2", "relays/BACKEND")."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {f"{row['pxname']}/{row['svname']}": row for row in rows}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Rig:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.redis = RedisServer(folder / "redis")
        self.redis.start_args = ["--appendonly", "yes"]
        self.redis.start()
        public = f"http://127.0.0.1:{free_port()}"  # replaced below once haproxy's port is known
        self.replicas = [self.new_replica(f"r{i}", public) for i in (1, 2, 3)]
        self.lb_port = free_port()
        for r in self.replicas:
            r.public_url = f"http://127.0.0.1:{self.lb_port}"
            r.start()
        self.haproxy = None

    def new_replica(self, name: str, public_url: str) -> Replica:
        """A replica process; tests/image runs each in a container of the relay's image instead."""
        return Replica(name, self.folder, self.redis.url, public_url)

    def start_lb(self) -> Haproxy:
        # on the port of the replicas' public URL, so that the tunnel_uri they hand out leads to it
        self.haproxy = Haproxy(self.folder, self.replicas, self.lb_port)
        return self.haproxy

    def call(self, base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"X-Auth-Token": TOKEN, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each replica's log (health checks left out)."""
        parts = []
        for r in self.replicas:
            path = self.folder / f"{r.name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            kept = [line for line in text.splitlines() if "/readyz" not in line and "/healthz" not in line]
            parts.append(f"--- {r.name} ---\n" + "\n".join(kept[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for r in self.replicas:
            r.stop()
        self.redis.stop()


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path)
    yield rig
    rig.stop()
