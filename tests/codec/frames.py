"""Client-side frame builders for the codec tests."""

from __future__ import annotations

import orjson

MASK = b"\x37\xfa\x21\x3d"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def mask_bytes(payload: bytes, mask: bytes = MASK) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frame(payload: bytes = b"", op: int = OP_TEXT, *, fin: bool = True, rsv: int = 0, masked: bool = True,
          mask: bytes = MASK, length_form: int | None = None, length: int | None = None) -> bytes:
    """A client frame. ``length_form`` forces the 7-bit (0), 16-bit (126) or 64-bit (127) length encoding;
    ``length`` overrides the announced length (payload is still appended as given)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | op])
    form = length_form if length_form is not None else (0 if n < 126 else 126 if n <= 0xFFFF else 127)
    mbit = 0x80 if masked else 0
    if form == 0:
        head += bytes([mbit | n])
    elif form == 126:
        head += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mbit | 127]) + n.to_bytes(8, "big")
    if masked:
        return head + mask + mask_bytes(payload, mask)
    return head + payload


def server_text(payload: bytes) -> bytes:
    """What the relay writes for a forwarded message (reference encoding, independent of the codec)."""
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n <= 0xFFFF:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + payload


def envelope(op: str = "command", rid: str = "r-1", service: str = "ssh", data: object = "x", **extra: object) -> bytes:
    doc: dict[str, object] = {"operation_type": op, "tunnel_service_type": service, "request_id": rid}
    if data is not ...:
        doc["data"] = data
    doc.update(extra)
    return orjson.dumps(doc)


def padded(op: str, size: int, rid: str = "r-1") -> bytes:
    """An envelope of exactly ``size`` bytes (padding inside the data string)."""
    base = envelope(op, rid, data="")
    assert len(base) <= size
    return envelope(op, rid, data="y" * (size - len(base)))
