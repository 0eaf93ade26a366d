"""What the CLI prints: aligned tables and `key: value` lists for people, JSON for scripts
(`--json`: the API's own answers, pretty-printed, keys as the API names them), and `say`,
the one way the CLI prints a line of its own: sanitized by relay/printable.py's `safe`
(control characters shown escaped), since devices and tenants choose much of what is
printed (docs/security.md, "Terminal injection"). The remote terminal's stream goes through
relay/client/termfilter.py instead."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

from relay.printable import json_safe, safe


def say(text: str, file: TextIO | None = None, end: str = "\n") -> None:
    """Print a line (or lines) of ours, sanitized: every print of the CLI goes through here."""
    stream = sys.stdout if file is None else file
    stream.write(safe(text) + end)
    stream.flush()


def to_json(value: Any) -> str:
    """Pretty JSON, also safe on a terminal: the characters `safe` escapes are written as
    JSON escapes (the same value to a JSON reader)."""
    return json_safe(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def when(value: Any) -> str:
    """20261124T161807Z -> 2026-11-24 16:18:07Z; anything else as it is; None -> '-'."""
    if not value:
        return "-"
    text = str(value)
    if len(text) == 16 and text[8] == "T" and text.endswith("Z") and text[:8].isdigit() and text[9:15].isdigit():
        return f"{text[0:4]}-{text[4:6]}-{text[6:8]} {text[9:11]}:{text[11:13]}:{text[13:15]}Z"
    return text


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return " ".join(safe(str(value)).split())   # one line per row, whatever the field holds


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    body = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [list(headers), *body]]
    return "\n".join(lines)


def _connected(state: Any) -> str:
    return "connected" if isinstance(state, dict) and state.get("status") == "CONNECTED" else "-"


TUNNEL_HEADERS = ("TUNNEL_ID", "DEVICE_ID", "STATUS", "SOURCE", "DEVICE", "CREATED", "ENDS", "DESCRIPTION")


def tunnel_row(info: dict) -> list[str]:
    if info.get("status") == "CLOSED":
        ends = f"{when(info.get('closed_time'))} ({info.get('close_reason') or 'closed'})"
    else:
        ends = when(info.get("expires_at"))
    return [info.get("tunnel_id", "?"), info.get("device_id", "?"), info.get("status", "?"),
            _connected(info.get("source_connect_state")), _connected(info.get("device_connect_state")),
            when(info.get("create_time")), ends, info.get("description") or ""]


def tunnels_table(tunnels: Sequence[dict]) -> str:
    if not tunnels:
        return "no tunnels"
    return table(TUNNEL_HEADERS, [tunnel_row(t) for t in tunnels])


SHOW_FIELDS = ("tunnel_id", "device_id", "status", "description", "custom_info", "create_time", "expires_at",
               "closed_time", "close_reason", "source_connect_state", "device_connect_state", "notify_status")


def fields(info: dict, order: Sequence[str] = SHOW_FIELDS) -> str:
    """`key: value` lines, the known keys first in `order`, then any others."""
    info = {cell(k): v for k, v in info.items()}   # keys too come from the relay
    keys = [k for k in order if k in info] + sorted(k for k in info if k not in order)
    width = max((len(k) for k in keys), default=0)
    lines = []
    for key in keys:
        value = info[key]
        if key.endswith("_state") and isinstance(value, dict):
            text = f"{value.get('status', '?')} since {when(value.get('last_update_time'))}"
        elif key.endswith(("_time", "_at")):
            text = when(value)
        else:
            text = value
        lines.append(f"{key + ':':<{width + 1}} {cell(text)}")
    return "\n".join(lines)


CREATED_FIELDS = ("tunnel_id", "expires_in", "tunnel_uri", "tunnel_access_token", "device_tunnel_uri",
                  "device_access_token")


def batch_lines(action: str, answer: dict) -> str:
    """One line per tunnel of a batch answer, then the counts."""
    past = {"close": "closed", "delete": "deleted"}[action]
    lines = []
    for result in answer.get("results", []):
        if result.get("result") == "SUCCESS":
            lines.append(f"{cell(result.get('tunnel_id'))}: {past}")
        else:
            lines.append(f"{cell(result.get('tunnel_id'))}: FAILED {cell(result.get('error_code', '?'))}: "
                         f"{cell(result.get('error_msg'))}")
    return "\n".join(lines)


def single_result(tunnel_id: str, error: Any = None) -> dict:
    """The answer of one close or delete, in the shape of a batch answer (for --json)."""
    if error is None:
        return {"results": [{"tunnel_id": tunnel_id, "result": "SUCCESS"}], "success_count": 1, "failure_count": 0}
    return {"results": [{"tunnel_id": tunnel_id, "result": "FAILED", "error_code": error.code,
                         "error_msg": error.message}], "success_count": 0, "failure_count": 1}
