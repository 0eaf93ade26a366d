"""End-to-end relay benchmark: our relay against a naive aiohttp relay and a picows relay.

For each relay, message size (256 B, 10 KB) and tunnel count (1, 100): devices send
`command_response` envelopes, pipelined, to their sources through the relay. Reported: the
relay process's CPU time per relayed message (user + system, from the process's own
accounting via psutil), messages per second and MB/s. Every run is bounded in message count
and time; all traffic stays on 127.0.0.1.

`--protocol aws`: the same on AWS-protocol tunnels, our relay only (the baselines speak the
Huawei envelopes): after SERVICE_IDS and the source's STREAM_START, destinations send DATA
tunnel messages of the same total size (2-byte length + protobuf, the payload shell output),
one per binary WebSocket frame, to their sources.

`--shape per-read`: one message per read instead of pipelined messages: 200 tunnels (--tunnels),
each device sending one 256 B envelope 50 times a second (--rate), spread evenly, so that every
read of the relay carries one message; our relay beside the naive aiohttp and picows relays,
rounds interleaved (--rounds), the relay process's CPU per message.

    python benchmarks/relay_bench.py [--quick] [--json results.json] [--protocol aws]
    python benchmarks/relay_bench.py --shape per-read [--quick] [--only picows --only "rust codec"]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import json
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One home for choosing a free loopback port (below the kernel's ephemeral range: a port from
# bind(0), released and bound by a server seconds later, may meanwhile become some outgoing
# connection's local port; a rathole service once lost its port that way in CI).
from tests.servers import free_port  # noqa: E402
API_TOKEN = "bench-token-0123456789abcdef"
AWS_SERVICE = "SSH"   # the one service of the AWS-protocol tunnels the benchmarks create
RUN_LIMIT = float(os.environ.get("BENCH_RUN_LIMIT", "120"))  # seconds any one measurement may take


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


def aws_data_message(size: int, connection_id: int = 1) -> bytes:
    """A framed DATA tunnel message (relay.aws_messages.frame: 2-byte length + protobuf) of
    exactly `size` bytes, on stream 1 of AWS_SERVICE, its payload shell output."""
    from relay.aws_messages import MessageType, ProxyMessage, frame
    line = b"drwxr-xr-x  2 root root 4096 Nov 24 16:18 bin\n"
    n = size
    for _ in range(100):
        msg = frame(ProxyMessage(MessageType.DATA, 1, payload=(line * (n // len(line) + 1))[:n],
                                 service_id=AWS_SERVICE, connection_id=connection_id))
        if len(msg) == size:
            return msg
        n -= max(1, len(msg) - size) if len(msg) > size else -1
    raise ValueError(f"no DATA message of {size} bytes")


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked FIN frame, text by default (opcode 0x2: binary, for AWS tunnels)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    # XOR of the payload and the repeated mask as two big integers: ~15x faster than byte by
    # byte, which matters to the load test's generator (one frame per message)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    masked = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
    return header + mask + masked


def server_frame_len(payload_len: int) -> int:
    return payload_len + (2 if payload_len < 126 else 4)


class UpgradingClient(asyncio.Protocol):
    """One end: does the upgrade, then either pumps pre-built frames or counts what it gets
    (`count`, by protocol)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.head = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.expected = 0
        self.received = 0
        self.finished: asyncio.Future | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        self.count(data)
        if self.finished is not None and self.received >= self.expected and not self.finished.done():
            self.finished.set_result(None)

    def count(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before upgrade"))
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionError(f"closed after {self.received} of {self.expected} bytes"))


class Client(UpgradingClient):
    """One end of a Huawei tunnel: counts the bytes it gets, after the source's first frame
    (connect_tunnel) when `skip_first_frame`."""

    def __init__(self, request: bytes, skip_first_frame: bool) -> None:
        super().__init__(request)
        self.skip_first_frame = skip_first_frame
        self.pending = b""

    def count(self, data: bytes) -> None:
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


class AwsClient(UpgradingClient):
    """One end of an AWS tunnel: counts the payload bytes of the binary frames it gets (the
    relay packs the tunnel messages of one read into as few frames as it can, so frames and
    messages do not match one to one). Control frames are not counted."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.header = b""        # an incomplete frame header
        self.left = 0            # payload bytes of the current frame still to come
        self.counting = True     # the current frame is a data frame

    def count(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.left:
                take = min(self.left, end - pos)
                self.left -= take
                pos += take
                if self.counting:
                    self.received += take
                continue
            header = self.header + data[pos:pos + 14]
            if len(header) < 2:
                self.header = header
                break
            code = header[1] & 0x7F
            size = 2 if code < 126 else 4 if code == 126 else 10
            if len(header) < size:
                self.header = header
                break
            pos += size - len(self.header)
            self.header = b""
            self.left = code if code < 126 else int.from_bytes(header[2:size], "big")
            self.counting = header[0] & 0x0F in (0x0, 0x2)

    async def wait_for_bytes(self, count: int, timeout: float = 30) -> None:
        """Until `count` payload bytes came (the handshake's messages)."""
        deadline = time.monotonic() + timeout
        while self.received < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.received} of {count} bytes")
            await asyncio.sleep(0.005)


def upgrade_request(port: int, path: str, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if token:
        lines.append(f"tunnel_access_token: {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


AWS_SUBPROTOCOLS = {2: "aws.iot.securetunneling-2.0", 3: "aws.iot.securetunneling-3.0"}


def aws_upgrade_request(port: int, mode: str, token: str, version: int = 3) -> bytes:
    """The AWS data plane's handshake (docs/aws.md): GET /tunnel?local-proxy-mode=source|destination,
    the token in the `access-token` header, one subprotocol offered."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET /tunnel?local-proxy-mode={mode} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Protocol: {AWS_SUBPROTOCOLS[version]}", f"access-token: {token}"]
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
                    raise RuntimeError(f"{name} exited: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)
        self.source_port = self.device_port = self.port

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def new_tunnels(self, count: int, protocol: str = "huawei") -> list[tuple[str, str | None, str | None]]:
        """(tunnel id, source token, device token) of `count` new tunnels; `protocol` "aws":
        AWS-protocol tunnels with one service, AWS_SERVICE (the tokens are then the source and
        destination access tokens)."""
        if not self.ours:
            return [(f"00000000-0000-4000-8000-{i:012d}", None, None) for i in range(count)]
        tunnels = []
        extra = {"protocol": "aws", "services": [AWS_SERVICE]} if protocol == "aws" else {}
        for i in range(count):
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v5/iot/bench/tunnels",
                data=json.dumps({"device_id": f"bench-{time.monotonic_ns()}-{i}", **extra}).encode(),
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
                   "RELAY_INTERNAL_PORT": str(free_port()), "RELAY_REPLICA_ID": f"bench-{i}",
                   "RELAY_BRIDGE_SECRET": "bench-bridge-secret-0123456789abcdef0123456789"}
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


async def open_aws_pairs(relay: Relay, ids: list, per_tunnel_bytes: int) -> list[tuple[AwsClient, AwsClient]]:
    """Source and destination of each AWS tunnel, past SERVICE_IDS and the source's STREAM_START
    (stream 1, connection 1); each source then waits for `per_tunnel_bytes` of data frames."""
    from relay.aws_messages import MessageType, ProxyMessage, frame
    loop = asyncio.get_running_loop()
    service_ids = len(frame(ProxyMessage(MessageType.SERVICE_IDS, available_service_ids=(AWS_SERVICE,))))
    stream_start = frame(ProxyMessage(MessageType.STREAM_START, 1, service_id=AWS_SERVICE, connection_id=1))
    pairs = []
    for _, source_token, destination_token in ids:
        _, source = await loop.create_connection(
            lambda source_token=source_token: AwsClient(aws_upgrade_request(relay.source_port, "source", source_token)),
            "127.0.0.1", relay.source_port)
        await source.upgraded
        _, destination = await loop.create_connection(
            lambda destination_token=destination_token: AwsClient(
                aws_upgrade_request(relay.device_port, "destination", destination_token)),
            "127.0.0.1", relay.device_port)
        await destination.upgraded
        # SERVICE_IDS to both: both are attached, so the stream can start
        await asyncio.gather(source.wait_for_bytes(service_ids), destination.wait_for_bytes(service_ids))
        source.transport.write(masked_frame(stream_start, opcode=0x2))
        await destination.wait_for_bytes(service_ids + len(stream_start))
        source.expected = source.received + per_tunnel_bytes
        source.finished = loop.create_future()
        pairs.append((source, destination))
    return pairs


async def open_pairs(relay: Relay, ids: list, aws: bool, per_tunnel_bytes: int, payload_len: int,
                     per_tunnel: int) -> list:
    """(source, device) of each tunnel, upgraded; each source then waits for `per_tunnel`
    messages (`per_tunnel_bytes` of AWS data frames)."""
    loop = asyncio.get_running_loop()
    pairs: list = await open_aws_pairs(relay, ids, per_tunnel_bytes) if aws else []
    for tunnel_id, source_token, device_token in [] if aws else ids:
        base = f"/v5/iot/tunnels/{tunnel_id}"
        _, source = await loop.create_connection(
            lambda base=base, source_token=source_token: Client(
                upgrade_request(relay.source_port, base + "/source-connect", source_token), relay.ours),
            "127.0.0.1", relay.source_port)
        await source.upgraded
        _, device = await loop.create_connection(
            lambda base=base, device_token=device_token: Client(
                upgrade_request(relay.device_port, base + "/device-connect", device_token), False),
            "127.0.0.1", relay.device_port)
        await device.upgraded
        source.expected = per_tunnel * server_frame_len(payload_len)
        source.finished = loop.create_future()
        pairs.append((source, device))
    if relay.ours and not aws:  # wait for connect_tunnel (sent once the bridge, if any, is up)
        for _ in range(1000):
            if all(not s.skip_first_frame for s, _ in pairs):
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    return pairs


async def close_pairs(relay: Relay, ids: list, pairs: list) -> None:
    for s, d in pairs:
        s.transport.close()
        d.transport.close()
    relay.close_tunnels(ids)
    await asyncio.sleep(0.2)


async def measure(relay: Relay, size: int, tunnels: int, messages: int, protocol: str = "huawei") -> dict:
    ids = relay.new_tunnels(tunnels, protocol)
    aws = protocol == "aws"
    payload = aws_data_message(size) if aws else envelope(size)
    per_write = max(1, 16384 // len(payload))
    chunk = b"".join(masked_frame(payload, opcode=0x2 if aws else 0x1) for _ in range(per_write))
    per_tunnel = max(per_write, messages // tunnels // per_write * per_write)
    total = per_tunnel * tunnels
    pairs = await open_pairs(relay, ids, aws, per_tunnel * len(payload), len(payload), per_tunnel)

    async def pump(device: Client | AwsClient) -> None:
        for _ in range(per_tunnel // per_write):
            if not device.writable.is_set():
                await device.writable.wait()
            device.transport.write(chunk)

    cpu0, t0 = relay.cpu(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(pump(d) for _, d in pairs), *(s.finished for s, _ in pairs)), RUN_LIMIT)
    wall = time.perf_counter() - t0
    cpu = relay.cpu() - cpu0
    await close_pairs(relay, ids, pairs)
    return {
        "relay": relay.name, "protocol": protocol, "size": size, "tunnels": tunnels, "messages": total,
        "cpu_us_per_msg": cpu / total * 1e6, "msgs_per_s": total / wall,
        "mb_per_s": total * len(payload) / wall / 1e6,
        "mb_per_cpu_s": total * len(payload) / cpu / 1e6 if cpu else float("inf"),
    }


async def measure_per_read(relay: Relay, size: int, tunnels: int, rate: float, seconds: float,
                           protocol: str = "huawei") -> dict:
    """The one-message-per-read shape: every device sends one `size`-byte message every 1/rate
    s, the tunnels' sends spread evenly over that period, so each read of the relay carries
    one message (a terminal's keystrokes and short outputs, not a bulk transfer). Reported:
    the relay's CPU per message, which here is dominated by the system calls per message."""
    ids = relay.new_tunnels(tunnels, protocol)
    aws = protocol == "aws"
    payload = aws_data_message(size) if aws else envelope(size)
    frame = masked_frame(payload, opcode=0x2 if aws else 0x1)
    per_tunnel = max(1, round(rate * seconds))
    total = per_tunnel * tunnels
    pairs = await open_pairs(relay, ids, aws, per_tunnel * len(payload), len(payload), per_tunnel)
    devices = [d for _, d in pairs]
    interval = 1 / (rate * tunnels)     # between two sends, over all tunnels

    async def pace() -> None:
        sent, started = 0, time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - started) / interval) + 1)
            while sent < due:
                devices[sent % tunnels].transport.write(frame)
                sent += 1
            await asyncio.sleep(0.001)

    cpu0, t0 = relay.cpu(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(pace(), *(s.finished for s, _ in pairs)), RUN_LIMIT)
    wall = time.perf_counter() - t0
    cpu = relay.cpu() - cpu0
    await close_pairs(relay, ids, pairs)
    return {
        "relay": relay.name, "protocol": protocol, "shape": "per-read", "size": size, "tunnels": tunnels,
        "messages": total, "rate_per_tunnel": rate, "cpu_us_per_msg": cpu / total * 1e6, "msgs_per_s": total / wall,
        "cpu_share": cpu / wall,
    }


RUST_BASELINE = ROOT / "benchmarks" / "baselines" / "rust_relay"
RUST_TARGET = Path(os.environ.get("RELAY_BENCH_CACHE", Path.home() / ".cache/relay-bench")) / "rust_relay"


def rust_baseline() -> str | None:
    """The native baseline (benchmarks/baselines/rust_relay), built with cargo into the cache
    when missing; None (and a line saying why) when it cannot be built."""
    binary = RUST_TARGET / "release" / "rust-relay-baseline"
    if os.access(binary, os.X_OK):
        return str(binary)
    import shutil
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        print("rust tokio-tungstenite: skipped (cargo is not installed)", file=sys.stderr)
        return None
    print("building the native baseline (benchmarks/baselines/rust_relay, once)...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([cargo, "build", "--release", "--manifest-path", str(RUST_BASELINE / "Cargo.toml")],
                              env={**os.environ, "CARGO_TARGET_DIR": str(RUST_TARGET)}, capture_output=True,
                              text=True, timeout=1200, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print("rust tokio-tungstenite: skipped (the build took over 20 min)", file=sys.stderr)
        return None
    if done.returncode != 0 or not os.access(binary, os.X_OK):
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        print(f"rust tokio-tungstenite: skipped (cargo build failed: {tail})", file=sys.stderr)
        return None
    return str(binary)


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
        ("rust tokio-tungstenite", ["{rust}", "{port}"], {}, False),
    ]
    chosen = [r for r in all_relays if not selected or any(s in r[0] for s in selected)]
    if any(r[1][0] == "{rust}" for r in chosen):
        binary = rust_baseline()
        chosen = [(n, [binary if a == "{rust}" else a for a in argv], e, o) for n, argv, e, o in chosen
                  if argv[0] != "{rust}" or binary]
    return chosen


async def run_per_read(args: argparse.Namespace, chosen: list) -> list[dict]:
    """The one-message-per-read shape, every chosen relay in the same run, interleaved rounds."""
    seconds = 3.0 if args.quick else args.seconds
    started = []
    try:
        for name, argv, env, ours in chosen:
            started.append(Relay(name, argv, env, ours))
        results: list[dict] = []
        for round_no in range(args.rounds):
            for relay in started[round_no % len(started):] + started[:round_no % len(started)]:
                result = await measure_per_read(relay, 256, args.tunnels, args.rate, seconds, args.protocol)
                result["round"] = round_no + 1
                results.append(result)
                print(f"round {round_no + 1} {relay.name:22} 256 B x{args.tunnels} at {args.rate:g}/s each "
                      f"{result['cpu_us_per_msg']:8.2f} us/msg {result['msgs_per_s']:>9,.0f} msg/s "
                      f"CPU {result['cpu_share']:.0%}", flush=True)
    finally:
        for relay in started:
            relay.stop()
    print(f"\none message per read: {args.tunnels} tunnels x {args.rate:g} msg/s of 256 B, device to source, "
          f"{seconds:g} s per round, {args.rounds} round(s) interleaved; the relay process's CPU per message\n")
    print("| relay | CPU per message, median | min | messages per round |")
    print("| --- | --- | --- | --- |")
    for name, *_ in chosen:
        values = [r["cpu_us_per_msg"] for r in results if r["relay"] == name]
        if values:
            count = next(r["messages"] for r in results if r["relay"] == name)
            print(f"| {name} | {statistics.median(values):.1f} µs | {min(values):.1f} µs | {count:,} |")
    return results


async def run(args: argparse.Namespace) -> list[dict]:
    results = []
    sizes = [256, 10240]
    counts = {256: 20_000 if args.quick else 200_000, 10240: 5_000 if args.quick else 40_000}
    chosen = relays(set(args.only or []))
    if args.protocol == "aws":   # the baselines relay Huawei envelopes only
        chosen = [r for r in chosen if r[3]]
    if args.shape == "per-read":
        if not args.only:   # our relay and the baselines; recording is a bulk-shape question
            chosen = [r for r in chosen if "recording" not in r[0]]
        return await run_per_read(args, chosen)
    if args.replicas:
        chosen = [("replicas: local pair", [], {}, True), ("replicas: split pair", [], {}, True)]
    for name, argv, env, ours in chosen:
        relay = SplitPair(name, local="local" in name) if name.startswith("replicas") else Relay(name, argv, env, ours)
        try:
            for size in sizes:
                for tunnels in (1, 100):
                    result = await measure(relay, size, tunnels, counts[size], args.protocol)
                    results.append(result)
                    label = name if args.protocol == "huawei" else f"{name} [aws]"
                    print(f"{label:22} {size:>6} B x{tunnels:<4} {result['cpu_us_per_msg']:8.2f} us/msg "
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
    parser.add_argument("--protocol", choices=("huawei", "aws"), default="huawei",
                        help="the tunnels' protocol; aws: our relay only, not with --replicas")
    parser.add_argument("--shape", choices=("bulk", "per-read"), default="bulk",
                        help="bulk (default): pipelined messages, many per read; per-read: one message per "
                             "read (--tunnels devices, each sending --rate messages/s)")
    parser.add_argument("--tunnels", type=int, default=200, help="per-read: tunnels (default 200)")
    parser.add_argument("--rate", type=float, default=50, help="per-read: messages/s per device (default 50)")
    parser.add_argument("--seconds", type=float, default=10, help="per-read: seconds per round (default 10; --quick 3)")
    parser.add_argument("--rounds", type=int, default=3, help="per-read: interleaved rounds (default 3)")
    args = parser.parse_args()
    if args.shape == "per-read" and args.replicas:
        parser.error("--shape per-read does not go with --replicas")
    if min(args.tunnels, args.rate, args.seconds, args.rounds) <= 0:
        parser.error("--tunnels, --rate, --seconds and --rounds must be positive")
    if args.protocol == "aws" and args.replicas:
        # no AWS message says the peer is reachable across the bridge (Huawei's connect_tunnel)
        parser.error("--protocol aws does not go with --replicas")
    import uvloop
    uvloop.install()
    results = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
