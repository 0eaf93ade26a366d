"""End-to-end relay benchmark: our relay against a naive aiohttp relay and a picows relay.

For each relay, message size (256 B, 10 KB) and tunnel count (1, 100): devices send
`command_response` envelopes, pipelined, to their sources through the relay. Reported: the
relay process's CPU time per relayed message (user + system, from the process's own
accounting via psutil), messages per second and MB/s. Every run is bounded in message count
and time; all traffic stays on 127.0.0.1.

    python benchmarks/relay_bench.py [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
import json
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
API_TOKEN = "bench-token-0123456789abcdef"
RUN_LIMIT = float(os.environ.get("BENCH_RUN_LIMIT", "120"))  # seconds any one measurement may take


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envelope(size: int, request_id: str = "r") -> bytes:
    """A command_response of exactly `size` bytes whose data looks like shell output."""
    head = {"operation_type": "command_response", "tunnel_service_type": "ssh", "request_id": request_id, "data": ""}
    base = len(orjson.dumps(head))
    line = "drwxr-xr-x  2 root root 4096 Nov 24 16:18 bin\n"
    text = (line * (size // len(line) + 1))[: size - base - 20]
    # \n becomes \\n in JSON: grow the text until the encoded size is exact
    while True:
        body = orjson.dumps({**head, "data": text})
        if len(body) == size:
            return body
        if len(body) > size:
            text = text[: -(len(body) - size)] if len(body) - size < len(text) else ""
        else:
            text += "x" * (size - len(body))


def masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    else:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return header + mask + masked


def server_frame_len(payload_len: int) -> int:
    return payload_len + (2 if payload_len < 126 else 4)


class Client(asyncio.Protocol):
    """One end: does the upgrade, then either pumps pre-built frames or counts bytes."""

    def __init__(self, request: bytes, skip_first_frame: bool) -> None:
        self.request = request
        self.skip_first_frame = skip_first_frame
        self.head = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.expected = 0
        self.received = 0
        self.finished: asyncio.Future | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.pending = b""

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            data = rest
        if self.skip_first_frame:
            self.pending += data
            if len(self.pending) < 2:
                return
            n = self.pending[1] & 0x7F
            if len(self.pending) < 2 + n:
                return
            data = self.pending[2 + n:]
            self.skip_first_frame = False
            self.pending = b""
        self.received += len(data)
        if self.finished is not None and self.received >= self.expected and not self.finished.done():
            self.finished.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before upgrade"))
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionError(f"closed after {self.received} of {self.expected} bytes"))


def upgrade_request(port: int, path: str, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if token:
        lines.append(f"tunnel_access_token: {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Relay:
    """A relay under test, in its own process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, ours: bool = False) -> None:
        self.name, self.ours = name, ours
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        env = {"RELAY_MQTT_URL": "none", **(env or {})}  # the relay alone: no MQTT broker
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)
        self.source_port = self.device_port = self.port

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def new_tunnels(self, count: int) -> list[tuple[str, str | None, str | None]]:
        if not self.ours:
            return [(f"00000000-0000-4000-8000-{i:012d}", None, None) for i in range(count)]
        tunnels = []
        for i in range(count):
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v5/iot/bench/tunnels",
                data=json.dumps({"device_id": f"bench-{time.monotonic_ns()}-{i}"}).encode(),
                headers={"X-Auth-Token": API_TOKEN, "Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
            tunnels.append((body["tunnel_id"], body["tunnel_access_token"], body["device_access_token"]))
        return tunnels

    def close_tunnels(self, tunnels) -> None:  # type: ignore[no-untyped-def]
        if not self.ours:
            return
        for tunnel_id, _, _ in tunnels:
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v5/iot/bench/tunnels/{tunnel_id}",
                                         headers={"X-Auth-Token": API_TOKEN}, method="PUT")
            urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


class SplitPair:
    """Two replicas of our relay sharing a Redis: sources connect to one, devices to the
    other, so every message crosses the bridge. CPU is the sum of both processes."""

    def __init__(self, name: str, local: bool) -> None:
        import shutil
        import tempfile
        self.name, self.ours = name, True
        self.folder = tempfile.mkdtemp(prefix="relay-bench-")
        redis_port = free_port()
        self.redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
                                       "--port", str(redis_port), "--save", "", "--appendonly", "no",
                                       "--dir", self.folder], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        self.replicas = []
        for i in (1, 2):
            env = {"RELAY_API_TOKENS": f"bench:bench:{API_TOKEN}", "RELAY_MAX_TUNNELS_PER_PROJECT": "100000",
                   "RELAY_LOG_LEVEL": "WARNING", "RELAY_STORE_URL": f"redis://127.0.0.1:{redis_port}/0",
                   "RELAY_INTERNAL_PORT": str(free_port()), "RELAY_REPLICA_ID": f"bench-{i}"}
            self.replicas.append(Relay(f"{name}-{i}", [sys.executable, "-m", "relay.cli", "serve", "--port", "{port}"],
                                       env, ours=True))
        self.port = self.replicas[0].port
        self.source_port = self.replicas[0].port
        self.device_port = self.replicas[0].port if local else self.replicas[1].port

    def cpu(self) -> float:
        return sum(r.cpu() for r in self.replicas)

    def new_tunnels(self, count):  # type: ignore[no-untyped-def]
        return self.replicas[0].new_tunnels(count)

    def close_tunnels(self, tunnels) -> None:  # type: ignore[no-untyped-def]
        self.replicas[0].close_tunnels(tunnels)

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.redis.terminate()
        self.redis.wait()


async def measure(relay: Relay, size: int, tunnels: int, messages: int) -> dict:
    loop = asyncio.get_running_loop()
    ids = relay.new_tunnels(tunnels)
    payload = envelope(size)
    per_write = max(1, 16384 // len(payload))
    chunk = b"".join(masked_frame(payload) for _ in range(per_write))
    per_tunnel = max(per_write, messages // tunnels // per_write * per_write)
    total = per_tunnel * tunnels
    pairs = []
    for tunnel_id, source_token, device_token in ids:
        base = f"/v5/iot/tunnels/{tunnel_id}"
        _, source = await loop.create_connection(
            lambda: Client(upgrade_request(relay.source_port, base + "/source-connect", source_token), relay.ours),
            "127.0.0.1", relay.source_port)
        await source.upgraded
        _, device = await loop.create_connection(
            lambda: Client(upgrade_request(relay.device_port, base + "/device-connect", device_token), False),
            "127.0.0.1", relay.device_port)
        await device.upgraded
        source.expected = per_tunnel * server_frame_len(len(payload))
        source.finished = loop.create_future()
        pairs.append((source, device))
    if relay.ours:  # wait for connect_tunnel (sent once the bridge, if any, is up)
        for _ in range(1000):
            if all(not s.skip_first_frame for s, _ in pairs):
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)

    async def pump(device: Client) -> None:
        for _ in range(per_tunnel // per_write):
            if not device.writable.is_set():
                await device.writable.wait()
            device.transport.write(chunk)

    cpu0, t0 = relay.cpu(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(pump(d) for _, d in pairs), *(s.finished for s, _ in pairs)), RUN_LIMIT)
    wall = time.perf_counter() - t0
    cpu = relay.cpu() - cpu0
    for s, d in pairs:
        s.transport.close()
        d.transport.close()
    relay.close_tunnels(ids)
    await asyncio.sleep(0.2)
    return {
        "relay": relay.name, "size": size, "tunnels": tunnels, "messages": total,
        "cpu_us_per_msg": cpu / total * 1e6, "msgs_per_s": total / wall,
        "mb_per_s": total * len(payload) / wall / 1e6,
        "mb_per_cpu_s": total * len(payload) / cpu / 1e6 if cpu else float("inf"),
    }


def relays(selected: set[str]) -> list[tuple[str, list[str], dict[str, str], bool]]:
    py = sys.executable
    ours_env = {"RELAY_API_TOKENS": f"bench:bench:{API_TOKEN}", "RELAY_MAX_TUNNELS_PER_PROJECT": "100000",
                "RELAY_LOG_LEVEL": "WARNING"}
    serve = [py, "-m", "relay.cli", "serve", "--port", "{port}", "--db", ":memory:"]
    all_relays = [
        ("relay (rust codec)", serve, {**ours_env, "RELAY_CODEC": "rust"}, True),
        ("relay (python twin)", serve, {**ours_env, "RELAY_CODEC": "python"}, True),
        # Session recording on (docs/audit.md): every terminal message goes to the recorder.
        ("relay (rust, recording)", serve, {**ours_env, "RELAY_CODEC": "rust", "RELAY_RECORD_PROJECTS": "bench"}, True),
        ("naive aiohttp", [py, "-m", "benchmarks.baselines.naive_aiohttp", "{port}"], {}, False),
        ("picows", [py, "-m", "benchmarks.baselines.picows_relay", "{port}"], {}, False),
    ]
    return [r for r in all_relays if not selected or any(s in r[0] for s in selected)]


async def run(args: argparse.Namespace) -> list[dict]:
    results = []
    sizes = [256, 10240]
    counts = {256: 20_000 if args.quick else 200_000, 10240: 5_000 if args.quick else 40_000}
    chosen = relays(set(args.only or []))
    if args.replicas:
        chosen = [("replicas: local pair", [], {}, True), ("replicas: split pair", [], {}, True)]
    for name, argv, env, ours in chosen:
        relay = SplitPair(name, local="local" in name) if name.startswith("replicas") else Relay(name, argv, env, ours)
        try:
            for size in sizes:
                for tunnels in (1, 100):
                    result = await measure(relay, size, tunnels, counts[size])
                    results.append(result)
                    print(f"{name:22} {size:>6} B x{tunnels:<4} {result['cpu_us_per_msg']:8.2f} us/msg "
                          f"{result['msgs_per_s']:>10,.0f} msg/s {result['mb_per_s']:8.1f} MB/s "
                          f"{result['mb_per_cpu_s']:8.1f} MB per CPU-s", flush=True)
        finally:
            relay.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    parser.add_argument("--only", action="append", help="run only relays whose name contains this")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--replicas", action="store_true",
                        help="compare a pair split across two replicas (Redis + bridge) with a local pair")
    args = parser.parse_args()
    import uvloop
    uvloop.install()
    results = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
