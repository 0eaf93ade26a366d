"""Bounded load test: many tunnels, sequence-numbered messages with checksums both ways.

Starts `relay serve` (or uses --url), opens --idle idle tunnels and --active active ones
(each a source and a device, raw WebSocket clients), then for --seconds every active tunnel
sends `command` messages source -> device and `command_response` device -> source at --rate
per second per direction. Each message carries its sequence number, send time and a CRC32
of its data; receivers check order, duplicates, loss and checksums and record the latency
added by the relay (same clock at both ends). Everything runs on 127.0.0.1 and stops by
itself.

    python benchmarks/load_test.py --idle 8000 --active 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import struct
import sys
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


async def run(args: argparse.Namespace) -> dict:
    relay = Relay("relay", [sys.executable, "-m", "relay.cli", "serve", "--port", "{port}", "--db", ":memory:"],
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
        cpu0 = relay.cpu()
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < args.seconds:
            tick = time.monotonic()
            for source, device in active:
                source.send("command", seq, body)
                device.send("command_response", seq, body)
            seq += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - tick)))
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
        lat = sorted(stats.latencies_us) or [0.0]
        result = {
            "tunnels_held": len(idle) + len(active), "idle": len(idle), "active": len(active),
            "relay_kib_per_idle_tunnel": (rss_idle - rss_start) / max(1, len(idle)) / 1024,
            "messages_sent": stats.sent, "messages_received": stats.received, "bytes_received": stats.bytes,
            "lost": stats.lost, "duplicated": stats.duplicated, "reordered": stats.reordered, "corrupt": stats.corrupt,
            "errors": len(stats.errors), "first_errors": stats.errors[:5],
            "latency_p50_us": lat[len(lat) // 2], "latency_p99_us": lat[int(len(lat) * 0.99)],
            "latency_mean_us": statistics.fmean(lat), "relay_cpu_us_per_msg": cpu / max(1, stats.received) * 1e6,
            "seconds": elapsed,
        }
        for source, device in idle + active:
            source.transport.close()
            device.transport.close()
        return result
    finally:
        relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=8000)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=5, help="messages per second per direction per active tunnel")
    parser.add_argument("--size", type=int, default=200, help="bytes of data per message")
    args = parser.parse_args()
    import uvloop
    uvloop.install()
    result = asyncio.run(run(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}}  {value:.1f}" if isinstance(value, float) else f"{key:{width}}  {value}")
    sys.exit(0 if result["lost"] == result["duplicated"] == result["reordered"] == result["corrupt"] == result["errors"] == 0 else 1)


if __name__ == "__main__":
    main()
