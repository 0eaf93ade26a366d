"""Both ends of the AWS IoT Secure Tunneling protocol (V1-V3, docs/aws-clients.md): the
stream and connection rules, and the TCP connections they carry.

Two parts, used by the device agent (destination mode, relay/agent/aws.py) and by
`relay localproxy` / `relay forward --protocol aws` (source mode, relay/client/aws_tunnel.py):

- sans-I/O: `Destination` and `Source` take the relay's messages (`ProxyMessage`s of
  relay/aws_messages.py) and local events (a TCP connection accepted, data read, closed)
  and return effects for the I/O layer: bytes to send on the WebSocket, a TCP connection to
  open, data to write to one, one to close. They hold which stream is active per service
  id, which connection ids belong to it, and drop stale messages as the protocol guides
  say. Tested without sockets in tests/aws/test_clients_streams.py.
- asyncio: `Bridge` joins TCP streams to a table and a `send` coroutine (the WebSocket).
  Flow control: a connection's socket is read only once the previous chunk was sent (the
  WebSocket's writer waits for its transport to drain), and the relay's data for a socket
  whose peer does not read stops the WebSocket's reader at `HIGH` bytes queued, until it
  drains below `LOW`. The protocol has no per-connection credit, so a stalled connection
  holds back the others of the same tunnel (as AWS's localproxy does).

Connections are keyed by `Key(service_id, stream_id, connection_id)`; `connection_id` is 0 for a
stream without connection ids (V1/V2 peers: one connection per stream).

Standard library and relay.aws_messages only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import re
import socket
import ssl
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping

from relay import aws_messages
from relay.aws_messages import MessageReader, MessageType, ProxyMessage, frame

log = logging.getLogger(__name__)

MAX_PAYLOAD = aws_messages.MAX_PAYLOAD   # bytes of data per DATA message (the guides' limit, 64512)
HIGH = 256 * 1024                # relay data queued for one socket: stop reading the WebSocket
LOW = 64 * 1024                  # ... and read it again below this
CONNECT_TIMEOUT = 10.0

SUBPROTOCOL = {1: "aws.iot.securetunneling-1.0", 2: "aws.iot.securetunneling-2.0", 3: "aws.iot.securetunneling-3.0"}
VERSION_OF = {name: version for version, name in SUBPROTOCOL.items()}
CLIENT_TOKEN = re.compile(r"[A-Za-z0-9-]{32,128}")


def subprotocols(highest: int = 3) -> list[str]:
    """What to offer in Sec-WebSocket-Protocol, best first: `highest` and every older version."""
    return [SUBPROTOCOL[v] for v in range(highest, 0, -1)]


def new_client_token() -> str:
    """A client token (the guides recommend a UUIDv4): it lets the same access token reconnect."""
    return str(uuid.uuid4())


def valid_client_token(text: str) -> bool:
    return CLIENT_TOKEN.fullmatch(text) is not None


# -- service mappings, as AWS's localproxy writes them ---------------------------------------


def _split_port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}: port {port} is outside 0-65535")
    return port


def parse_endpoint(text: str, default_host: str, what: str | None = None) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` (`what` names it in errors)."""
    what = what or text
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = default_host, text.strip()
    host = host.strip("[]") or default_host
    number = _split_port(port, what)
    if number == 0:
        raise ValueError(f"{what}: port 0 cannot be reached")
    return host, number


def parse_destinations(text: str, default_host: str = "127.0.0.1") -> dict[str, tuple[str, int]]:
    """localproxy's `-d`: `SSH=22,HTTP=10.0.0.1:80`, or one bare endpoint (`22`, `host:22`)
    for a tunnel of a single service, whatever its id (the key is then "")."""
    mapping: dict[str, tuple[str, int]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        service, sep, endpoint = part.partition("=")
        if not sep:
            service, endpoint = "", part
        service = service.strip()
        if service in mapping:
            raise ValueError(f"service {service or '(unnamed)'} is mapped twice")
        mapping[service] = parse_endpoint(endpoint, default_host, part)
    if not mapping:
        raise ValueError("no service mapping given")
    if "" in mapping and len(mapping) > 1:
        raise ValueError("a bare endpoint (no SERVICE=) is only allowed for a single service")
    return mapping


def parse_listeners(text: str) -> dict[str, int]:
    """localproxy's `-s`: `SSH1=5555,SSH2=6666`, or one bare port (`5555`; 0 picks a free one)."""
    mapping: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        service, sep, port = part.partition("=")
        if not sep:
            service, port = "", part
        service = service.strip()
        if service in mapping:
            raise ValueError(f"service {service or '(unnamed)'} is given twice")
        mapping[service] = _split_port(port.strip(), part)
    if not mapping:
        raise ValueError("no listening port given")
    if "" in mapping and len(mapping) > 1:
        raise ValueError("a bare port (no SERVICE=) is only allowed for a single service")
    return mapping


def match_service(mapping: Mapping[str, object], service_id: str) -> str | None:
    """The key of `mapping` that serves `service_id`: its own, or the one unnamed entry of a
    single-service mapping; a message without a service id (a V1 peer) goes to the only entry."""
    if service_id in mapping:
        return service_id
    if len(mapping) == 1:
        (only,) = mapping
        if only == "" or service_id == "":
            return only
    return None


# -- effects ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Key:
    service_id: str
    stream_id: int
    connection_id: int = 0   # 0: a stream without connection ids (one connection)


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    data: bytes              # framed messages, for one binary WebSocket frame


@dataclasses.dataclass(frozen=True, slots=True)
class Connect:
    key: Key                 # destination: open a TCP connection for this stream/connection
    address: tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    key: Key
    data: bytes              # write to that connection's socket


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    key: Key
    reason: str
    abort: bool = False      # False: write what is queued, then close; True: reset (RST) now


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    text: str                # something worth a log line (a refused stream, a stale message)
    warning: bool = False


Effect = Send | Connect | Deliver | Close | Notice


# -- the rules ---------------------------------------------------------------------------------


class _Table:
    """What both modes share: the active stream of each service, its connections, and what a
    received DATA/STREAM_RESET/CONNECTION_RESET/SESSION_RESET means."""

    mode = ""

    def __init__(self, version: int = 3) -> None:
        self.version = version
        self.available: tuple[str, ...] | None = None     # SERVICE_IDS, once the relay sent them
        self.active: dict[str, int] = {}                   # service id -> its active stream id
        self.multiplexed: dict[str, bool] = {}             # ... whether that stream has connection ids
        self.connections: set[Key] = set()

    # -- helpers ---------------------------------------------------------------------------

    def _message(self, type_: MessageType, key: Key, payload: bytes = b"") -> bytes:
        return frame(ProxyMessage(type_, stream_id=key.stream_id, payload=payload,
                                  service_id=key.service_id if self.version >= 2 else "",
                                  connection_id=key.connection_id if self.version >= 3 else 0))

    def _reset_for(self, key: Key) -> bytes:
        """The message that ends `key` at the peer: CONNECTION_RESET for a stream with
        connection ids, STREAM_RESET otherwise."""
        if key.connection_id and self.version >= 3:
            return self._message(MessageType.CONNECTION_RESET, key)
        return self._message(MessageType.STREAM_RESET, key)

    def _key(self, msg: ProxyMessage) -> Key | None:
        """The connection a stream message is for, None when it is stale (not the active stream)."""
        service = self._service_of(msg.service_id)
        if service is None or self.active.get(service) != msg.stream_id or msg.stream_id == 0:
            return None
        cid = 0
        if self.multiplexed.get(service):
            cid = msg.connection_id or 1   # V3: a connection id of 0 means 1
        return Key(service, msg.stream_id, cid)

    def _service_of(self, service_id: str) -> str | None:
        """The service key we use for a received service id. A V1 peer sends none (and a V1
        table keys everything ""): it means the one service with a stream."""
        if self.version >= 2 and service_id:
            return service_id
        if "" in self.active:
            return ""
        if len(self.active) == 1:
            return next(iter(self.active))
        return None

    def _close_stream(self, service: str, reason: str, abort: bool = False) -> list[Effect]:
        stream = self.active.pop(service, None)
        self.multiplexed.pop(service, None)
        gone = sorted(k for k in self.connections if k.service_id == service and k.stream_id == stream)
        self.connections.difference_update(gone)
        return [Close(k, reason, abort) for k in gone]

    # -- the relay's messages ----------------------------------------------------------------

    def received(self, msg: ProxyMessage) -> list[Effect]:
        t = msg.type
        if t == MessageType.SERVICE_IDS:
            self.available = tuple(msg.available_service_ids)
            return self._services()
        if t == MessageType.DATA:
            key = self._key(msg)
            if key is None or key not in self.connections:
                return []   # stale: a stream or connection that is over
            return [Deliver(key, msg.payload)] if msg.payload else []
        if t == MessageType.STREAM_RESET:
            service = self._service_of(msg.service_id)
            if service is None or self.active.get(service) != msg.stream_id:
                return []
            return self._close_stream(service, "the other end reset the stream")
        if t == MessageType.CONNECTION_RESET:
            key = self._key(msg)
            if key is None or key not in self.connections:
                return []
            self.connections.discard(key)
            return [Close(key, "the other end reset the connection")]
        if t == MessageType.SESSION_RESET:
            effects: list[Effect] = []
            for service in sorted(self.active):
                effects += self._close_stream(service, "the relay reset the session")
            return effects
        if t in (MessageType.STREAM_START, MessageType.CONNECTION_START):
            return self._start(msg)
        if msg.ignorable:
            return []
        return [Notice(f"ignored a message of unknown type {int(t)}", warning=True)]

    def _services(self) -> list[Effect]:
        return []

    def _start(self, msg: ProxyMessage) -> list[Effect]:
        return [Notice(f"ignored {MessageType(msg.type).name}: a {self.mode} does not receive it", warning=True)]

    # -- local events --------------------------------------------------------------------------

    def local_data(self, key: Key, data: bytes) -> list[Effect]:
        """Data read from `key`'s socket: DATA messages of at most MAX_PAYLOAD bytes."""
        if key not in self.connections or not data:
            return []
        return [Send(self._message(MessageType.DATA, key, data[i:i + MAX_PAYLOAD]))
                for i in range(0, len(data), MAX_PAYLOAD)]

    def local_closed(self, key: Key, reason: str = "closed") -> list[Effect]:
        """`key`'s socket ended (its peer closed it, an error, or it could not be opened):
        tell the other end."""
        if key not in self.connections:
            return []
        self.connections.discard(key)
        effects: list[Effect] = [Send(self._reset_for(key))]
        if not key.connection_id or self.version < 3:
            # a stream of one connection is over with it
            if self.active.get(key.service_id) == key.stream_id:
                self.active.pop(key.service_id, None)
                self.multiplexed.pop(key.service_id, None)
        return effects

    def connection_lost(self) -> list[Effect]:
        """The WebSocket ended: every stream is void (there is no one to tell)."""
        gone = sorted(self.connections)
        self.connections.clear()
        self.active.clear()
        self.multiplexed.clear()
        self.available = None
        return [Close(k, "the connection to the relay ended", abort=True) for k in gone]


class Destination(_Table):
    """The device end: STREAM_START / CONNECTION_START open a TCP connection to the address
    mapped to the service id (`services`: service id -> (host, port); "" for the one
    service of a single-service tunnel, whatever its id)."""

    mode = "destination"

    def __init__(self, services: Mapping[str, tuple[str, int]], version: int = 3) -> None:
        super().__init__(version)
        self.services = dict(services)

    def address_of(self, service_id: str) -> tuple[str, int] | None:
        found = match_service(self.services, service_id)
        return None if found is None else self.services[found]

    def _services(self) -> list[Effect]:
        ids = self.available or ()
        missing = [s for s in ids if self.address_of(s) is None]
        if missing:
            return [Notice(f"no local address for service(s) {', '.join(missing)} of this tunnel: "
                           "their streams will be refused", warning=True)]
        return []

    def _start(self, msg: ProxyMessage) -> list[Effect]:
        if msg.stream_id == 0:
            return [Notice("ignored a start with stream id 0", warning=True)]
        service = msg.service_id if self.version >= 2 else ""
        key_service = service
        if msg.type == MessageType.CONNECTION_START:
            if self.version < 3 or self.active.get(key_service) != msg.stream_id \
                    or not self.multiplexed.get(key_service):
                # not a stream we have open (we reset it, or never had it): refuse the connection
                return [Send(self._message(MessageType.CONNECTION_RESET,
                                           Key(service, msg.stream_id, msg.connection_id or 1)))]
            key = Key(key_service, msg.stream_id, msg.connection_id or 1)
            if key in self.connections:
                self.connections.discard(key)
                return [Close(key, "the other end started it again", abort=True), Send(self._reset_for(key))]
            return self._connect(key)
        # STREAM_START: a new active stream for the service; the old one (if any) is over
        effects: list[Effect] = []
        if key_service in self.active:
            effects += self._close_stream(key_service, "a new stream replaces it")
        address = self.address_of(service)
        multiplexed = self.version >= 3 and msg.connection_id != 0
        key = Key(key_service, msg.stream_id, msg.connection_id if multiplexed else 0)
        if address is None:
            effects.append(Notice(f"refused a stream for service {service or '(none)'}: no local address for it",
                                  warning=True))
            effects.append(Send(self._message(MessageType.STREAM_RESET, Key(service, msg.stream_id))))
            return effects
        self.active[key_service] = msg.stream_id
        self.multiplexed[key_service] = multiplexed
        return effects + self._connect(key)

    def _connect(self, key: Key) -> list[Effect]:
        address = self.address_of(key.service_id)
        if address is None:   # pragma: no cover (the stream was checked)
            return [Send(self._reset_for(key))]
        self.connections.add(key)
        return [Connect(key, address)]


class Source(_Table):
    """The application end: every accepted TCP connection becomes a stream (V1/V2: one per
    service at a time, a new one resets the old, as localproxy does) or a connection of the
    service's stream (V3). `multiplex` False speaks to a V2 destination through a V3 relay."""

    mode = "source"

    def __init__(self, version: int = 3, multiplex: bool = True,
                 stream_ids: Iterable[int] | None = None) -> None:
        super().__init__(version)
        self.multiplex = multiplex and version >= 3
        # stream ids are unique for the tunnel's life, across reconnections (`stream_ids` is
        # shared by the tables of one session)
        self._stream_ids = iter(stream_ids) if stream_ids is not None else itertools.count(1)
        self._connection_ids = itertools.count(1)

    def accepted(self, service: str) -> tuple[Key, list[Effect]]:
        """A local TCP connection for `service` was accepted: its key, and what to send."""
        sid = service if self.version >= 2 else ""
        effects: list[Effect] = []
        if self.multiplex and sid in self.active:
            key = Key(sid, self.active[sid], next(self._connection_ids))
            self.connections.add(key)
            effects.append(Send(self._message(MessageType.CONNECTION_START, key)))
            return key, effects
        if sid in self.active:
            old = self.active[sid]
            effects += self._close_stream(sid, "a new connection replaces it (one stream per service)", abort=True)
            effects.append(Send(self._message(MessageType.STREAM_RESET, Key(sid, old))))
        stream = next(self._stream_ids)
        key = Key(sid, stream, next(self._connection_ids) if self.multiplex else 0)
        self.active[sid] = stream
        self.multiplexed[sid] = self.multiplex
        self.connections.add(key)
        effects.append(Send(self._message(MessageType.STREAM_START, key)))
        return key, effects


# -- asyncio: TCP connections joined to a table ------------------------------------------------

SendBytes = Callable[[bytes], Awaitable[None]]


class Link:
    """One TCP connection of a stream: a writer task empties the relay's data into the
    socket; a reader task turns what the socket gives into DATA messages."""

    def __init__(self, bridge: Bridge, key: Key) -> None:
        self.bridge = bridge
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

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=LOW)
        self.connected.set()
        if self.done.is_set():   # reset while it was connecting
            _reset(writer)
            return
        self._tasks.append(asyncio.create_task(self._to_socket(), name=f"aws-in-{self.key}"))
        if not self.closing:
            self._tasks.append(asyncio.create_task(self._from_socket(reader), name=f"aws-out-{self.key}"))

    def deliver(self, data: bytes) -> None:
        self.queued += len(data)
        if self.queued > HIGH:
            self.space.clear()
        self._queue.put_nowait(data)

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
            await self.bridge.local_closed(self, f"the TCP connection failed: {_describe(exc)}", abort=True)
            return
        self._finish(abort=False)

    async def _from_socket(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(MAX_PAYLOAD)
                if not data:
                    break
                self.bytes_out += len(data)
                if not await self.bridge.local_data(self, data):
                    return
        except (ConnectionError, OSError) as exc:
            await self.bridge.local_closed(self, f"the TCP connection failed: {_describe(exc)}", abort=True)
            return
        # the local peer closed (the protocol has no half-close): end the stream at the other
        # end, and close this socket once the relay's data queued before now is written
        await self.bridge.local_closed(self, "closed by the local peer", abort=False)

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
                _reset(self.writer)
            else:
                self.writer.close()

    async def wait_closed(self) -> None:
        await self.done.wait()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class Bridge:
    """The TCP connections of one WebSocket connection of either end. `feed` takes the bytes
    of each binary WebSocket message (it waits while a socket's queue is over HIGH);
    `accept` adds a local connection (source); `lost` ends everything."""

    def __init__(self, table: _Table, send: SendBytes, *, extra: dict[str, str] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.table = table
        self._send = send
        self.extra = dict(extra or {})
        self.connect_timeout = connect_timeout
        self.reader = MessageReader()
        self.links: dict[Key, Link] = {}
        self.services_known = asyncio.Event()
        self.opened = 0           # connections this bridge carried (for logs and tests)
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

    async def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                await self._send(effect.data)
            elif isinstance(effect, Deliver):
                link = self.links.get(effect.key)
                if link is not None and not link.closing:
                    link.deliver(effect.data)
                    if not link.space.is_set():
                        await link.space.wait()   # the socket's peer is slow: hold the WebSocket
            elif isinstance(effect, Close):
                link = self.links.get(effect.key)
                if link is not None:
                    log.info("stream %s: %s", _name(effect.key), effect.reason, extra=self.extra)
                    link.close(effect.abort)
            elif isinstance(effect, Connect):
                self._connect(effect)
            elif isinstance(effect, Notice):
                log.log(logging.WARNING if effect.warning else logging.INFO, "%s", effect.text, extra=self.extra)

    # -- TCP connections -----------------------------------------------------------------

    def _add(self, key: Key) -> Link:
        old = self.links.get(key)
        if old is not None:
            old.close(abort=True)
        link = Link(self, key)
        self.links[key] = link
        self.opened += 1
        task = asyncio.create_task(self._forget(link), name=f"aws-forget-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return link

    async def _forget(self, link: Link) -> None:
        await link.wait_closed()
        if self.links.get(link.key) is link:
            del self.links[link.key]

    def _connect(self, effect: Connect) -> None:
        link = self._add(effect.key)
        task = asyncio.create_task(self._open(link, effect.address), name=f"aws-connect-{effect.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, link: Link, address: tuple[str, int]) -> None:
        target = f"{address[0]}:{address[1]}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else _describe(exc)
            log.warning("stream %s: cannot connect to %s: %s", _name(link.key), target, why, extra=self.extra)
            await self.local_closed(link, f"cannot connect to {target}: {why}", abort=True)
            return
        log.info("stream %s: connected to %s", _name(link.key), target, extra=self.extra)
        link.attach(reader, writer)

    async def accept(self, service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Link:
        """Source: a local connection for `service`; STREAM_START or CONNECTION_START goes out."""
        assert isinstance(self.table, Source)
        async with self._lock:
            key, effects = self.table.accepted(service)
            link = self._add(key)
            await self.apply(effects)
        link.attach(reader, writer)
        return link

    async def local_data(self, link: Link, data: bytes) -> bool:
        if link.closing or self.links.get(link.key) is not link:
            return False
        await self.apply(self.table.local_data(link.key, data))
        return True

    async def local_closed(self, link: Link, reason: str, *, abort: bool) -> None:
        """`link`'s socket ended (or never opened): the other end is told, unless the table
        had closed it already."""
        if not link.closing and self.links.get(link.key) is link:
            link.closing = True
            log.info("stream %s: %s (%d bytes in, %d out)", _name(link.key), reason, link.bytes_in,
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


def _name(key: Key) -> str:
    text = f"{key.service_id or '-'}/{key.stream_id}"
    return f"{text}/{key.connection_id}" if key.connection_id else text


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort so that the socket's peer sees a reset (RST): a broken stream must not look complete."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _describe(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).split("\n", 1)[0][:200]


# -- asyncio: one end's WebSocket, reconnected ---------------------------------------------------


def tunnel_url(endpoint: str, mode: str) -> str:
    """The data-plane address of `endpoint` (`http(s)://` or `ws(s)://HOST[:PORT]`, or a bare
    `HOST[:PORT]`, taken as wss://) for a mode: `.../tunnel?local-proxy-mode=MODE`."""
    text = endpoint.strip().split("?", 1)[0].rstrip("/")
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if text.startswith(plain):
            text = ws + text[len(plain):]
    if not text.startswith(("ws://", "wss://")):
        text = "wss://" + text
    if text.endswith("/tunnel"):
        text = text[:-len("/tunnel")]
    return f"{text}/tunnel?local-proxy-mode={mode}"


def aws_endpoint(region: str) -> str:
    """AWS's own data-plane endpoint of a region (what its localproxy's `-r` means)."""
    return f"wss://data.tunneling.iot.{region}.amazonaws.com"


class Refused(Exception):
    """The relay refused the handshake for good (4xx): a wrong, used or closed token."""


RECONNECT_STABLE = 10.0   # a connection that lasted this long resets the backoff
# Close codes after which the same token (with our client token) is worth trying again: the
# network, the relay restarting, or our own reaction to bytes that were not the protocol.
# The others mean the tunnel is over (1000), another connection took this end (4000), or the
# token was rotated (4001: a new one comes the way the first came).
RECONNECT_CODES = {None, 1001, 1002, 1003, 1006, 1011, 1012, 1013, 1014, 4008}
_CLOSES = {1000: "the tunnel was closed or expired", 1001: "the relay is going away",
           4000: "another connection replaced this one", 4001: "the token was rotated",
           4008: "heartbeat timeout", 1006: "the connection was lost"}


def describe_close(code: int | None) -> str:
    if code is None:
        return "the connection was lost"
    return f"{_CLOSES.get(code, 'close code')} ({code})"


class Session:
    """One end of one tunnel: the WebSocket to the relay (aiohttp's client), reconnected
    with the same access token and client token after it drops, and a `Bridge` per
    connection. `run()` returns why it stopped: a refused handshake (4xx), the relay ending
    the tunnel (close code 1000; `failed` stays False), another close that says this end is
    done (4000 replaced, 4001 rotated, ...), or `max_attempts` failed reconnections in a row.
    `on_connected` runs after each handshake, with the new bridge (the source starts its
    listeners there)."""

    def __init__(self, *, mode: str, endpoint: str, token: str, make_table: Callable[[int], _Table],
                 client_token: str | None = None, highest: int = 3, ssl: ssl.SSLContext | bool = True, heartbeat: float = 20.0,
                 reconnect_initial: float = 1.0, reconnect_max: float = 30.0, max_attempts: int | None = None,
                 extra: dict[str, str] | None = None,
                 on_connected: Callable[[Bridge], Awaitable[None]] | None = None) -> None:
        if mode not in ("source", "destination"):
            raise ValueError(f"mode {mode!r}: source or destination")
        self.mode = mode
        self.url = tunnel_url(endpoint, mode)
        self._token = token
        self.client_token = client_token or new_client_token()
        if not valid_client_token(self.client_token):
            raise ValueError("a client token is 32-128 of A-Z a-z 0-9 -")
        self.make_table = make_table
        self.highest = highest
        self.ssl = ssl
        self.heartbeat = heartbeat
        self.reconnect_initial, self.reconnect_max = reconnect_initial, reconnect_max
        self.max_attempts = max_attempts
        self.extra = dict(extra or {})
        self.on_connected = on_connected
        self.bridge: Bridge | None = None
        self.connected = asyncio.Event()
        self.version: int | None = None
        self.connections = 0      # successful handshakes (for logs and tests)
        self.outcome: str | None = None
        self.failed = False       # run() ended on a refusal or an error, not because the tunnel is over
        self._ws: object = None

    async def send(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:  # type: ignore[attr-defined]
            raise ConnectionResetError("the tunnel's WebSocket is not connected")
        await ws.send_bytes(data)  # type: ignore[attr-defined]

    async def run(self) -> str:
        import random

        import aiohttp

        delay = self.reconnect_initial
        failures = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15)
        headers = {"access-token": self._token, "client-token": self.client_token}
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    ws = await http.ws_connect(self.url, protocols=subprotocols(self.highest), headers=headers,
                                               ssl=self.ssl, heartbeat=self.heartbeat, autoping=True,
                                               autoclose=True, max_msg_size=0)
                except aiohttp.WSServerHandshakeError as exc:
                    if 400 <= exc.status < 500 and exc.status != 429:
                        return self._finish(f"the relay refused the {self.mode} token (HTTP {exc.status})",
                                            failed=True)
                    log.warning("the relay refused the connection (HTTP %s); will retry", exc.status,
                                extra=self.extra)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    log.warning("cannot reach the relay at %s (%s); will retry", self.url.split("?")[0],
                                _describe(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out",
                                extra=self.extra)
                else:
                    code = await self._serve(ws)
                    if code not in RECONNECT_CODES:
                        return self._finish(f"the relay ended the connection: {describe_close(code)}",
                                            failed=code != 1000)
                    if asyncio.get_running_loop().time() - started >= RECONNECT_STABLE:
                        delay, failures = self.reconnect_initial, 0
                failures += 1
                if self.max_attempts is not None and failures > self.max_attempts:
                    return self._finish(f"giving up after {self.max_attempts} attempts to reconnect", failed=True)
                wait = delay * (0.8 + 0.4 * random.random())
                log.info("reconnecting in %.1f s", wait, extra=self.extra)
                await asyncio.sleep(wait)
                delay = min(self.reconnect_max, delay * 2)

    async def _serve(self, ws: object) -> int | None:
        import aiohttp

        assert isinstance(ws, aiohttp.ClientWebSocketResponse)
        version = VERSION_OF.get(ws.protocol or "")
        if version is None:
            log.warning("the relay chose no known subprotocol (%r); closing", ws.protocol, extra=self.extra)
            await ws.close(code=1002)
            return ws.close_code
        self.version = version
        self.connections += 1
        self._ws = ws
        bridge = Bridge(self.make_table(version), self.send, extra=self.extra)
        self.bridge = bridge
        self.connected.set()
        log.info("connected to the relay as %s (%s)", self.mode, ws.protocol, extra=self.extra)
        try:
            if self.on_connected is not None:
                await self.on_connected(bridge)
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        await bridge.feed(msg.data)
                    except ValueError as exc:
                        log.warning("the relay sent bytes that are not the protocol (%s); reconnecting", exc,
                                    extra=self.extra)
                        await ws.close(code=1002)
                        break
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    log.warning("the relay sent a text frame (the protocol is binary only); reconnecting",
                                extra=self.extra)
                    await ws.close(code=1003)
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        finally:
            self.connected.clear()
            self._ws = None
            n = await bridge.lost()
            with contextlib.suppress(Exception):
                await ws.close()
            log.info("the relay connection ended (close code %s)%s", ws.close_code,
                     f": reset {n} connection(s)" if n else "", extra=self.extra)
        return ws.close_code

    def _finish(self, why: str, failed: bool) -> str:
        self.outcome = why
        self.failed = failed
        log.info("tunnel session over: %s", why, extra=self.extra)
        return why
