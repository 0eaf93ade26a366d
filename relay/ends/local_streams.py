"""The ends' local TCP connections (to the device's services, from the application's
clients): asyncio streams whose reads a pipe may take in the same call. Standard library only.

asyncio's stream hands every read to a `StreamReader` and wakes the task waiting in
`read()`: one turn of the event loop per message before it goes out, a round trip's latency
on an interactive tunnel. Here the protocol first offers the bytes to the pipe's `take_now`
(relay/ends/pipes.py); when the pipe sends them on at once it returns True and the reader
never sees them. Everything else (what the pipe cannot take now, the end of the stream,
errors, the writer and its `drain`) is asyncio's stream unchanged, so the pipe's reader task
stays the way for the slow cases, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

TakeNow = Callable[[bytes], bool]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

LIMIT = 2 ** 16   # asyncio's default: the StreamReader pauses the socket above twice this


class LocalStreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol; a read that `take_now` takes never reaches the reader."""

    take_now: TakeNow | None = None

    def data_received(self, data: bytes) -> None:
        take = self.take_now
        if take is not None and take(data):
            return
        super().data_received(data)


async def open_local(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, with a `LocalStreamProtocol`. Raises OSError."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LIMIT, loop=loop)
    protocol = LocalStreamProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def serve_local(handle: Handler, host: str, port: int) -> asyncio.Server:
    """`asyncio.start_server`, with a `LocalStreamProtocol` per accepted connection."""
    loop = asyncio.get_running_loop()

    def protocol() -> LocalStreamProtocol:
        return LocalStreamProtocol(asyncio.StreamReader(limit=LIMIT, loop=loop), handle, loop=loop)

    return await loop.create_server(protocol, host, port)


def offer_reads(writer: asyncio.StreamWriter, take_now: TakeNow | None) -> None:
    """Offer the stream's reads to `take_now` first (None: no more); nothing for a stream
    that is not a local one (asyncio's own: every read goes to its reader)."""
    protocol = writer.transport.get_protocol()
    if isinstance(protocol, LocalStreamProtocol):
        protocol.take_now = take_now
