"""Writes a small seed corpus of valid and broken frame streams for fuzz_codec.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def masked(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    prefix = bytes([1, 200, 2, 1, 0, 1, 0])  # side, size, window, toggles, no cuts
    envelopes = [
        b'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"a","data":"ls"}',
        b'{"operation_type":"ping","tunnel_service_type":"ssh","request_id":"p\\u00e9"}',
        b'{"operation_type":"connect_response","tunnel_service_type":"ssh","request_id":"c"}',
        b'[1, 2.5e3, {"a": null}]',
    ]
    seeds = [masked(e) for e in envelopes]
    seeds.append(masked(envelopes[0][:20], fin=False) + masked(b"", 9) + masked(envelopes[0][20:], 0))
    seeds.append(masked(b"\x03\xe8bye", 8))
    for i, seed in enumerate(seeds):
        (out / f"seed-{i}").write_bytes(prefix + seed)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus"))
