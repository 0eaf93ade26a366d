"""Codec hot path: Rust vs the Python twin, 16 pipelined masked client frames per feed() call.

Run:  pytest benchmarks/test_codec_bench.py --benchmark-enable
(the project's pytest config passes --benchmark-disable, which runs each benchmark once as a test).
Per-message time = the per-call time / 16 (also in each result's extra_info).
"""

from __future__ import annotations

import os
from collections import deque
from types import ModuleType

import orjson
import pytest

import relay.codec

PIPELINE = 16
MASK = b"\x5a\x13\xc4\x7e"

IMPLS = [pytest.param(relay.codec.python_impl, id="python"),
         pytest.param(relay.codec.rust_impl, id="rust",
                      marks=pytest.mark.skipif(relay.codec.rust_impl is None, reason="relay._codec_rs not built"))]

_LINES = [
    "drwxr-xr-x  2 root root   4096 Nov 24 16:20 benchmarks",
    "-rw-r--r--  1 root root   1217 Nov 24 16:25 pyproject.toml",
    "\x1b[01;34mrelay\x1b[0m\tcodec-rs\tdocs\ttests",
    "  PID TTY          TIME CMD",
    " 4711 pts/0    00:00:03 température-sensor --interval=5 ✓",
]


def shell_output(n: int) -> str:
    out, i = [], 0
    while sum(map(len, out)) < n:
        out.append(_LINES[i % len(_LINES)] + "\n")
        i += 1
    return "".join(out)


def command_response(size: int, rid: int = 1) -> bytes:
    """A device command_response envelope of about ``size`` bytes whose data is shell output
    (below 100 bytes: the smallest envelope, no data)."""
    if size < 100:
        return orjson.dumps({"operation_type": "command_response", "tunnel_service_type": "ssh",
                             "request_id": f"{rid:x}"})
    def doc(text: str) -> bytes:
        return orjson.dumps({"operation_type": "command_response", "tunnel_service_type": "ssh",
                             "request_id": f"req-{rid:08d}", "data": {"exit_code": 0, "stdout": text}})
    base = len(doc(""))
    text = ""
    if size > base:
        text = shell_output(size)  # grow then trim to the size wanted (escapes make the JSON longer)
        while len(doc(text)) > size:
            text = text[:-max(1, (len(doc(text)) - size) // 2)]
    return doc(text)


def client_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    key = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return head + MASK + masked


SIZES = {"80B": 80, "1KB": 1024, "10KB": 10240}  # the smallest envelope is ~80 bytes


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(SIZES))
def test_feed(benchmark, impl: ModuleType, size: str) -> None:
    msgs = [command_response(SIZES[size], rid) for rid in range(PIPELINE)]
    buf = b"".join(client_frame(m) for m in msgs)
    decoder = impl.Decoder(impl.DEVICE)
    decoder.peer_connected = True
    expected = b"".join(impl.encode_text(m) for m in msgs)
    benchmark.group = f"feed {PIPELINE} x {size}"
    benchmark.extra_info.update(message_bytes=len(msgs[0]), messages_per_call=PIPELINE)
    out = benchmark(decoder.feed, buf)
    assert out == (expected, b"", None)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and os.environ.get("CODEC_BENCH_PRINT"):
        mean = stats.stats.mean
        print(f"\n{impl.IMPLEMENTATION} {size}: {mean / PIPELINE * 1e9:.0f} ns/message, "
              f"{len(buf) / mean / 1e9:.2f} GB/s")


def sdk_output(read: bytes, rid: int = 1) -> bytes:
    """One read of terminal output as Huawei's device SDK sends it: cJSON_Print, controls as \\u00xx."""
    return (f'{{\n\t"operation_type":\t"command_response",\n\t"tunnel_service_type":\t"ssh",'
            f'\n\t"request_id":\t"req-{rid:08d}",\n\t"data":\t').encode() + orjson.dumps(read.decode()) + b"\n}"


@pytest.mark.parametrize("impl", IMPLS)
def test_feed_sdk_split(benchmark, impl: ModuleType) -> None:
    """The rare path: 16 SDK reads of 2048 control characters (~12.4 KB each), each split in two."""
    msgs = [sdk_output(b"\x1b\x01" * 1024, rid) for rid in range(PIPELINE)]
    assert all(10240 < len(m) <= 16384 for m in msgs)
    buf = b"".join(client_frame(m) for m in msgs)
    decoder = impl.Decoder(impl.DEVICE)
    decoder.peer_connected = True
    benchmark.group = f"feed {PIPELINE} x SDK output, split"
    out, to_sender, close = benchmark(decoder.feed, buf)
    assert (to_sender, close) == (b"", None) and len(out) > len(buf) - 16 * 100


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_text(benchmark, impl: ModuleType) -> None:
    payload = command_response(10240)
    benchmark.group = "encode_text 10KB"
    assert benchmark(impl.encode_text, payload)[4:] == payload


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("noted", ["none", "miss", "hit"])
def test_feed_noted(benchmark, impl: ModuleType, noted: str) -> None:
    """The cost of notes on 16 x 80B: nothing noted, a noted set the messages miss, all noted."""
    msgs = [command_response(80, rid) for rid in range(PIPELINE)]
    buf = b"".join(client_frame(m) for m in msgs)
    seen: deque[bytes] = deque(maxlen=PIPELINE)  # the notes of the last call
    types = {"none": (), "miss": ("connect_response",), "hit": ("command_response",)}[noted]
    decoder = impl.Decoder(impl.DEVICE, noted=types, on_note=seen.append)
    decoder.peer_connected = True
    benchmark.group = f"feed {PIPELINE} x 80B, notes"
    out = benchmark(decoder.feed, buf)
    assert out == (b"".join(impl.encode_text(m) for m in msgs), b"", None)
    assert list(seen) == (msgs if noted == "hit" else [])


# ---------------------------------------------------------------- the AWS tunnel decoder

def aws_data(size: int, seq: int) -> bytes:
    """A framed DATA tunnel message carrying ``size`` payload bytes (V3 fields: stream, service, connection)."""
    from relay.aws_messages import MessageType, ProxyMessage, frame

    payload = (shell_output(size).encode() * 2)[:size]
    return frame(ProxyMessage(MessageType.DATA, stream_id=7, payload=payload, service_id="SSH", connection_id=seq % 3 + 1))


def client_binary_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    key = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return head + MASK + masked


AWS_SIZES = {"256B": 256, "16KB": 16384}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(AWS_SIZES))
def test_aws_feed(benchmark, impl: ModuleType, size: str) -> None:
    """16 DATA messages per feed() call, one masked binary frame each, peer connected."""
    msgs = [aws_data(AWS_SIZES[size], seq) for seq in range(PIPELINE)]
    buf = b"".join(client_binary_frame(m) for m in msgs)
    decoder = impl.AwsDecoder(impl.SOURCE, ("SSH",))
    decoder.peer_connected = True
    benchmark.group = f"aws feed {PIPELINE} x {size}"
    benchmark.extra_info.update(message_bytes=len(msgs[0]), messages_per_call=PIPELINE)
    out = benchmark(decoder.feed, buf)
    # whole messages packed greedily into frames of at most 131076 bytes
    frames, group = [], b""
    for m in msgs:
        if len(group) + len(m) > 131076:
            frames.append(group)
            group = b""
        group += m
    frames.append(group)
    assert out == (b"".join(map(impl.encode_binary, frames)), b"", None)
