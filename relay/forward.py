"""TCP forwarding through a tunnel (the `tcp` service, docs/forwarding.md), for both ends.

Two parts, usable by the agent (the device end) and by `relay forward` (the source end):

- sans-I/O: the messages (`open_message`, `data_messages`, ... and `parse`) and
  `Connection`, one forwarded TCP connection's state: credit accounting (at most `WINDOW`
  bytes sent and not yet acknowledged), the acknowledgements owed to the peer, half-close
  in both directions, abort;
- `Pipe`: joins one asyncio TCP stream to a `Connection` and a `send` coroutine (the
  tunnel's WebSocket). It reads its socket only while it has credit, and acknowledges
  bytes only once they are written to its socket (drained), so a slow reader on either
  side holds at most `WINDOW` bytes per connection in the tunnel and in each end.

Messages (envelope of docs/protocol.md, `tunnel_service_type` "tcp", `request_id` = the
connection id, chosen by the source):

    source -> forward_open           {"port": N}
    device -> forward_open_response  {"status_code": "200"|"400"|"403"|"502", "status_msg": ...}
    either -> forward_data           "<base64 of at most 7000 bytes>"
    either -> forward_ack            {"bytes": n}    n more bytes written to the receiver's socket
    either -> forward_close          {"status_msg": "eof"}  the sender's TCP peer stopped sending
                                     {"status_msg": "error: ..."}  abort the connection

Standard library and orjson only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any


from relay import envelope

SERVICE = "tcp"
CHUNK = 7000                 # raw bytes per forward_data: base64 9336 + envelope < 10240
WINDOW = 256 * 1024          # bytes a sender may have unacknowledged, per connection
ACK_THRESHOLD = 32 * 1024    # acknowledge once this many bytes are written (must be <= WINDOW)
MAX_MESSAGE = 10240
MAX_ID_BYTES = 128

OPEN = "forward_open"
OPEN_RESPONSE = "forward_open_response"
DATA = "forward_data"
ACK = "forward_ack"
CLOSE = "forward_close"
OPERATIONS = frozenset((OPEN, OPEN_RESPONSE, DATA, ACK, CLOSE))
EOF = "eof"

log = logging.getLogger(__name__)


class ForwardError(Exception):
    """The peer broke the forwarding protocol on one connection: abort that connection."""


# -- messages ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    op: str
    conn_id: str
    data: Any
    service: Any = SERVICE


def message(op: str, conn_id: str, data: Any) -> str:
    return envelope.build(op, conn_id, data, SERVICE).decode()


def parse(text: str | bytes) -> Message | None:
    """The envelope's parts, or None for something that is not a JSON object with an
    `operation_type` string (the relay never delivers those)."""
    doc = envelope.parse(text)
    if doc is None or not isinstance(doc.get("operation_type"), str):
        return None
    rid = doc.get("request_id")
    return Message(doc["operation_type"], rid if isinstance(rid, str) else "", doc.get("data"),
                   doc.get("tunnel_service_type"))


def new_connection_id() -> str:
    return "f-" + secrets.token_hex(8)


def valid_connection_id(conn_id: str) -> bool:
    return 1 <= len(conn_id.encode()) <= MAX_ID_BYTES


def open_message(conn_id: str, port: int) -> str:
    return message(OPEN, conn_id, {"port": port})


def open_response(conn_id: str, code: str, text: str) -> str:
    return message(OPEN_RESPONSE, conn_id, {"status_code": code, "status_msg": text})


def ack_message(conn_id: str, n: int) -> str:
    return message(ACK, conn_id, {"bytes": n})


def close_message(conn_id: str, status_msg: str) -> str:
    return message(CLOSE, conn_id, {"status_msg": status_msg[:500]})


def data_messages(conn_id: str, raw: bytes) -> list[str]:
    """`raw` as forward_data messages of at most CHUNK bytes each, in order."""
    return [message(DATA, conn_id, base64.b64encode(raw[i:i + CHUNK]).decode())
            for i in range(0, len(raw), CHUNK)]


def requested_port(data: Any) -> int | None:
    port = data.get("port") if isinstance(data, dict) else None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return None
    return port


def status_of(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        return "", ""
    code, text = data.get("status_code"), data.get("status_msg")
    return (code if isinstance(code, str) else ""), (text if isinstance(text, str) else "")


# -- one connection, sans-I/O -------------------------------------------------------------


class Connection:
    """The protocol state of one forwarded TCP connection, on either end.

    Outgoing: `outgoing(raw)` spends credit (`credit` bytes may be sent before an ack);
    `on_ack` gives it back. Incoming: `on_data` counts bytes the peer has out against the
    window (a peer that exceeds it is broken); `on_written` returns the ack to send once
    `ack_threshold` bytes were written to the socket. Half-close: `eof()` / `on_close`.
    """

    def __init__(self, conn_id: str, window: int = WINDOW, ack_threshold: int = ACK_THRESHOLD) -> None:
        if not 0 < ack_threshold <= window:
            raise ValueError("the ack threshold must be above zero and at most the window")
        self.conn_id = conn_id
        self.window = window
        self.ack_threshold = ack_threshold
        self.unacked = 0          # bytes we sent that the peer has not acknowledged
        self.peak_unacked = 0
        self.inbound = 0          # bytes the peer sent that we have not acknowledged
        self.peak_inbound = 0
        self._written = 0         # of those, written to our socket, ack not sent yet
        self.bytes_out = 0
        self.bytes_in = 0
        self.sent_eof = False     # our TCP peer stopped sending; the peer was told
        self.got_eof = False      # the peer's TCP peer stopped sending
        self.aborted: str | None = None

    @property
    def credit(self) -> int:
        return max(0, self.window - self.unacked)

    @property
    def finished(self) -> bool:
        return self.aborted is not None or (self.sent_eof and self.got_eof)

    # -- what we send --------------------------------------------------------------------

    def outgoing(self, raw: bytes) -> list[str]:
        if self.sent_eof or self.aborted is not None:
            raise ValueError("no data may follow our eof or an abort")
        if len(raw) > self.credit:
            raise ValueError(f"{len(raw)} bytes exceed the credit of {self.credit}")
        self.unacked += len(raw)
        self.peak_unacked = max(self.peak_unacked, self.unacked)
        self.bytes_out += len(raw)
        return data_messages(self.conn_id, raw)

    def eof(self) -> str:
        self.sent_eof = True
        return close_message(self.conn_id, EOF)

    def abort(self, reason: str) -> str:
        """Abort by our decision; the message tells the peer."""
        self.aborted = self.aborted or reason
        return close_message(self.conn_id, f"error: {reason}")

    # -- what the peer sends -------------------------------------------------------------

    def on_data(self, data: Any) -> bytes:
        if self.got_eof:
            raise ForwardError("forward_data after the peer's eof")
        if not isinstance(data, str):
            raise ForwardError("forward_data must carry a base64 string")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ForwardError("forward_data is not valid base64") from None
        if len(raw) > CHUNK:
            raise ForwardError(f"forward_data of {len(raw)} bytes is over {CHUNK}")
        self.inbound += len(raw)
        self.peak_inbound = max(self.peak_inbound, self.inbound)
        self.bytes_in += len(raw)
        if self.inbound > self.window:
            raise ForwardError(f"the peer sent {self.inbound} unacknowledged bytes, over the window of {self.window}")
        return raw

    def on_written(self, n: int) -> str | None:
        """`n` received bytes are now written to our socket: the ack to send, if one is due."""
        self.inbound -= n
        self._written += n
        if self.got_eof or self._written < self.ack_threshold:
            return None   # after the peer's eof it sends no more: acks would be of no use
        n, self._written = self._written, 0
        return ack_message(self.conn_id, n)

    def on_ack(self, data: Any) -> None:
        n = data.get("bytes") if isinstance(data, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ForwardError("forward_ack needs data {\"bytes\": n}")
        if n > self.unacked:
            raise ForwardError(f"forward_ack of {n} bytes, but only {self.unacked} are unacknowledged")
        self.unacked -= n

    def on_close(self, data: Any) -> str | None:
        """None for the peer's eof (half-close); otherwise the reason of its abort."""
        _, text = status_of(data)
        if text == EOF:
            if self.got_eof:
                raise ForwardError("a second eof")
            self.got_eof = True
            return None
        reason = text.removeprefix("error: ") or "the peer aborted the connection"
        self.aborted = self.aborted or f"the peer aborted: {reason}"
        return reason


# -- one connection, asyncio ---------------------------------------------------------------

Send = Callable[[str], Awaitable[None]]


class Pipe:
    """One TCP stream joined to the tunnel. `feed` takes the peer's messages for this
    connection in order (it never waits for the socket); `start` begins moving data;
    `done` is set when both directions are closed or the connection was aborted."""

    def __init__(self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 send: Send, extra: dict[str, str] | None = None) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self._send = send
        self.extra = {**(extra or {}), "connection_id": conn.conn_id}
        self.done = asyncio.Event()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()   # None: the peer's eof
        self._credit = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._out_done = self._in_done = False
        # Acknowledge only what the kernel took: with a high-water mark of 0, drain() waits
        # until the transport's own buffer is empty.
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=0)

    def start(self) -> None:
        if not self._tasks and not self.done.is_set():
            self._tasks = [asyncio.create_task(self._socket_to_tunnel(), name=f"fwd-out-{self.conn.conn_id}"),
                           asyncio.create_task(self._tunnel_to_socket(), name=f"fwd-in-{self.conn.conn_id}")]

    async def feed(self, msg: Message) -> None:
        if self.done.is_set():
            return
        try:
            if msg.op == DATA:
                raw = self.conn.on_data(msg.data)
                if raw:
                    self._queue.put_nowait(raw)
            elif msg.op == ACK:
                self.conn.on_ack(msg.data)
                self._credit.set()
            elif msg.op == CLOSE:
                reason = self.conn.on_close(msg.data)
                if reason is None:
                    self._queue.put_nowait(None)   # after every byte queued before it
                else:
                    log.info("forwarded connection aborted by the other end: %s", reason, extra=self.extra)
                    await self.abort(None)
        except ForwardError as exc:
            log.warning("forwarded connection broken by the other end: %s", exc, extra=self.extra)
            await self.abort(f"protocol error: {exc}")

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
        _reset(self.writer)
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
        await self.done.wait()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- the two directions --------------------------------------------------------------

    async def _socket_to_tunnel(self) -> None:
        try:
            while True:
                while self.conn.credit == 0:
                    self._credit.clear()
                    await self._credit.wait()
                data = await self.reader.read(min(CHUNK, self.conn.credit))
                if not data:
                    await self._send(self.conn.eof())
                    break
                for payload in self.conn.outgoing(data):
                    await self._send(payload)
        except (ConnectionError, OSError) as exc:
            await self.abort(f"the TCP connection failed: {_describe(exc)}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the tunnel's WebSocket failed under us
            await self.abort(f"cannot send: {_describe(exc)}", tell_peer=False)
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
                self.writer.write(raw)
                await self.writer.drain()
                ack = self.conn.on_written(len(raw))
                if ack is not None:
                    await self._send(ack)
        except (ConnectionError, OSError) as exc:
            await self.abort(f"the TCP connection failed: {_describe(exc)}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.abort(f"cannot send: {_describe(exc)}", tell_peer=False)
            return
        self._in_done = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self._out_done and self._in_done and not self.done.is_set():
            self.done.set()
            self.writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the TCP connection so that its peer sees a reset (RST), not an orderly end:
    a forwarded connection that broke must not look complete."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _describe(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).split("\n", 1)[0][:200]


class Pipes:
    """The forwarded connections of one tunnel connection, by id, with the peaks of the
    flow-control counters of every connection seen (for tests and logs)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Pipe] = {}
        self.peak_unacked = 0
        self.peak_inbound = 0
        self._watchers: set[asyncio.Task[None]] = set()

    def add(self, pipe: Pipe) -> None:
        self.by_id[pipe.conn.conn_id] = pipe
        watcher = asyncio.create_task(self._forget_when_done(pipe))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _forget_when_done(self, pipe: Pipe) -> None:
        await pipe.wait_closed()
        self._record(pipe)
        if self.by_id.get(pipe.conn.conn_id) is pipe:
            del self.by_id[pipe.conn.conn_id]

    def _record(self, pipe: Pipe) -> None:
        self.peak_unacked = max(self.peak_unacked, pipe.conn.peak_unacked)
        self.peak_inbound = max(self.peak_inbound, pipe.conn.peak_inbound)

    def peaks(self) -> tuple[int, int]:
        """The most bytes ever unacknowledged (sent, received) by one connection."""
        for pipe in self.by_id.values():
            self._record(pipe)
        return self.peak_unacked, self.peak_inbound

    async def route(self, msg: Message) -> bool:
        """Hand a data/ack/close message to its connection; False when it has none."""
        pipe = self.by_id.get(msg.conn_id)
        if pipe is None:
            return False
        await pipe.feed(msg)
        return True

    async def abort_all(self, reason: str) -> int:
        """The tunnel's WebSocket is gone: abort every connection (no one to tell)."""
        pipes = list(self.by_id.values())
        for pipe in pipes:
            await pipe.abort(reason, tell_peer=False)
        for pipe in pipes:
            await pipe.wait_closed()
        self.by_id.clear()
        return len(pipes)
