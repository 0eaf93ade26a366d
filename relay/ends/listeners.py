"""The local listeners of the application side (`relay forward`, `relay localproxy -s`,
`relay forward --protocol aws`): a TCP server whose accepted connections are each handled by
a task it keeps, so that stopping ends them all. Standard library only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from relay.ends.local_streams import serve_local

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def hostport(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listener:
    """One local address; `handle` runs for every accepted connection, in its own task."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None   # where it listens, once it does
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen (port 0: a free one); where it listens. Raises OSError."""
        self._server = await serve_local(self._accept, host, port)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.address = (bound_host, bound_port)
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self.handlers.discard(task)

    def close(self) -> None:
        """Accept no more connections (the ones accepted go on)."""
        if self._server is not None:
            self._server.close()

    async def end_handlers(self) -> None:
        """Cancel the handlers of accepted connections and wait for them."""
        for task in list(self.handlers):
            task.cancel()
        for task in list(self.handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
