"""Bounded load test: many tunnels, sequence-numbered messages with checksums both ways.

Starts `relay serve`, opens --idle idle tunnels and --active active ones
(each a source and a device, raw WebSocket clients), then for --seconds every active tunnel
sends messages source -> device and device -> source at --rate per second per direction,
paced: the tunnels are spread over the interval in slices of about 2 ms instead of all being
sent in one burst. Each message carries its sequence number, send time and a CRC32 of its
data; receivers check order, duplicates, loss and checksums and record the latency (same
monotonic clock at both ends).

--protocol chooses the tunnels' protocol; only the framing and the handshake differ:

* huawei (default): `/v5/iot/tunnels/{id}/source-connect|device-connect`, JSON text frames,
  `command` source -> device and `command_response` device -> source; a tunnel is ready when
  the source has its `connect_tunnel`.
* aws: `GET /tunnel?local-proxy-mode=source|destination`, the token in `access-token`,
  subprotocol `aws.iot.securetunneling-3.0` (--aws-version 2: `-2.0`), binary frames of
  length-prefixed protobuf messages (relay/aws_messages.py). Each end first gets SERVICE_IDS;
  then the source opens stream 1 of the tunnel's service with STREAM_START (V3: connection 1),
  and the tunnel is ready when the destination has it. The same data then travels as the
  payload of DATA messages (stream 1, the service id, V3: connection 1), both ways.

The generator is one Python process, so its latencies include its own queueing. To measure
what the relay adds under that load, a probe runs in a process of its own on one more
tunnel: it sends one message, waits for it to arrive on the other end, answers, waits, and
so on, every 5 ms (`probe_p50_us`, `probe_p99_us`). Everything runs on 127.0.0.1 and stops
by itself.

    python benchmarks/load_test.py --idle 8000 --active 1000 --seconds 20
    python benchmarks/load_test.py --protocol aws --idle 8000 --active 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.relay_bench import (API_TOKEN, AWS_SERVICE, AWS_SUBPROTOCOLS, Relay, aws_upgrade_request,  # noqa: E402
                                    masked_frame, upgrade_request)
from relay.aws_messages import MessageType, ProxyMessage, _varint, decode, encode, frame  # noqa: E402

PROTOCOLS = ("huawei", "aws")
STREAM_ID = 1       # the one stream of an AWS tunnel's source (V3: its one connection, CONNECTION_ID)
CONNECTION_ID = 1


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


def make_data(seq: int, body: bytes) -> bytes:
    """The data of one message, whatever the protocol: `seq:send time (ns):crc32(body):body`."""
    return b"%d:%d:%d:%s" % (seq, time.perf_counter_ns(), zlib.crc32(body), body)


class End(asyncio.Protocol):
    """A raw WebSocket client that parses the relay's (unmasked) frames. The protocols'
    subclasses handle the frames' payloads (`on_payload`) and frame the data (`send`); the
    checks of the data (`got_data`) are shared."""

    def __init__(self, request: bytes, stats: Stats, name: str) -> None:
        self.on_message: asyncio.Future[None] | None = None   # the probe waits on this
        self.request = request
        self.stats = stats
        self.name = name
        self.buffer = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.expected = 0           # next sequence number from the peer
        self.ready = asyncio.get_running_loop().create_future()  # the tunnel can carry data
        self.closed = False

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(self.request)

    def check_upgrade(self, head: bytes) -> None:
        """Raise if the upgrade's answer is not the one expected."""
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head[:200].decode(errors="replace"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            try:
                self.check_upgrade(head)
            except RuntimeError as e:
                self.upgraded.set_exception(e)
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
            self.stats.errors.append(f"{self.name}: closed by the relay {payload[:2].hex()} {payload[2:80]!r}")
            return
        self.on_payload(opcode, payload)

    def on_payload(self, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    def got_data(self, data: bytes, size: int) -> None:
        """One message's data (make_data) has arrived, `size` bytes on the wire."""
        now = time.perf_counter_ns()
        try:
            seq_s, sent_s, crc_s, body = data.split(b":", 3)
            seq, sent, crc = int(seq_s), int(sent_s), int(crc_s)
        except ValueError:
            self.stats.corrupt += 1
            self.stats.errors.append(f"{self.name}: data that does not parse {data[:80]!r}")
            return
        if zlib.crc32(body) != crc:
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
        self.stats.bytes += size
        self.stats.latencies_us.append((now - sent) / 1000)
        if self.on_message is not None and not self.on_message.done():
            self.on_message.set_result(None)

    def send(self, seq: int, body: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed"))


class HuaweiEnd(End):
    """`command` (source) or `command_response` (device) envelopes in text frames; the data is
    the envelope's `data` string."""

    def __init__(self, request: bytes, stats: Stats, name: str, operation: str) -> None:
        super().__init__(request, stats, name)
        self.head = (b'{"operation_type":"' + operation.encode() + b'","tunnel_service_type":"ssh","request_id":"'
                     + name.encode() + b"-")

    def on_payload(self, opcode: int, payload: bytes) -> None:
        if b'"connect_tunnel"' in payload:
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if b'"disconnect"' in payload:
            self.stats.errors.append(f"{self.name}: disconnect {payload[-80:]!r}")
            return
        self.got_data(payload[payload.index(b'"data":"') + 8: payload.rindex(b'"')], len(payload))

    def send(self, seq: int, body: bytes) -> None:
        payload = self.head + str(seq).encode() + b'","data":"' + make_data(seq, body) + b'"}'
        self.transport.write(masked_frame(payload))
        self.stats.sent += 1


class AwsData:
    """DATA messages on the one stream, byte for byte as `aws_messages.frame` encodes them
    (checked when made), without a ProxyMessage per message: the generator sends and reads about
    10,000 messages a second, and `frame` + `decode` cost it tens of µs per message (the relay
    never builds them: its codec forwards the bytes). Protobuf fields are in number order and the
    payload (4) sits between the type and stream id (1, 2) and the service and connection ids
    (5, 7), so a DATA message is a constant head, the payload's length and bytes, a constant tail."""

    def __init__(self, connection_id: int) -> None:
        self.head = encode(ProxyMessage(MessageType.DATA, STREAM_ID)) + b"\x22"   # + field 4's key
        self.tail = encode(ProxyMessage(MessageType.UNKNOWN, service_id=AWS_SERVICE, connection_id=connection_id))
        sample = make_data(0, b"x" * 300)
        expected = ProxyMessage(MessageType.DATA, STREAM_ID, payload=sample, service_id=AWS_SERVICE,
                                connection_id=connection_id)
        if self.frame(sample) != frame(expected) or self.payload(self.frame(sample)[2:]) != sample:
            raise AssertionError("AwsData does not match relay.aws_messages")

    def frame(self, data: bytes) -> bytes:
        body = self.head + _varint(len(data)) + data + self.tail
        return len(body).to_bytes(2, "big") + body

    def payload(self, body: bytes) -> bytes | None:
        """The payload of `body` (a tunnel message without its length prefix) if it is a DATA
        message made by `frame`, else None."""
        if not (len(body) > len(self.head) + len(self.tail) and body.startswith(self.head)
                and body.endswith(self.tail)):
            return None
        inner = body[len(self.head):len(body) - len(self.tail)]   # length varint + payload
        k = 1 if inner[0] < 0x80 else 2 if len(inner) > 1 and inner[1] < 0x80 else 3   # the varint's bytes
        return inner[k:] if inner[:k] == _varint(len(inner) - k) else None


AWS_DATA = {version: AwsData(CONNECTION_ID if version >= 3 else 0) for version in AWS_SUBPROTOCOLS}


class AwsEnd(End):
    """AWS tunnel messages (2-byte length + protobuf, relay/aws_messages.py) in binary frames;
    the data is the payload of DATA messages on stream 1 (V3: connection 1)."""

    def __init__(self, request: bytes, stats: Stats, name: str, version: int) -> None:
        super().__init__(request, stats, name)
        self.version = version
        self.connection_id = CONNECTION_ID if version >= 3 else 0
        self.data = AWS_DATA[version]
        self.pending = b""    # an incomplete tunnel message
        self.service_ids = asyncio.get_running_loop().create_future()   # got SERVICE_IDS

    def check_upgrade(self, head: bytes) -> None:
        super().check_upgrade(head)
        wanted = b"sec-websocket-protocol: " + AWS_SUBPROTOCOLS[self.version].encode()
        if wanted not in head.lower():
            raise RuntimeError(f"{self.name}: the relay did not answer with {AWS_SUBPROTOCOLS[self.version]}")

    def on_payload(self, opcode: int, payload: bytes) -> None:
        """Binary (or continuation) frames carry a stream of tunnel messages, which the relay
        may pack several to a frame."""
        if opcode not in (0x0, 0x2):
            self.stats.errors.append(f"{self.name}: a frame with opcode {opcode} on an AWS tunnel")
            return
        buf = self.pending + payload if self.pending else payload
        pos = 0
        while len(buf) - pos >= 2:
            n = buf[pos] << 8 | buf[pos + 1]
            if len(buf) - pos - 2 < n:
                break
            self.on_message_bytes(buf[pos + 2:pos + 2 + n])
            pos += 2 + n
        self.pending = buf[pos:]

    def on_message_bytes(self, body: bytes) -> None:
        data = self.data.payload(body)
        if data is not None:   # the common case: DATA on our stream, as sent
            self.got_data(data, 2 + len(body))
            return
        try:
            msg = decode(body)
        except ValueError as e:
            self.stats.corrupt += 1
            self.stats.errors.append(f"{self.name}: a tunnel message that does not decode: {e}")
            return
        if msg.type == MessageType.SERVICE_IDS:
            if msg.available_service_ids != (AWS_SERVICE,):
                self.stats.errors.append(f"{self.name}: SERVICE_IDS {msg.available_service_ids}")
            if not self.service_ids.done():
                self.service_ids.set_result(None)
        elif msg.type == MessageType.STREAM_START:   # the destination: the source's stream
            if (msg.stream_id, msg.service_id, msg.connection_id) != (STREAM_ID, AWS_SERVICE, self.connection_id):
                self.stats.errors.append(f"{self.name}: STREAM_START {msg}")
            if not self.ready.done():
                self.ready.set_result(None)
        elif msg.type == MessageType.DATA:   # not as sent: another stream, or changed on the way
            self.stats.corrupt += 1
            self.stats.errors.append(f"{self.name}: unexpected DATA: stream {msg.stream_id}, service"
                                     f" {msg.service_id!r}, connection {msg.connection_id}")
        else:   # STREAM_RESET, SESSION_RESET, CONNECTION_*: none is expected
            name = msg.type.name if isinstance(msg.type, MessageType) else msg.type
            self.stats.errors.append(f"{self.name}: {name} stream {msg.stream_id}")

    def start_stream(self) -> None:
        msg = ProxyMessage(MessageType.STREAM_START, stream_id=STREAM_ID, service_id=AWS_SERVICE,
                           connection_id=self.connection_id)
        self.transport.write(masked_frame(frame(msg), opcode=0x2))

    def send(self, seq: int, body: bytes) -> None:
        self.transport.write(masked_frame(self.data.frame(make_data(seq, body)), opcode=0x2))
        self.stats.sent += 1


async def open_huawei(port: int, ids: tuple, stats: Stats, n: int, version: int) -> tuple[End, End]:
    loop = asyncio.get_running_loop()
    tunnel_id, source_token, device_token = ids
    base = f"/v5/iot/tunnels/{tunnel_id}"
    _, source = await loop.create_connection(
        lambda: HuaweiEnd(upgrade_request(port, base + "/source-connect", source_token), stats, f"s{n}", "command"),
        "127.0.0.1", port)
    _, device = await loop.create_connection(
        lambda: HuaweiEnd(upgrade_request(port, base + "/device-connect", device_token), stats, f"d{n}",
                          "command_response"), "127.0.0.1", port)
    await asyncio.gather(source.upgraded, device.upgraded)
    await asyncio.wait_for(source.ready, 30)
    return source, device


async def open_aws(port: int, ids: tuple, stats: Stats, n: int, version: int) -> tuple[End, End]:
    loop = asyncio.get_running_loop()
    _, source_token, destination_token = ids
    _, source = await loop.create_connection(
        lambda: AwsEnd(aws_upgrade_request(port, "source", source_token, version), stats, f"s{n}", version),
        "127.0.0.1", port)
    _, destination = await loop.create_connection(
        lambda: AwsEnd(aws_upgrade_request(port, "destination", destination_token, version), stats, f"d{n}",
                       version), "127.0.0.1", port)
    await asyncio.gather(source.upgraded, destination.upgraded)
    # SERVICE_IDS comes once an end is attached: both ends are, so a stream can start (a
    # STREAM_START while the peer is away would be answered with STREAM_RESET).
    await asyncio.wait_for(asyncio.gather(source.service_ids, destination.service_ids), 30)
    source.start_stream()
    await asyncio.wait_for(destination.ready, 30)
    return source, destination


OPEN = {"huawei": open_huawei, "aws": open_aws}


async def probe(protocol: str, port: int, ids: tuple, seconds: float, version: int) -> dict:
    """One tunnel, one message in flight at a time: the latency the relay adds, without the
    generator's queueing (runs in its own process, see --probe)."""
    stats = Stats()
    source, device = await OPEN[protocol](port, ids, stats, 0, version)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        for sender, receiver in ((source, device), (device, source)):
            receiver.on_message = loop.create_future()
            sender.send(seq, b"p" * 200)
            await asyncio.wait_for(receiver.on_message, 10)
        seq += 1
        await asyncio.sleep(0.005)
    source.transport.close()
    device.transport.close()
    lat = sorted(stats.latencies_us) or [0.0]
    return {"probe_messages": len(lat), "probe_p50_us": lat[len(lat) // 2], "probe_p99_us": lat[int(len(lat) * 0.99)],
            "probe_errors": len(stats.errors) + stats.lost + stats.corrupt + stats.duplicated}


async def start_probe(protocol: str, port: int, ids: tuple, seconds: float,
                      version: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", json.dumps([protocol, port, list(ids), seconds, version]),
        stdout=asyncio.subprocess.PIPE)


def raise_file_limit(needed: int) -> None:
    """Each tunnel takes two sockets here and two in the relay (which inherits this limit):
    raise the soft limit of open files to the hard one, and stop early if that is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed > soft:
        sys.exit(f"{needed} open files are needed, the limit is {soft} (ulimit -n): use fewer tunnels")


async def run(args: argparse.Namespace) -> dict:
    # A database file, as `relay serve` keeps by default: the audit trail's rows go to the
    # file, and only SQLite's bounded page cache stays in memory.
    folder = tempfile.TemporaryDirectory(prefix="relay-load-")
    db = str(Path(folder.name) / "relay.db")
    # --drain-seconds 0: once measured, stop at once (the default spreads closes over 10 s).
    relay = Relay("relay", [sys.executable, "-m", "relay.cli", "serve", "--port", "{port}", "--db", db,
                            "--drain-seconds", "0"],
                  {"RELAY_API_TOKENS": f"bench:bench:{API_TOKEN}", "RELAY_MAX_TUNNELS_PER_PROJECT": "1000000",
                   "RELAY_LOG_LEVEL": "WARNING"}, ours=True)
    open_tunnel = OPEN[args.protocol]
    version = args.aws_version
    stats = Stats()
    try:
        rss_start = relay.rss()
        idle_ids = relay.new_tunnels(args.idle, args.protocol)
        idle = []
        for i in range(0, len(idle_ids), 200):
            idle += await asyncio.gather(*(open_tunnel(relay.port, t, stats, -1, version)
                                           for t in idle_ids[i:i + 200]))
        await asyncio.sleep(1)
        rss_idle = relay.rss()
        active_ids = relay.new_tunnels(args.active, args.protocol)
        active = []
        for i in range(0, len(active_ids), 200):
            active += await asyncio.gather(*(open_tunnel(relay.port, t, stats, i + j, version)
                                             for j, t in enumerate(active_ids[i:i + 200])))
        body = b"x" * args.size
        interval = 1.0 / args.rate
        slices = max(1, min(len(active), int(interval / 0.002)))
        per_slice = -(-len(active) // slices)
        prober = (await start_probe(args.protocol, relay.port, relay.new_tunnels(1, args.protocol)[0], args.seconds,
                                    version) if args.probe_latency else None)
        cpu0 = relay.cpu()
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < args.seconds:
            tick = time.monotonic()
            for k in range(slices):
                for source, device in active[k * per_slice:(k + 1) * per_slice]:
                    source.send(seq, body)
                    device.send(seq, body)
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
            "protocol": args.protocol if args.protocol == "huawei" else f"aws (V{version})",
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
    parser.add_argument("--protocol", choices=PROTOCOLS, default="huawei", help="the tunnels' data-plane protocol")
    parser.add_argument("--aws-version", type=int, choices=sorted(AWS_SUBPROTOCOLS), default=3,
                        help="--protocol aws: the subprotocol's version (aws.iot.securetunneling-N.0)")
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
        protocol, port, ids, seconds, version = json.loads(args.probe)
        print(json.dumps(asyncio.run(probe(protocol, port, tuple(ids), seconds, version))))
        return
    raise_file_limit(2 * (args.idle + args.active + 1) + 200)
    result = asyncio.run(run(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}}  {value:.1f}" if isinstance(value, float) else f"{key:{width}}  {value}")
    problems = ("lost", "duplicated", "reordered", "corrupt", "errors", "probe_errors")
    sys.exit(1 if any(result.get(p, 0) for p in problems) else 0)


if __name__ == "__main__":
    main()
