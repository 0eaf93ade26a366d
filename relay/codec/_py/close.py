"""Twin of codec-rs/src/close.rs: what both protocols' decoders close a connection with.

The close codes both protocols share, and the close a decoder answers with (``Close``, Rust's
``Violation``): ``(code, reason)``, the reason cut to fit a close frame. The frame layer and both
protocols' modules import it from here, so neither protocol's module depends on the other's.
"""

from __future__ import annotations

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_NOT_ALLOWED = 4403

# Longest close reason that fits a control frame (125 - 2 bytes of code).
MAX_CLOSE_REASON = 123

# The close frame the server sends back: (code, reason).
Close = tuple[int, str]


def truncate_utf8(text: str, limit: int = MAX_CLOSE_REASON) -> str:
    """Longest prefix of ``text`` of at most ``limit`` UTF-8 bytes that ends on a character boundary."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")  # only the cut character can be incomplete
