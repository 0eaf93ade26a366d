"""Writes a small seed corpus of valid and broken AWS tunnel frame streams for fuzz_aws_codec.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.aws_messages import MessageType, ProxyMessage, frame  # noqa: E402


def masked(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    prefix = bytes([0, 1, 200, 1, 1, 1, 0])  # side, services, max payload, toggles, no cuts
    T = MessageType
    msgs = [
        frame(ProxyMessage(T.STREAM_START, stream_id=1, service_id="SSH", connection_id=1)),
        frame(ProxyMessage(T.DATA, stream_id=1, payload=b"SSH-2.0-OpenSSH_9.6\r\n", service_id="SSH", connection_id=1)),
        frame(ProxyMessage(T.CONNECTION_START, stream_id=1, service_id="HTTP", connection_id=2)),
        frame(ProxyMessage(T.CONNECTION_RESET, stream_id=1, service_id="HTTP", connection_id=2)),
        frame(ProxyMessage(T.STREAM_RESET, stream_id=1, service_id="SSH")),
        frame(ProxyMessage(9, stream_id=1, ignorable=True)),
        frame(ProxyMessage(T.SESSION_RESET)),
    ]
    stream = b"".join(msgs)
    seeds = [masked(stream), masked(stream[:7], fin=False) + masked(b"", 9) + masked(stream[7:], 0)]
    seeds += [masked(m) for m in msgs]
    seeds.append(masked(b"\x00\x03\x08\x01\x0b"))
    seeds.append(masked(b"\x03\xe8bye", 8))
    for i, seed in enumerate(seeds):
        (out / f"seed-{i}").write_bytes(prefix + seed)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "aws-corpus"))
