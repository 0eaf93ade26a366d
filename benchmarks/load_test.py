"""Bounded load test: many tunnels, sequence-numbered messages with checksums both ways.

Starts `relay serve` (or uses --url), opens --idle idle tunnels and --active active ones
(each a source and a device, raw WebSocket clients), then for --seconds every active tunnel
sends `command` messages source -> device and `command_response` device -> source at --rate
per second per direction, paced: the tunnels are spread over the interval in slices of
about 2 ms instead of all being sent in one burst. Each message carries its sequence number,
send time and a CRC32 of its data; receivers check order, duplicates, loss and checksums and
record the latency (same monotonic clock at both ends).

The generator is one Python process, so its latencies include its own queueing. To measure
what the relay adds under that load, a probe runs in a process of its own on one more
tunnel: it sends one message, waits for it to arrive on the other end, answers, waits, and
so on, every 5 ms (`probe_p50_us`, `probe_p99_us`). Everything runs on 127.0.0.1 and stops
by itself.

    python benchmarks/load_test.py --idle 8000 --active 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.relay_bench import API_TOKEN, Relay, masked_frame, upgrade_request  # noqa: E402


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    bytes: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)


class End(asyncio.Protocol):
    """A raw WebSocket client that parses the relay's (unmasked) frames."""

    def __init__(self, request: bytes, stats: Stats, name: str) -> None:
        self.on_message: asyncio.Future[None] | None = None   # the probe waits on this
        self.request = request
        self.stats = stats
        self.name = name
        self.buffer = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.expected = 0           # next sequence number from the peer
        self.ready = asyncio.get_running_loop().create_future()  # source: got connect_tunnel
        self.closed = False

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head[:200].decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            n = buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                start = pos + 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                start = pos + 10
            if len(buf) < start + n:
                break
            self.on_frame(buf[pos] & 0x0F, buf[start:start + n])
            pos = start + n
        self.buffer = buf[pos:]

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 9:    # ping: answer
            self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            return
        if opcode == 8:
            self.stats.errors.append(f"{self.name}: closed by the relay {payload[:2].hex()}")
            return
        if b'"connect_tunnel"' in payload:
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if b'"disconnect"' in payload:
            self.stats.errors.append(f"{self.name}: disconnect {payload[-80:]!r}")
            return
        now = time.perf_counter_ns()
        data = payload[payload.index(b'"data":"') + 8: payload.rindex(b'"')]
        seq_s, sent_s, crc_s, body = data.split(b":", 3)
        seq, sent = int(seq_s), int(sent_s)
        if zlib.crc32(body) != int(crc_s):
            self.stats.corrupt += 1
        if seq == self.expected:
            self.expected += 1
        elif seq > self.expected:
            self.stats.lost += seq - self.expected
            self.stats.reordered += 1
            self.expected = seq + 1
        else:
            self.stats.duplicated += 1
        self.stats.received += 1
        self.stats.bytes += len(payload)
        self.stats.latencies_us.append((now - sent) / 1000)
        if self.on_message is not None and not self.on_message.done():
            self.on_message.set_result(None)

    def send(self, op: str, seq: int, body: bytes) -> None:
        data = b"%d:%d:%d:%s" % (seq, time.perf_counter_ns(), zlib.crc32(body), body)
        payload = (b'{"operation_type":"' + op.encode() + b'","tunnel_service_type":"ssh","request_id":"'
                   + self.name.encode() + b"-" + str(seq).encode() + b'","data":"' + data + b'"}')
        self.transport.write(masked_frame(payload))
        self.stats.sent += 1

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed"))


async def open_tunnel(port: int, ids: tuple, stats: Stats, n: int) -> tuple[End, End]:
    loop = asyncio.get_running_loop()
    tunnel_id, source_token, device_token = ids
    base = f"/v5/iot/tunnels/{tunnel_id}"
    _, source = await loop.create_connection(
        lambda: End(upgrade_request(port, base + "/source-connect", source_token), stats, f"s{n}"), "127.0.0.1", port)
    _, device = await loop.create_connection(
        lambda: End(upgrade_request(port, base + "/device-connect", device_token), stats, f"d{n}"), "127.0.0.1", port)
    await asyncio.gather(source.upgraded, device.upgraded)
    await asyncio.wait_for(source.ready, 30)
    return source, device


async def probe(port: int, ids: tuple, seconds: float) -> dict:
    """One tunnel, one message in flight at a time: the latency the relay adds, without the
    generator's queueing (runs in its own process, see --probe)."""
    stats = Stats()
    source, device = await open_tunnel(port, ids, stats, 0)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        for sender, receiver, op in ((source, device, "command"), (device, source, "command_response")):
            receiver.on_message = loop.create_future()
            sender.send(op, seq, b"p" * 200)
            await asyncio.wait_for(receiver.on_message, 10)
        seq += 1
        await asyncio.sleep(0.005)
    source.transport.close()
    device.transport.close()
    lat = sorted(stats.latencies_us) or [0.0]
    return {"probe_messages": len(lat), "probe_p50_us": lat[len(lat) // 2], "probe_p99_us": lat[int(len(lat) * 0.99)],
            "probe_errors": len(stats.errors) + stats.lost + stats.corrupt}


async def start_probe(port: int, ids: tuple, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", json.dumps([port, list(ids), seconds]), stdout=asyncio.subprocess.PIPE)


async def run(args: argparse.Namespace) -> dict:
    # A database file, as `relay serve` keeps by default: the audit trail's rows go to the
    # file, and only SQLite's bounded page cache stays in memory.
    folder = tempfile.TemporaryDirectory(prefix="relay-load-")
    db = str(Path(folder.name) / "relay.db")
    relay = Relay("relay", [sys.executable, "-m", "relay.cli", "serve", "--port", "{port}", "--db", db],
                  {"RELAY_API_TOKENS": f"bench:bench:{API_TOKEN}", "RELAY_MAX_TUNNELS_PER_PROJECT": "1000000",
                   "RELAY_LOG_LEVEL": "WARNING"}, ours=True)
    stats = Stats()
    try:
        rss_start = relay.rss()
        idle_ids = relay.new_tunnels(args.idle)
        idle = []
        for i in range(0, len(idle_ids), 200):
            idle += await asyncio.gather(*(open_tunnel(relay.port, t, stats, -1) for t in idle_ids[i:i + 200]))
        await asyncio.sleep(1)
        rss_idle = relay.rss()
        active_ids = relay.new_tunnels(args.active)
        active = []
        for i in range(0, len(active_ids), 200):
            active += await asyncio.gather(*(open_tunnel(relay.port, t, stats, i + j) for j, t in enumerate(active_ids[i:i + 200])))
        body = b"x" * args.size
        interval = 1.0 / args.rate
        slices = max(1, min(len(active), int(interval / 0.002)))
        per_slice = -(-len(active) // slices)
        prober = await start_probe(relay.port, relay.new_tunnels(1)[0], args.seconds) if args.probe_latency else None
        cpu0 = relay.cpu()
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < args.seconds:
            tick = time.monotonic()
            for k in range(slices):
                for source, device in active[k * per_slice:(k + 1) * per_slice]:
                    source.send("command", seq, body)
                    device.send("command_response", seq, body)
                # the next slice's moment within this interval
                await asyncio.sleep(max(0.0, tick + (k + 1) * interval / slices - time.monotonic()))
            seq += 1
        deadline = time.monotonic() + 10
        while stats.received < stats.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = relay.cpu() - cpu0
        for source, device in idle + active:
            if not source.closed and not device.closed:
                continue
            stats.errors.append("a connection closed during the run")
            break
        stats.lost += stats.sent - stats.received
        probed = {}
        if prober is not None:
            out, _ = await asyncio.wait_for(prober.communicate(), 30)
            probed = json.loads(out)
        lat = sorted(stats.latencies_us) or [0.0]
        result = {
            "tunnels_held": len(idle) + len(active), "idle": len(idle), "active": len(active),
            "relay_kib_per_idle_tunnel": (rss_idle - rss_start) / max(1, len(idle)) / 1024,
            "messages_sent": stats.sent, "messages_received": stats.received, "bytes_received": stats.bytes,
            "lost": stats.lost, "duplicated": stats.duplicated, "reordered": stats.reordered, "corrupt": stats.corrupt,
            "errors": len(stats.errors), "first_errors": stats.errors[:5],
            "latency_p50_us": lat[len(lat) // 2], "latency_p99_us": lat[int(len(lat) * 0.99)],
            "latency_mean_us": statistics.fmean(lat), "relay_cpu_us_per_msg": cpu / max(1, stats.received) * 1e6,
            "seconds": elapsed, **probed,
        }
        for source, device in idle + active:
            source.transport.close()
            device.transport.close()
        return result
    finally:
        relay.stop()
        folder.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=8000)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=5, help="messages per second per direction per active tunnel")
    parser.add_argument("--size", type=int, default=200, help="bytes of data per message")
    parser.add_argument("--no-probe", dest="probe_latency", action="store_false",
                        help="do not run the latency probe process")
    parser.add_argument("--probe", help=argparse.SUPPRESS)   # internal: run as the probe process
    args = parser.parse_args()
    import uvloop
    uvloop.install()
    if args.probe:
        port, ids, seconds = json.loads(args.probe)
        print(json.dumps(asyncio.run(probe(port, tuple(ids), seconds))))
        return
    result = asyncio.run(run(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}}  {value:.1f}" if isinstance(value, float) else f"{key:{width}}  {value}")
    problems = ("lost", "duplicated", "reordered", "corrupt", "errors", "probe_errors")
    sys.exit(1 if any(result.get(p, 0) for p in problems) else 0)


if __name__ == "__main__":
    main()
