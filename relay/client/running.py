"""How the long-running client commands (`relay forward`, `relay localproxy`) start and stop:
their source token from standard input, and running until a signal or the work ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from relay.errors import ConfigError


def token_and_target(args: argparse.Namespace) -> str | None:
    """The source token read from standard input with --source-token-stdin (None without it),
    once the command names what to reach: a DEVICE_ID or --tunnel."""
    token = None
    if args.source_token_stdin:
        if not args.tunnel:
            raise ConfigError("--source-token-stdin goes with --tunnel TUNNEL_ID")
        token = sys.stdin.readline().strip()
        if not token:
            raise ConfigError("--source-token-stdin: standard input is empty")
    if not args.tunnel and not args.device_id:
        raise ConfigError("give the DEVICE_ID, or --tunnel TUNNEL_ID")
    return token


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (where the loop can take signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def until(work: Coroutine[Any, Any, int], stop: asyncio.Event, notice: Callable[[str], None]) -> int:
    """`work`'s exit status, or 0 once `stop` is set first (then `work` is cancelled)."""
    main = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
    if main.cancelled():
        notice("stopped")
        return 0
    return main.result()
