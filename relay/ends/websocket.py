"""The one WebSocket client of both protocols' ends: the agent (device-connect, AWS
destination) and the application side (`relay ssh`/`exec`/`forward`, `relay localproxy`).
An adapter over aiohttp's client, and the only module of relay/ends that imports aiohttp.

Its interface is bytes and messages, so that what sits above it (the reconnect loops, the
stream tables, the pipes) never sees aiohttp:

- `Connector.open(...)` -> a socket, or raises `Refused` (the upgrade was answered with an
  HTTP status; what follows is relay/closes.py's `after_refusal`) or `Unreachable`;
- `socket.send(bytes | str)` (a binary or a text message; raises ConnectionError when
  the socket is gone), `async for message in socket` (bytes or str, until the close),
  `close_code` once it ended (1006: no close frame, the connection was lost; relay/closes.py's `after_close`).

Both protocols' sockets have a raw data path besides: aiohttp does the upgrade, then the
connection's transport is taken from it and an asyncio Protocol makes ONE call into the ends'
codec (docs/codec.md) per read. `TunnelSocket` (Huawei, `relay.codec.EndCodec`): the `tcp`
service's data goes straight to `on_data(conn_id, raw)` (the pipes, relay/ends/pipes.py), every
other message is handed to `async for` as before; `send_data(conn_id, raw)` writes the
forward_data frames the codec builds in one call. `AwsSocket` (`relay.codec.AwsEndCodec`) the
same with DATA messages, keyed (service_id, stream_id, connection_id).

For latency, both have a synchronous way too: a data item decoded while the iterating task
waits with nothing queued goes to `deliver_now(item)` in the same call (the pipes write it to
their socket at once, or refuse it, and it takes the task's way), and `send_data_now(...)`
writes without waiting while the transport is under its limit.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import os
import ssl as ssl_
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aiohttp

from relay import codec
from relay.closes import ABNORMAL
from relay.upgrade_tail import UpgradeTail

log = logging.getLogger(__name__)

# What a send on a socket that went away may raise (aiohttp's reset error is a ConnectionError).
SEND_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, aiohttp.ClientError)


def tls_setting(ca_file: str | None = None, insecure: bool = False) -> ssl_.SSLContext | bool:
    """What `open`'s `ssl=` takes (ws:// ignores it): False checks no certificate (--insecure),
    a context trusts `ca_file`, True verifies with the system's CAs."""
    if insecure:
        return False
    if ca_file:
        return ssl_.create_default_context(cafile=ca_file)
    return True


class Refused(Exception):
    """The relay answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the relay refused the connection (HTTP {status})")
        self.status = status


class Unreachable(Exception):
    """No WebSocket: the relay could not be reached, or the connection failed before the
    upgrade. `error` is what failed (each end words it its own way)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error = error


class NotConnected(ConnectionResetError):
    """A send with no WebSocket up: between two connections, or after the last."""

    def __init__(self) -> None:
        super().__init__("the tunnel's WebSocket is not connected")


async def send_on(socket: ClientSocket | None, data: bytes | str) -> None:
    """Send on the current socket of an end that reconnects (None between two connections)."""
    if socket is None:
        raise NotConnected()
    await socket.send(data)


class ClientSocket:
    """One client WebSocket, messages in and out (what every end sees; two kinds below)."""

    broke_rules = False   # this end closed: the relay's bytes were not the protocol

    @property
    def close_code(self) -> int | None:
        """Once it ended: the close code (1006: the connection was lost without one; relay/closes.py's `after_close`)."""
        raise NotImplementedError

    @property
    def protocol(self) -> str | None:
        """The subprotocol the relay chose."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    async def send(self, data: bytes | str) -> None:
        raise NotImplementedError

    def __aiter__(self) -> ClientSocket:
        return self

    async def __anext__(self) -> bytes | str:
        raise NotImplementedError

    async def close(self, code: int = 1000, timeout: float | None = None) -> None:
        raise NotImplementedError


class Connector:
    """Opens client WebSockets on one aiohttp session: its own (`async with Connector()`), or
    one the caller has (the REST client's)."""

    def __init__(self, http: aiohttp.ClientSession | None = None, *, connect_timeout: float = 15.0) -> None:
        self._http = http
        self._own: aiohttp.ClientSession | None = None
        self._connect_timeout = connect_timeout

    async def __aenter__(self) -> Connector:
        if self._http is None:
            self._own = self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = self._http = None

    async def open(self, url: str, *, headers: Mapping[str, str], ssl: ssl_.SSLContext | bool = True,
                   protocols: Sequence[str] = (), heartbeat: float | None = None) -> RawSocket:
        """A WebSocket to `url`: without `protocols` the Huawei protocol's `TunnelSocket`, with
        them (AWS) an `AwsSocket`. The upgrade by aiohttp's HTTP client (proxies, TLS, timeouts
        as for any request), the handshake checked as aiohttp's ws_connect checks it, then the
        transport is ours."""
        assert self._http is not None, "use the Connector in `async with`"
        key = base64.b64encode(os.urandom(16))
        upgrade = {**headers, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": key.decode()}
        if protocols:
            upgrade["Sec-WebSocket-Protocol"] = ",".join(protocols)
        try:
            resp = await self._http.request("GET", url, headers=upgrade, ssl=ssl, read_until_eof=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(exc) from None
        try:
            if resp.status != 101:
                raise Refused(resp.status)
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
            if (resp.headers.get("Upgrade", "").lower() != "websocket"
                    or resp.headers.get("Connection", "").lower() != "upgrade"
                    or resp.headers.get("Sec-WebSocket-Accept", "") != accept):
                raise Unreachable(aiohttp.ClientError("the relay's answer to the upgrade is not a WebSocket handshake"))
            chosen = [p.strip() for p in resp.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            protocol = next((p for p in chosen if p in protocols), None)
            transport, tail = _take_transport(resp)
        except BaseException:
            resp.close()
            raise
        socket: RawSocket
        if protocols:
            socket = AwsSocket(transport, heartbeat=heartbeat, protocol=protocol)
        else:
            socket = TunnelSocket(transport, heartbeat=heartbeat)
        if tail:
            socket.received(tail)
        return socket


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 1.3


def _take_transport(resp: aiohttp.ClientResponse) -> tuple[asyncio.Transport, bytes]:
    """The upgraded connection's transport, and aiohttp made to forget it: its protocol gives
    us what it read past the answer, loses its transport (so that it closes nothing), and its
    connection leaves the connector's pool."""
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    transport = conn.transport if conn is not None else None
    if conn is None or proto is None or transport is None:
        raise Unreachable(ConnectionResetError("the connection closed during the upgrade"))
    catcher = UpgradeTail()
    proto.set_parser(catcher, catcher)   # drains aiohttp's tail into the catcher, drops its read timeout
    proto.transport = None
    proto.connection_lost(None)
    conn.close()        # the connector forgets it; its protocol has no transport left to close
    resp.release()
    return transport, catcher.data


# The raw socket's own queue of items read but not yet taken by `async for` (its consumer):
# reading the relay stops above HIGH bytes and starts again below LOW. The `tcp` service's
# data is bounded besides by each connection's credit (relay/ends/huawei_tcp.py's WINDOW).
HIGH = 256 * 1024
LOW = 64 * 1024


class _EndProtocol(asyncio.Protocol):
    def __init__(self, socket: RawSocket) -> None:
        self.socket = socket

    def data_received(self, data: bytes) -> None:
        self.socket.received(data)

    def eof_received(self) -> bool:
        return False   # the relay closed its side: close ours (connection_lost follows)

    def pause_writing(self) -> None:
        self.socket._writable.clear()

    def resume_writing(self) -> None:
        self.socket._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.socket._lost()


class RawSocket(ClientSocket):
    """A WebSocket on a raw transport, one codec `feed` per read (the two protocols' kinds below).

    Messages in and out as `ClientSocket`; the data of connections besides: incoming data items
    go to `on_data(*key, raw)` (awaited in stream order between the messages, by the task
    iterating the socket), outgoing `send_data(*key, raw)`. Every write waits while the
    transport is over its write-buffer limit (the relay reads slowly). Heartbeat as aiohttp's:
    a ping after `heartbeat` s without a read; no answer within half of it ends the connection
    (close code 1006). `broke_rules`: this end closed because the relay's bytes broke the
    protocol (relay/closes.py's `after_close(code, ours=True)`)."""

    def __init__(self, transport: asyncio.Transport, end_codec: codec.EndCodec | codec.AwsEndCodec, *,
                 heartbeat: float | None = None, protocol: str | None = None) -> None:
        self.transport = transport
        self.codec = end_codec
        self.broke_rules = False
        self._protocol = protocol
        self._close_code: int | None = None
        self._items: collections.deque[tuple[typing.Any, ...]] = collections.deque()
        # the pipes' synchronous way for a data item: True when it was written (or is of no use),
        # False when it must wait its turn (pipes.py `TcpPipes.data_now`, `StreamPipes.data_now`)
        self.deliver_now: Callable[[tuple[typing.Any, ...]], bool] | None = None
        self._queued = 0
        self._paused = False
        self._ended = False           # no more reads: the close, or the connection was lost
        self._sent_close = False
        self._wakeup: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._gone = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._heartbeat = heartbeat
        self._last_read = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        transport.set_protocol(_EndProtocol(self))
        if heartbeat:
            self._timer = loop.call_later(heartbeat, self._ping)

    @property
    def protocol(self) -> str | None:
        return self._protocol

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def closed(self) -> bool:
        return self._ended or self._sent_close or self.transport.is_closing()

    # -- in --------------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        if self._ended:
            return
        self._last_read = self._loop.time()
        try:
            items, to_send, close = self.codec.feed(data)
        except Exception:   # the codec's urandom failed answering a ping: the read is lost
            self._end(ABNORMAL)
            return
        if to_send:
            self.transport.write(to_send)
        if items and self.deliver_now is not None and self._wakeup is not None and not self._items:
            # The reader waits with nothing ahead: data items go to their pipes in this call, not
            # through a wake of the task iterating the socket (one loop turn less per message: a
            # round trip's latency). A pipe that cannot take an item at once says so, and that
            # item and all after it take the task's way, in order.
            taken = 0
            for item in items:
                if item[0] is None or not self.deliver_now(item):
                    break
                taken += 1
            if taken:
                items = items[taken:]
        if items:
            self._items.extend(items)
            self._queued += sum(len(item[-1]) for item in items)
            if self._queued > HIGH and not self._paused:
                self._paused = True
                self.transport.pause_reading()
        if close is not None:
            code, reason, by_server = close
            if not by_server:
                self.broke_rules = True
                log.warning("the relay's bytes are not the protocol (%s); closing with %d", reason, code)
            if not self._sent_close:
                self._sent_close = True
                self.transport.write(self.codec.close(code) if by_server else self.codec.close(code, reason))
            self._end(code)
        if self._items:
            self._wake()

    def _end(self, code: int | None) -> None:
        if not self._ended:
            self._ended = True
            self._close_code = code
        self.transport.close()
        self._wake()

    def _lost(self) -> None:
        if not self._ended:   # no close frame: 1006, as aiohttp's client says
            self._ended = True
            self._close_code = ABNORMAL
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()   # writers waiting for the drain see the socket gone
        self._gone.set()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _message(self, raw: bytes) -> bytes | str | None:
        """A message item as `async for` hands it on (None: skip it)."""
        raise NotImplementedError

    async def _deliver(self, item: tuple[typing.Any, ...]) -> None:
        """A data item, to the pipes (without any it is dropped: no connection)."""
        raise NotImplementedError

    async def __anext__(self) -> bytes | str:
        """The next message, until the connection ends; the data met on the way goes to
        `on_data` first."""
        while True:
            if self._items:
                item = self._items.popleft()
                self._queued -= len(item[-1])
                if self._paused and self._queued < LOW and not self._ended:
                    self._paused = False
                    self.transport.resume_reading()
                if item[0] is None:
                    message = self._message(item[-1])
                    if message is not None:
                        return message
                    continue
                await self._deliver(item)
                continue
            if self._ended:
                raise StopAsyncIteration
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    # -- out -------------------------------------------------------------------------------

    def _write(self, frames: bytes) -> None:
        if self.closed:
            raise NotConnected()
        self.transport.write(frames)

    def _writes_now(self) -> bool:
        """Whether a write may go without waiting: open, and the transport under its limit."""
        return self._writable.is_set() and not self.closed

    async def _drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
            if self._ended:
                raise NotConnected()

    def _ping(self) -> None:
        self._timer = None
        if self.closed or self._heartbeat is None:
            return
        idle = self._loop.time() - self._last_read
        if idle < self._heartbeat:
            self._timer = self._loop.call_later(self._heartbeat - idle, self._ping)
            return
        sent = self._loop.time()
        self.transport.write(self.codec.ping())
        self._timer = self._loop.call_later(self._heartbeat / 2, self._pong_due, sent)

    def _pong_due(self, sent: float) -> None:
        self._timer = None
        if self._ended:
            return
        if self._last_read < sent and not self._paused:   # nothing came back (unless we stopped reading)
            self._end(ABNORMAL)
            self.transport.abort()
            return
        self._ping()

    async def close(self, code: int = 1000, timeout: float | None = None) -> None:
        """Send a close frame (once) and wait for the relay's (or the end of the connection)."""
        if not self._sent_close and not self._ended and not self.transport.is_closing():
            self._sent_close = True
            with contextlib.suppress(Exception):
                self.transport.write(self.codec.close(code))
        if not self._gone.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._gone.wait(), timeout if timeout is not None else 10.0)
        if not self._gone.is_set():
            self.transport.abort()


class TunnelSocket(RawSocket):
    """The Huawei protocol's: `relay.codec.EndCodec`; messages are text; the `tcp` service's
    data items are (conn_id, raw)."""

    codec: codec.EndCodec

    def __init__(self, transport: asyncio.Transport, *, heartbeat: float | None = None) -> None:
        super().__init__(transport, codec.EndCodec(), heartbeat=heartbeat)
        self.on_data: Callable[[str, bytes], Awaitable[None]] | None = None

    def _message(self, raw: bytes) -> str | None:
        try:
            return raw.decode()
        except UnicodeDecodeError:   # the codec checked UTF-8 already; nothing else comes
            return None

    async def _deliver(self, item: tuple[typing.Any, ...]) -> None:
        if self.on_data is not None:
            await self.on_data(item[0], item[1])

    async def send(self, data: bytes | str) -> None:
        """One text message (the Huawei protocol is text only)."""
        self._write(self.codec.text(data))
        await self._drain()

    async def send_data(self, conn_id: str, raw: bytes) -> None:
        """The `tcp` service's bytes of a connection: forward_data messages, one write."""
        self._write(self.codec.data(conn_id, raw))
        await self._drain()

    def send_data_now(self, conn_id: str, raw: bytes) -> bool:
        """`send_data` when it need not wait (True); False: nothing was sent."""
        if not self._writes_now():
            return False
        self.transport.write(self.codec.data(conn_id, raw))
        return True


class AwsSocket(RawSocket):
    """The AWS protocol's: `relay.codec.AwsEndCodec`; messages are binary, each one tunnel
    message with its 2-byte length (as a binary frame carries it); data items are
    (service_id, stream_id, connection_id, payload) as received."""

    codec: codec.AwsEndCodec

    def __init__(self, transport: asyncio.Transport, *, heartbeat: float | None = None,
                 protocol: str | None = None) -> None:
        super().__init__(transport, codec.AwsEndCodec(), heartbeat=heartbeat, protocol=protocol)
        self.on_data: Callable[[str, int, int, bytes], Awaitable[None]] | None = None

    def _message(self, raw: bytes) -> bytes:
        return len(raw).to_bytes(2, "big") + raw

    async def _deliver(self, item: tuple[typing.Any, ...]) -> None:
        if self.on_data is not None:
            await self.on_data(item[0], item[1], item[2], item[3])

    async def send(self, data: bytes | str) -> None:
        """One binary message: an aws_messages.frame(...)."""
        if isinstance(data, str):
            raise TypeError("the AWS protocol is binary only")
        self._write(self.codec.binary(data))
        await self._drain()

    async def send_data(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> None:
        """A connection's bytes: DATA messages of at most MAX_PAYLOAD, one write."""
        self._write(self.codec.data(service_id, stream_id, connection_id, raw))
        await self._drain()

    def send_data_now(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> bool:
        """`send_data` when it need not wait (True); False: nothing was sent."""
        if not self._writes_now():
            return False
        self.transport.write(self.codec.data(service_id, stream_id, connection_id, raw))
        return True
