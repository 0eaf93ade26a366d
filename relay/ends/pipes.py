"""The asyncio side of both protocols' ends: TCP connections joined to a tunnel's
WebSocket, for the agent and the application side. The rules are sans-I/O, elsewhere:
Huawei's `tcp` service in relay/ends/huawei_tcp.py, AWS's streams in relay/ends/aws_streams.py.

- the socket plumbing both share: `reset` (end a TCP connection with RST), `describe` (an
  error in one line), `wait_closed` (a pipe's tasks, once it is done), `limit_write_buffer`;
- Huawei: `TcpPipe` joins one asyncio TCP stream to a `huawei_tcp.Connection` and a `send`
  coroutine (the tunnel's WebSocket). It reads its socket only while it has credit, and
  acknowledges bytes only once they are written to its socket (drained), so a slow reader on
  either side holds at most `WINDOW` bytes per connection in the tunnel and in each end.
  `TcpPipes`: the forwarded connections of one WebSocket connection.
- The codec's data path (both protocols; `attach(socket)` when the socket has one,
  relay/ends/websocket.py): a pipe reads up to READ_SIZE (AWS: AWS_READ_SIZE) at once and
  hands it to the socket's `send_data` (the codec builds every message in one call); the
  socket hands decoded data to `data(...)` in stream order.
- Two synchronous ways, for a round trip's latency (an interactive shell waits on each
  message): the relay's data that finds nothing queued ahead of it and a socket that keeps up
  is written in the very read that decoded it (`data_now`, the socket's `deliver_now`), and a
  read of a local socket goes out in the call that brought it (`take_now`, offered by
  relay/ends/local_streams.py) while the pipe's reader task waits in read(), within the credit,
  and the WebSocket's transport keeps up (`send_data_now`). Whatever one of them cannot take
  goes the awaited way, and so does everything after it until that way has caught up: the
  order holds.
- AWS: `StreamPipes` joins TCP streams to a stream table (`Destination`/`Source`) and a
  `send` coroutine; `StreamPipe` is one of its connections. Flow control: a connection's
  socket is read only once the previous chunk was sent (the WebSocket's writer waits for its
  transport to drain), and the relay's data for a socket whose peer does not read stops the
  WebSocket's reader at `HIGH` bytes queued, until it drains below `LOW`. The protocol has no
  per-connection credit, so a stalled connection holds back the others of the same tunnel
  (as AWS's localproxy does).

Standard library and the rules modules only (the WebSocket is a `send` coroutine handed in,
its data path a `DataPath`/`AwsDataPath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import typing
from collections.abc import Awaitable, Callable, Iterable

from relay.aws_messages import MAX_PAYLOAD, MessageReader, MessageType
from relay.ends import huawei_tcp
from relay.ends.local_streams import open_local, offer_reads
from relay.ends.aws_streams import (EndStreams, Key, Source, StreamClose, StreamConnect, StreamDeliver, StreamEffect,
                                    StreamNotice, StreamSend, stream_name)

log = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]      # a Huawei tunnel's WebSocket: one text message
SendData = Callable[[str, bytes], Awaitable[None]]   # ... its codec's data path: a connection's raw bytes
SendBytes = Callable[[bytes], Awaitable[None]]   # an AWS tunnel's WebSocket: one binary message
SendDataNow = Callable[[str, bytes], bool]       # `SendData` when it need not wait; False: not sent



@typing.runtime_checkable
class AwsDataPath(typing.Protocol):
    """An AWS tunnel socket with the codec's data path (relay/ends/websocket.py's AwsSocket)."""

    on_data: Callable[[str, int, int, bytes], Awaitable[None]] | None
    deliver_now: Callable[[tuple[typing.Any, ...]], bool] | None

    async def send_data(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> None: ...

    def send_data_now(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> bool: ...


@typing.runtime_checkable
class DataPath(typing.Protocol):
    """A tunnel socket with the codec's data path (relay/ends/websocket.py's TunnelSocket)."""

    on_data: Callable[[str, bytes], Awaitable[None]] | None
    deliver_now: Callable[[tuple[typing.Any, ...]], bool] | None

    async def send_data(self, conn_id: str, raw: bytes) -> None: ...

    def send_data_now(self, conn_id: str, raw: bytes) -> bool: ...


def take_data_path(pipes: typing.Any, socket: object, path: type) -> None:
    """Both protocols' `attach`: when `socket` has the codec's data path (`path`), its data
    items go to the pipes (`data`, or `data_now` in the read itself) and the pipes send through
    it (`send_data`, `send_data_now`); otherwise the pipes send messages one by one."""
    if isinstance(socket, path):
        found: typing.Any = socket   # a DataPath or an AwsDataPath: the same four names
        found.on_data, found.deliver_now = pipes.data, pipes.data_now
        pipes.send_data, pipes.send_data_now = found.send_data, found.send_data_now
    else:
        pipes.send_data = pipes.send_data_now = None


READ_SIZE = 64 * 1024            # Huawei: the most a pipe reads from its socket at once (within its credit)
AWS_READ_SIZE = 4 * MAX_PAYLOAD  # AWS with the codec's path: the most a pipe reads at once (4 DATA messages)
HIGH = 256 * 1024                # AWS: relay data queued for one socket: stop reading the WebSocket
LOW = 64 * 1024                  # ... and read it again below this
CONNECT_TIMEOUT = 10.0


# -- the socket plumbing both protocols share ------------------------------------------------------


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the TCP connection so that its peer sees a reset (RST), not an orderly end:
    a forwarded connection that broke must not look complete."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def describe(exc: BaseException) -> str:
    """An error in one short line, for logs and messages."""
    return (str(exc) or type(exc).__name__).split("\n", 1)[0][:200]


def limit_write_buffer(writer: asyncio.StreamWriter, high: int) -> None:
    """`drain()` waits until the transport holds at most `high` bytes (0: until the kernel took
    everything, so what is acknowledged was really written)."""
    with contextlib.suppress(AttributeError, NotImplementedError):
        writer.transport.set_write_buffer_limits(high=high)


async def wait_closed(done: asyncio.Event, tasks: Iterable[asyncio.Task[None]]) -> None:
    """Once `done` is set, wait for a pipe's tasks to end (but the caller's own, if it is one)."""
    await done.wait()
    current = asyncio.current_task()
    for task in tasks:
        if task is not current:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- Huawei: the `tcp` service's connections ---------------------------------------------------------


class TcpPipe:
    """One TCP stream joined to the tunnel. `feed` takes the peer's messages for this
    connection in order (it never waits for the socket); `start` begins moving data;
    `done` is set when both directions are closed or the connection was aborted."""

    def __init__(self, conn: huawei_tcp.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 send: SendText, extra: dict[str, str] | None = None) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self._send = send
        # The codec's data path (TcpPipes.add sets it from the socket): one call per read, no
        # message built here; without it, forward_data messages one by one through `send`.
        self.send_data: SendData | None = None
        self.send_data_now: SendDataNow | None = None   # ... the same when it need not wait
        self._reading = False   # the reader task waits in read(): `take_now` may send in its place
        self.extra = {**(extra or {}), "connection_id": conn.conn_id}
        self.done = asyncio.Event()
        # bytes to write; an int: that many bytes written already, acknowledged once drained;
        # a str: an ack due, to send; None: the peer's eof
        self._queue: asyncio.Queue[bytes | int | str | None] = asyncio.Queue()
        self._credit = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._out_done = self._in_done = False
        limit_write_buffer(writer, 0)   # acknowledge only what the kernel took

    def start(self) -> None:
        offer_reads(self.writer, self.take_now)
        if not self._tasks and not self.done.is_set():
            self._tasks = [asyncio.create_task(self._socket_to_tunnel(), name=f"fwd-out-{self.conn.conn_id}"),
                           asyncio.create_task(self._tunnel_to_socket(), name=f"fwd-in-{self.conn.conn_id}")]

    async def feed(self, msg: huawei_tcp.Message) -> None:
        if self.done.is_set():
            return
        try:
            if msg.op == huawei_tcp.DATA:
                raw = self.conn.on_data(msg.data)
                if raw:
                    self._queue.put_nowait(raw)
            elif msg.op == huawei_tcp.ACK:
                self.conn.on_ack(msg.data)
                self._credit.set()
            elif msg.op == huawei_tcp.CLOSE:
                reason = self.conn.on_close(msg.data)
                if reason is None:
                    self._queue.put_nowait(None)   # after every byte queued before it
                else:
                    log.info("forwarded connection aborted by the other end: %s", reason, extra=self.extra)
                    await self.abort(None)
        except huawei_tcp.ForwardError as exc:
            log.warning("forwarded connection broken by the other end: %s", exc, extra=self.extra)
            await self.abort(f"protocol error: {exc}")

    async def feed_data(self, raw: bytes) -> None:
        """The peer's forward_data for this connection, decoded by the codec (in stream order
        with the messages `feed` takes)."""
        if self.done.is_set() or self.feed_data_now(raw):
            return
        try:
            self.conn.on_raw_data(len(raw))
        except huawei_tcp.ForwardError as exc:
            log.warning("forwarded connection broken by the other end: %s", exc, extra=self.extra)
            await self.abort(f"protocol error: {exc}")
            return
        self._queue.put_nowait(raw)   # behind what is queued (or the socket is slow): the writer's turn

    def take_now(self, data: bytes) -> bool:
        """A read of the socket, sent on in this call when the reader task waits for it and it
        fits the credit (relay/ends/local_streams.py); False: it goes to the reader task, and so
        does every read after it until the task has read it (their order)."""
        if not self._reading:
            return False
        conn, send = self.conn, self.send_data_now
        if (send is None or len(data) > conn.credit or conn.sent_eof or conn.aborted is not None
                or not send(conn.conn_id, data)):
            self._reading = False
            return False
        conn.sent(len(data))
        return True

    def feed_data_now(self, raw: bytes) -> bool:
        """`feed_data` without waiting, when nothing is queued ahead and the socket keeps up:
        True when `raw` was handled (written, or of no use: the pipe is done), False when it
        must take `feed_data`'s way (nothing was changed)."""
        if self.done.is_set():
            return True
        transport = self.writer.transport
        if not self._tasks or not self._queue.empty() or transport.is_closing() or transport.get_write_buffer_size():
            return False   # behind what is queued (or the socket is slow): the writer's turn
        # Nothing ahead of it: written now, without waking the writer (a round trip's latency).
        try:
            self.conn.on_raw_data(len(raw))
        except huawei_tcp.ForwardError as exc:
            log.warning("forwarded connection broken by the other end: %s", exc, extra=self.extra)
            self._spawn(self.abort(f"protocol error: {exc}"))
            return True
        self.writer.write(raw)
        if transport.get_write_buffer_size():
            self._queue.put_nowait(len(raw))   # the kernel did not take it all: acknowledged once drained
            return True
        ack = self.conn.on_written(len(raw))
        if ack is not None:
            self._queue.put_nowait(ack)   # the writer task sends it (an ack is not a round trip's latency)
        return True

    def _spawn(self, work: typing.Coroutine[typing.Any, typing.Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.append(task)

    async def abort(self, reason: str | None, *, tell_peer: bool = True) -> None:
        """Abort the TCP connection. With a `reason` (our decision), the peer is told,
        unless `tell_peer` is False (the tunnel is gone)."""
        if self.done.is_set():
            return
        if reason is not None:
            payload = self.conn.abort(reason)
        else:
            payload = None
            self.conn.aborted = self.conn.aborted or "aborted"
        self.done.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        reset(self.writer)
        if payload is not None and tell_peer:
            with contextlib.suppress(Exception):
                await self._send(payload)

    def close(self, reason: str) -> None:
        """End a connection that never started (its forward_open was refused): a plain close."""
        if self.done.is_set():
            return
        self.conn.aborted = self.conn.aborted or reason
        self.done.set()
        self.writer.close()

    async def wait_closed(self) -> None:
        await wait_closed(self.done, self._tasks)

    # -- the two directions --------------------------------------------------------------

    async def _socket_to_tunnel(self) -> None:
        held = b""   # read, but over the credit `take_now` left while this task waited in read()
        try:
            while True:
                while self.conn.credit == 0:
                    self._credit.clear()
                    await self._credit.wait()
                send_data = self.send_data
                if held:
                    data, held = held, b""
                else:
                    self._reading = True
                    try:
                        data = await self.reader.read(min(READ_SIZE if send_data else huawei_tcp.CHUNK,
                                                          self.conn.credit))
                    finally:
                        self._reading = False
                    if not data:
                        await self._send(self.conn.eof())
                        break
                if len(data) > self.conn.credit:
                    data, held = data[:self.conn.credit], data[self.conn.credit:]
                    if not data:
                        continue
                if send_data is not None:
                    self.conn.sent(len(data))
                    await send_data(self.conn.conn_id, data)
                    continue
                for payload in self.conn.outgoing(data):
                    await self._send(payload)
        except (ConnectionError, OSError) as exc:
            await self.abort(f"the TCP connection failed: {describe(exc)}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the tunnel's WebSocket failed under us
            await self.abort(f"cannot send: {describe(exc)}", tell_peer=False)
            return
        self._out_done = True
        self._maybe_finished()

    async def _tunnel_to_socket(self) -> None:
        try:
            while True:
                raw = await self._queue.get()
                if raw is None:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    break
                if isinstance(raw, str):
                    await self._send(raw)   # feed_data_now's ack
                    continue
                if isinstance(raw, int):
                    n = raw   # written by feed_data already
                else:
                    self.writer.write(raw)
                    n = len(raw)
                await self.writer.drain()
                ack = self.conn.on_written(n)
                if ack is not None:
                    await self._send(ack)
        except (ConnectionError, OSError) as exc:
            await self.abort(f"the TCP connection failed: {describe(exc)}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.abort(f"cannot send: {describe(exc)}", tell_peer=False)
            return
        self._in_done = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self._out_done and self._in_done and not self.done.is_set():
            self.done.set()
            self.writer.close()


class TcpPipes:
    """The forwarded connections of one tunnel connection, by id, with the peaks of the
    flow-control counters of every connection seen (for tests and logs)."""

    def __init__(self) -> None:
        self.by_id: dict[str, TcpPipe] = {}
        self.send_data: SendData | None = None   # the current socket's data path, for the pipes added
        self.send_data_now: SendDataNow | None = None
        self.peak_unacked = 0
        self.peak_inbound = 0
        self._watchers: set[asyncio.Task[None]] = set()

    def add(self, pipe: TcpPipe) -> None:
        self.by_id[pipe.conn.conn_id] = pipe
        pipe.send_data = self.send_data
        pipe.send_data_now = self.send_data_now
        watcher = asyncio.create_task(self._forget_when_done(pipe))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _forget_when_done(self, pipe: TcpPipe) -> None:
        await pipe.wait_closed()
        self._record(pipe)
        if self.by_id.get(pipe.conn.conn_id) is pipe:
            del self.by_id[pipe.conn.conn_id]

    def _record(self, pipe: TcpPipe) -> None:
        self.peak_unacked = max(self.peak_unacked, pipe.conn.peak_unacked)
        self.peak_inbound = max(self.peak_inbound, pipe.conn.peak_inbound)

    def peaks(self) -> tuple[int, int]:
        """The most bytes ever unacknowledged (sent, received) by one connection."""
        for pipe in self.by_id.values():
            self._record(pipe)
        return self.peak_unacked, self.peak_inbound

    async def route(self, msg: huawei_tcp.Message) -> bool:
        """Hand a data/ack/close message to its connection; False when it has none."""
        pipe = self.by_id.get(msg.conn_id)
        if pipe is None:
            return False
        await pipe.feed(msg)
        return True

    async def data(self, conn_id: str, raw: bytes) -> None:
        """The codec's data item: a connection's decoded forward_data (none: a late item for a
        finished connection, nothing to do)."""
        pipe = self.by_id.get(conn_id)
        if pipe is not None:
            await pipe.feed_data(raw)

    def data_now(self, item: tuple[typing.Any, ...]) -> bool:
        """`data` without waiting (the socket's `deliver_now`): False when the item must take
        the awaited way (no connection yet, or its pipe has something queued)."""
        pipe = self.by_id.get(item[0])
        return pipe is not None and pipe.feed_data_now(item[1])

    def attach(self, socket: object) -> None:
        """Take the data path of the tunnel's socket when it has one (relay/ends/websocket.py's
        `TunnelSocket`): its data items come here, and new pipes send through it."""
        take_data_path(self, socket, DataPath)

    async def abort_all(self, reason: str) -> int:
        """The tunnel's WebSocket is gone: abort every connection (no one to tell)."""
        pipes = list(self.by_id.values())
        for pipe in pipes:
            await pipe.abort(reason, tell_peer=False)
        for pipe in pipes:
            await pipe.wait_closed()
        self.by_id.clear()
        return len(pipes)


# -- AWS: the streams of a tunnel --------------------------------------------------------------------


class StreamPipe:
    """One TCP connection of a stream: a writer task empties the relay's data into the
    socket; a reader task turns what the socket gives into DATA messages."""

    def __init__(self, pipes: StreamPipes, key: Key) -> None:
        self.pipes = pipes
        self.key = key
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.closing = False               # the table is done with it: no more events from it
        self.queued = 0                    # bytes of the relay's data not yet written to the socket
        self.space = asyncio.Event()
        self.space.set()
        self.bytes_in = self.bytes_out = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()   # None: close after the data
        self._tasks: list[asyncio.Task[None]] = []
        self._reading = False   # the reader task waits in read(): `take_now` may send in its place

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        limit_write_buffer(writer, LOW)
        self.connected.set()
        if self.done.is_set():   # reset while it was connecting
            reset(writer)
            return
        self._tasks.append(asyncio.create_task(self._to_socket(), name=f"aws-in-{self.key}"))
        if not self.closing:
            offer_reads(writer, self.take_now)
            self._tasks.append(asyncio.create_task(self._from_socket(reader), name=f"aws-out-{self.key}"))

    def take_now(self, data: bytes) -> bool:
        """A read of the socket, sent on in this call when the reader task waits for it
        (relay/ends/local_streams.py); False: it goes to the reader task, and so does every
        read after it until the task has read it (their order)."""
        if not self._reading:
            return False
        if not self.pipes.local_data_now(self, data):
            self._reading = False
            return False
        self.bytes_out += len(data)
        return True

    def deliver(self, data: bytes) -> None:
        if self.writes_now():
            self.write_now(data)
            return
        self.queued += len(data)
        if self.queued > HIGH:
            self.space.clear()
        self._queue.put_nowait(data)

    def writes_now(self) -> bool:
        """Whether `deliver` would write at once (nothing queued ahead, the socket keeps up)."""
        writer = self.writer
        return (writer is not None and bool(self._tasks) and self._queue.empty() and not self.done.is_set()
                and not self.closing and not writer.transport.is_closing()
                and not writer.transport.get_write_buffer_size())

    def write_now(self, data: bytes) -> None:
        """Nothing ahead of it (`writes_now`): written now, without waking the writer (latency)."""
        assert self.writer is not None
        self.writer.write(data)
        self.bytes_in += len(data)

    def close(self, abort: bool) -> None:
        """The table closed it: flush what is queued then close, or reset now."""
        self.closing = True
        for task in self._tasks[1:]:
            task.cancel()   # the socket's reader: nothing more goes to the table
        if abort:
            self._finish(abort=True)
        else:
            self._queue.put_nowait(None)   # still connecting: attach() starts the writer, which flushes

    async def _to_socket(self) -> None:
        assert self.writer is not None
        try:
            while True:
                data = await self._queue.get()
                if data is None:
                    break
                self.writer.write(data)
                await self.writer.drain()
                self.bytes_in += len(data)
                self.queued -= len(data)
                if self.queued <= LOW:
                    self.space.set()
        except (ConnectionError, OSError) as exc:
            await self.pipes.local_closed(self, f"the TCP connection failed: {describe(exc)}", abort=True)
            return
        self._finish(abort=False)

    async def _from_socket(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._reading = True
                try:
                    data = await reader.read(AWS_READ_SIZE if self.pipes.send_data is not None else MAX_PAYLOAD)
                finally:
                    self._reading = False
                if not data:
                    break
                self.bytes_out += len(data)
                if not await self.pipes.local_data(self, data):
                    return
        except (ConnectionError, OSError) as exc:
            await self.pipes.local_closed(self, f"the TCP connection failed: {describe(exc)}", abort=True)
            return
        # the local peer closed (the protocol has no half-close): end the stream at the other
        # end, and close this socket once the relay's data queued before now is written
        await self.pipes.local_closed(self, "closed by the local peer", abort=False)

    def _finish(self, abort: bool) -> None:
        if self.done.is_set():
            return
        self.closing = True
        self.done.set()
        self.space.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.writer is not None:
            if abort:
                reset(self.writer)
            else:
                self.writer.close()

    async def wait_closed(self) -> None:
        await wait_closed(self.done, self._tasks)


class StreamPipes:
    """The TCP connections of one WebSocket connection of either end. `feed` takes the bytes
    of each binary WebSocket message (it waits while a socket's queue is over HIGH);
    `accept` adds a local connection (source); `lost` ends everything."""

    def __init__(self, table: EndStreams, send: SendBytes, *, extra: dict[str, str] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.table = table
        self._send = send
        self.extra = dict(extra or {})
        self.connect_timeout = connect_timeout
        self.reader = MessageReader()
        self.send_data: Callable[[str, int, int, bytes], Awaitable[None]] | None = None   # attach()
        self.send_data_now: Callable[[str, int, int, bytes], bool] | None = None
        self.links: dict[Key, StreamPipe] = {}
        self.services_known = asyncio.Event()
        self.opened = 0           # connections these pipes carried (for logs and tests)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()   # effects of one event are applied in order

    # -- in from the relay ---------------------------------------------------------------

    async def feed(self, data: bytes) -> None:
        """Raises ValueError (from the decoder) on bytes that are not the protocol."""
        for msg in self.reader.feed(data):
            effects = self.table.received(msg)
            if msg.type == MessageType.SERVICE_IDS:
                self.services_known.set()
            await self.apply(effects)

    def attach(self, socket: object) -> None:
        """Take the data path of the tunnel's socket when it has one (relay/ends/websocket.py's
        `AwsSocket`): its DATA items come to `data`, and the sockets' reads go out through it."""
        take_data_path(self, socket, AwsDataPath)

    async def data(self, service_id: str, stream_id: int, connection_id: int, payload: bytes) -> None:
        """The codec's DATA item, in stream order with the messages `feed` takes."""
        await self.apply(self.table.received_data(service_id, stream_id, connection_id, payload))

    def data_now(self, item: tuple[typing.Any, ...]) -> bool:
        """`data` without waiting (the socket's `deliver_now`): only when the DATA goes to a
        socket that takes it at once (or is stale); False, with nothing changed, otherwise."""
        effects = self.table.received_data(*item)
        if not effects:
            return True   # stale: a stream or connection that is over
        if len(effects) != 1 or not isinstance(effects[0], StreamDeliver):
            return False
        link = self.links.get(effects[0].key)
        if link is None or not link.writes_now():
            return False
        link.write_now(effects[0].data)
        return True

    async def apply(self, effects: list[StreamEffect]) -> None:
        for effect in effects:
            if isinstance(effect, StreamSend):
                await self._send(effect.data)
            elif isinstance(effect, StreamDeliver):
                link = self.links.get(effect.key)
                if link is not None and not link.closing:
                    link.deliver(effect.data)
                    if not link.space.is_set():
                        await link.space.wait()   # the socket's peer is slow: hold the WebSocket
            elif isinstance(effect, StreamClose):
                link = self.links.get(effect.key)
                if link is not None:
                    log.info("stream %s: %s", stream_name(effect.key), effect.reason, extra=self.extra)
                    link.close(effect.abort)
            elif isinstance(effect, StreamConnect):
                self._connect(effect)
            elif isinstance(effect, StreamNotice):
                log.log(logging.WARNING if effect.warning else logging.INFO, "%s", effect.text, extra=self.extra)

    # -- TCP connections -----------------------------------------------------------------

    def _add(self, key: Key) -> StreamPipe:
        old = self.links.get(key)
        if old is not None:
            old.close(abort=True)
        link = StreamPipe(self, key)
        self.links[key] = link
        self.opened += 1
        task = asyncio.create_task(self._forget(link), name=f"aws-forget-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return link

    async def _forget(self, link: StreamPipe) -> None:
        await link.wait_closed()
        if self.links.get(link.key) is link:
            del self.links[link.key]

    def _connect(self, effect: StreamConnect) -> None:
        link = self._add(effect.key)
        task = asyncio.create_task(self._open(link, effect.address), name=f"aws-connect-{effect.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, link: StreamPipe, address: tuple[str, int]) -> None:
        target = f"{address[0]}:{address[1]}"
        try:
            reader, writer = await asyncio.wait_for(open_local(*address), self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else describe(exc)
            log.warning("stream %s: cannot connect to %s: %s", stream_name(link.key), target, why, extra=self.extra)
            await self.local_closed(link, f"cannot connect to {target}: {why}", abort=True)
            return
        log.info("stream %s: connected to %s", stream_name(link.key), target, extra=self.extra)
        link.attach(reader, writer)

    async def accept(self, service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> StreamPipe:
        """Source: a local connection for `service`; STREAM_START or CONNECTION_START goes out."""
        assert isinstance(self.table, Source)
        async with self._lock:
            key, effects = self.table.accepted(service)
            link = self._add(key)
            await self.apply(effects)
        link.attach(reader, writer)
        return link

    async def local_data(self, link: StreamPipe, data: bytes) -> bool:
        if link.closing or self.links.get(link.key) is not link:
            return False
        if self.send_data is None:
            await self.apply(self.table.local_data(link.key, data))
        elif self.table.may_send(link.key, data):
            await self.send_data(*self.table.wire_fields(link.key), data)
        return True

    def local_data_now(self, link: StreamPipe, data: bytes) -> bool:
        """`local_data` when it need not wait: True when `data` went out; False, with nothing
        sent, when it must take the awaited way."""
        send = self.send_data_now
        if send is None or link.closing or self.links.get(link.key) is not link or not self.table.may_send(link.key, data):
            return False
        return send(*self.table.wire_fields(link.key), data)

    async def local_closed(self, link: StreamPipe, reason: str, *, abort: bool) -> None:
        """`link`'s socket ended (or never opened): the other end is told, unless the table
        had closed it already."""
        if not link.closing and self.links.get(link.key) is link:
            link.closing = True
            log.info("stream %s: %s (%d bytes in, %d out)", stream_name(link.key), reason, link.bytes_in,
                     link.bytes_out, extra=self.extra)
            with contextlib.suppress(Exception):   # the WebSocket may be gone: lost() follows
                await self.apply(self.table.local_closed(link.key, reason))
        if abort:
            link._finish(abort=True)
        else:
            link._queue.put_nowait(None)

    async def lost(self) -> int:
        """The WebSocket ended: reset every connection; how many there were."""
        self.table.connection_lost()
        links = list(self.links.values())
        for link in links:
            link.close(abort=True)
        for link in links:
            await link.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.links.clear()
        return len(links)
