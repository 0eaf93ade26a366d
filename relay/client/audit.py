"""`relay audit` and `relay playback` (docs/audit.md, docs/cli.md): the audit trail as a table
(or --json), and a session recording played back on the terminal. relay/cli.py builds the
parsers; exit statuses as for `relay tunnel`: 0 done, 1 the API refused or the relay is not
there, 2 a usage error."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from relay.clock import format_time
from relay.client import output
from relay.client.api import ClientError
from relay.client.commands import make_api
from relay.client.termfilter import TerminalFilter
from relay.errors import ConfigError
from relay.recording import parse_cast, play

PAGE_MAX = 1000   # events per call (docs/audit.md)
_RELATIVE = re.compile(r"^(\d{1,9})([smhd])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when_arg(text: str | None, now: float) -> str | None:
    """--since/--until: the API's formats as they are, or a duration ago (`90s`, `15m`, `2h`, `7d`)."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        return format_time(now - int(relative.group(1)) * _UNITS[relative.group(2)])
    return text.strip()


def event_types(values: list[str] | None) -> list[str] | None:
    """--type, repeated or comma-separated."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return list(dict.fromkeys(names)) or None


# -- relay audit ------------------------------------------------------------------------------


def audit(args: argparse.Namespace) -> int:
    return asyncio.run(audit_async(args, sys.stdout, sys.stderr))


async def audit_async(args: argparse.Namespace, out: TextIO, err: TextIO, now: float | None = None) -> int:
    api = make_api(args)
    moment = time.time() if now is None else now
    query: dict[str, Any] = dict(device_id=args.device, tunnel_id=args.tunnel, event_types=event_types(args.type),
                                 since=when_arg(args.since, moment), until=when_arg(args.until, moment))
    wanted = args.limit
    events: list[dict] = []
    marker = args.marker
    try:
        async with api:
            while True:
                page = await api.audit_page(**query, limit=min(PAGE_MAX, wanted - len(events)), marker=marker)
                events += page.get("events", [])
                marker = page.get("marker")
                if not marker or len(events) >= wanted:
                    break
    except ClientError as exc:
        output.say(f"relay: {exc}", file=err)
        return 1
    if args.json:
        output.say(output.to_json({"events": events, "count": len(events), "marker": marker}), file=out)
        return 0
    output.say(events_table(events), file=out)
    if marker:
        output.say(f"{len(events)} events shown; older ones: --marker {marker} (or a larger --limit)", file=err)
    return 0


EVENT_HEADERS = ("TIME", "EVENT", "ACTOR", "DEVICE_ID", "TUNNEL_ID", "OUTCOME", "DETAIL")


def detail_text(detail: Any) -> str:
    if not isinstance(detail, dict) or not detail:
        return ""
    parts = []
    for key, value in detail.items():
        text = value if isinstance(value, str) else output.to_json(value).replace("\n", "").replace("  ", "")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def events_table(events: list[dict]) -> str:
    if not events:
        return "no events"
    rows = [[output.when(e.get("time")), e.get("event", "?"), e.get("actor", "?"), e.get("device_id"),
             e.get("tunnel_id"), e.get("outcome"), detail_text(e.get("detail"))] for e in events]
    return output.table(EVENT_HEADERS, rows)


# -- relay playback ---------------------------------------------------------------------------


def playback(args: argparse.Namespace) -> int:
    return asyncio.run(playback_async(args, sys.stdout.buffer, sys.stderr))


async def fetch_recording(args: argparse.Namespace) -> bytes:
    async with make_api(args) as api:
        return await api.recording(args.session_id)


async def playback_async(args: argparse.Namespace, out: BinaryIO, err: TextIO, sleep=time.sleep) -> int:
    if args.speed <= 0:
        raise ConfigError("--speed must be above zero")
    if args.max_idle is not None and args.max_idle < 0:
        raise ConfigError("--max-idle must not be negative")
    try:
        data = await fetch_recording(args)
    except ClientError as exc:
        output.say(f"relay: {exc}", file=err)
        return 1
    if args.out:
        if args.out == "-":
            out.write(data)
            out.flush()
        else:
            Path(args.out).write_bytes(data)
            if not args.quiet:
                output.say(f"saved the recording {args.session_id} to {args.out} ({len(data)} bytes, asciicast v2)",
                           file=err)
        return 0
    try:
        header, events = parse_cast(data)
    except ValueError as exc:
        output.say(f"relay: the recording {args.session_id} cannot be played: {exc}", file=err)
        return 1
    if not args.quiet:
        length = max((at for at, _, _ in events), default=0.0)
        output.say(f"playing {header.get('title') or args.session_id}, recorded "
                   f"{output.when(format_time(header.get('timestamp')))}, {length:.1f} s"
                   f"{f' at {args.speed:g}x' if args.speed != 1 else ''} (Ctrl-C stops)", file=err)
    screen = None if args.raw_terminal else TerminalFilter()   # the recorded device's output

    def write(text: str) -> None:
        out.write((text if screen is None else screen.feed(text)).encode("utf-8", "replace"))
        out.flush()

    def marker(text: str) -> None:
        err.write("\r\n")
        output.say(f"[{text}]", file=err)

    play(events, write=write, sleep=sleep, speed=args.speed, max_idle=args.max_idle,
         marker=None if args.quiet else marker)
    if not args.quiet:
        marker("end of the recording")
    return 0
