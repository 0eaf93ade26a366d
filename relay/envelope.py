"""The tunnel message envelope, built and read in one place for every end (relay, agent,
application side, forwarding): `{"operation_type", "tunnel_service_type", "request_id", "data"}`.
Bottom layer: orjson only. (The relay's hot path never builds or parses envelopes in Python:
the codec does.)"""

from __future__ import annotations

from typing import Any

import orjson


def build(operation_type: str, request_id: str, data: Any, service: str) -> bytes:
    return orjson.dumps({"operation_type": operation_type, "tunnel_service_type": service,
                         "request_id": request_id, "data": data})


def parse(text: str | bytes) -> dict[str, Any] | None:
    """The message as a dict, or None when it is not a JSON object."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
