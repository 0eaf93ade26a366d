"""Text that others chose, made safe to show on a terminal: the one home of that rule.

Devices and tenants choose much of what the CLI prints and the relay logs (a tunnel's
description, a device's status message or id, an audit event's outcome, an error message
quoted from an answer). A control character in it would reach the operator's terminal,
which obeys it: a title or clipboard write (OSC 0, OSC 52), concealed text, a cursor moved
up to erase the rows above, a line rewritten by a carriage return. `safe` shows each one
escaped instead (docs/security.md, "Terminal injection"); relay/client/output.py prints
through it, relay/logs.py formats text logs through it. The remote terminal's own stream
is not text of this kind: relay/client/termfilter.py filters it."""

from __future__ import annotations

import re

# C0 controls but tab and line feed, DEL, C1 controls, and the bidirectional overrides and
# isolates that reorder how a line reads (U+061C, U+200E-200F, U+202A-202E, U+2066-2069).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# In JSON text the C0 ones are escaped already (RFC 8259); the others get JSON escapes.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """`text` with every control character shown escaped (ESC as the four characters \\x1b),
    tabs and line feeds kept. Idempotent: what it returns holds no control character."""
    return _UNSAFE.sub(_escaped, text)


def json_safe(json_text: str) -> str:
    """JSON text with the characters `safe` escapes written as JSON escapes: the same value
    to a JSON reader, nothing a terminal obeys (they only occur inside JSON strings)."""
    return _UNSAFE_IN_JSON.sub(lambda found: f"\\u{ord(found.group()):04x}", json_text)
