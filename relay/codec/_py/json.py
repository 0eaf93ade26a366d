"""Twin of codec-rs/src/json.rs: what valid JSON is, and how a string is written.

``orjson`` (3.13.0 is pinned) *defines* both: ``loads`` is the validator the Rust parser must
agree with, ``dumps`` the layout the Rust writer (``write_str``) must reproduce. The twin's other
modules use JSON only through this one.
"""

from __future__ import annotations

import orjson

JsonError = orjson.JSONDecodeError
loads = orjson.loads
dumps = orjson.dumps


def escaped_len(text: str) -> int:
    """Bytes of ``text`` once written as a JSON string, without its quotes."""
    return len(orjson.dumps(text)) - 2
