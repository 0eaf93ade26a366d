"""The stream rules of both ends of the AWS IoT Secure Tunneling protocol (V1-V3,
docs/aws-clients.md), without I/O: sans-I/O, no socket, no event loop.

`Destination` (the device agent, relay/agent/aws.py) and `Source` (`relay localproxy -s`,
`relay forward --protocol aws`, relay/client/aws_tunnel.py) take the relay's messages
(`ProxyMessage`s of relay/aws_messages.py) and local events (a TCP connection accepted, data
read, closed) and return effects for the I/O layer (relay/ends/pipes.py `StreamPipes`): bytes
to send on the WebSocket (`StreamSend`), a TCP connection to open (`StreamConnect`), data to
write to one (`StreamDeliver`), one to close (`StreamClose`), a log line (`StreamNotice`).
They hold which stream is active per service id, which connection ids belong to it, and drop
stale messages as the protocol guides say. Tested in tests/ends/test_aws_streams.py and
tests/aws/test_clients_streams.py.

Connections are keyed by `Key(service_id, stream_id, connection_id)`; `connection_id` is 0 for a
stream without connection ids (V1/V2 peers: one connection per stream).

Standard library and relay.aws_messages only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

from relay.aws_messages import MAX_PAYLOAD, MessageType, ProxyMessage, frame


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
class StreamSend:
    data: bytes              # framed messages, for one binary WebSocket frame


@dataclasses.dataclass(frozen=True, slots=True)
class StreamConnect:
    key: Key                 # destination: open a TCP connection for this stream/connection
    address: tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class StreamDeliver:
    key: Key
    data: bytes              # write to that connection's socket


@dataclasses.dataclass(frozen=True, slots=True)
class StreamClose:
    key: Key
    reason: str
    abort: bool = False      # False: write what is queued, then close; True: reset (RST) now


@dataclasses.dataclass(frozen=True, slots=True)
class StreamNotice:
    text: str                # something worth a log line (a refused stream, a stale message)
    warning: bool = False


StreamEffect = StreamSend | StreamConnect | StreamDeliver | StreamClose | StreamNotice


def stream_name(key: Key) -> str:
    """`SERVICE/STREAM[/CONNECTION]`, for logs and messages to people."""
    text = f"{key.service_id or '-'}/{key.stream_id}"
    return f"{text}/{key.connection_id}" if key.connection_id else text


# -- the rules ---------------------------------------------------------------------------------


class EndStreams:
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
        return self._key_of(msg.service_id, msg.stream_id, msg.connection_id)

    def _key_of(self, service_id: str, stream_id: int, connection_id: int) -> Key | None:
        service = self._service_of(service_id)
        if service is None or self.active.get(service) != stream_id or stream_id == 0:
            return None
        cid = 0
        if self.multiplexed.get(service):
            cid = connection_id or 1   # V3: a connection id of 0 means 1
        return Key(service, stream_id, cid)

    def wire_fields(self, key: Key) -> tuple[str, int, int]:
        """The service id and connection id a message of `key` carries in this version (`""`
        and 0 when the version lacks them), with its stream id, for the codec's DATA messages."""
        return (key.service_id if self.version >= 2 else "", key.stream_id,
                key.connection_id if self.version >= 3 else 0)

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

    def _close_stream(self, service: str, reason: str, abort: bool = False) -> list[StreamEffect]:
        stream = self.active.pop(service, None)
        self.multiplexed.pop(service, None)
        gone = sorted(k for k in self.connections if k.service_id == service and k.stream_id == stream)
        self.connections.difference_update(gone)
        return [StreamClose(k, reason, abort) for k in gone]

    # -- the relay's messages ----------------------------------------------------------------

    def received(self, msg: ProxyMessage) -> list[StreamEffect]:
        t = msg.type
        if t == MessageType.SERVICE_IDS:
            self.available = tuple(msg.available_service_ids)
            return self._services()
        if t == MessageType.DATA:
            return self.received_data(msg.service_id, msg.stream_id, msg.connection_id, msg.payload)
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
            return [StreamClose(key, "the other end reset the connection")]
        if t == MessageType.SESSION_RESET:
            effects: list[StreamEffect] = []
            for service in sorted(self.active):
                effects += self._close_stream(service, "the relay reset the session")
            return effects
        if t in (MessageType.STREAM_START, MessageType.CONNECTION_START):
            return self._start(msg)
        if msg.ignorable:
            return []
        return [StreamNotice(f"ignored a message of unknown type {int(t)}", warning=True)]

    def received_data(self, service_id: str, stream_id: int, connection_id: int, payload: bytes) -> list[StreamEffect]:
        """A DATA message's fields as received (decoded by the codec without a ProxyMessage:
        relay/ends/websocket.py): delivered to its connection, or nothing when it is stale."""
        key = self._key_of(service_id, stream_id, connection_id)
        if key is None or key not in self.connections:
            return []   # stale: a stream or connection that is over
        return [StreamDeliver(key, payload)] if payload else []

    def _services(self) -> list[StreamEffect]:
        return []

    def _start(self, msg: ProxyMessage) -> list[StreamEffect]:
        return [StreamNotice(f"ignored {MessageType(msg.type).name}: a {self.mode} does not receive it", warning=True)]

    # -- local events --------------------------------------------------------------------------

    def local_data(self, key: Key, data: bytes) -> list[StreamEffect]:
        """Data read from `key`'s socket: DATA messages of at most MAX_PAYLOAD bytes."""
        if not self.may_send(key, data):
            return []
        return [StreamSend(self._message(MessageType.DATA, key, data[i:i + MAX_PAYLOAD]))
                for i in range(0, len(data), MAX_PAYLOAD)]

    def may_send(self, key: Key, data: bytes) -> bool:
        """Whether data read from `key`'s socket goes out (the codec's path builds the messages
        itself, `wire_fields`): not for a connection that is over, nor when there is none."""
        return key in self.connections and bool(data)

    def local_closed(self, key: Key, reason: str = "closed") -> list[StreamEffect]:
        """`key`'s socket ended (its peer closed it, an error, or it could not be opened):
        tell the other end."""
        if key not in self.connections:
            return []
        self.connections.discard(key)
        effects: list[StreamEffect] = [StreamSend(self._reset_for(key))]
        if not key.connection_id or self.version < 3:
            # a stream of one connection is over with it
            if self.active.get(key.service_id) == key.stream_id:
                self.active.pop(key.service_id, None)
                self.multiplexed.pop(key.service_id, None)
        return effects

    def connection_lost(self) -> list[StreamEffect]:
        """The WebSocket ended: every stream is void (there is no one to tell)."""
        gone = sorted(self.connections)
        self.connections.clear()
        self.active.clear()
        self.multiplexed.clear()
        self.available = None
        return [StreamClose(k, "the connection to the relay ended", abort=True) for k in gone]


class Destination(EndStreams):
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

    def _services(self) -> list[StreamEffect]:
        ids = self.available or ()
        missing = [s for s in ids if self.address_of(s) is None]
        if missing:
            return [StreamNotice(f"no local address for service(s) {', '.join(missing)} of this tunnel: "
                           "their streams will be refused", warning=True)]
        return []

    def _start(self, msg: ProxyMessage) -> list[StreamEffect]:
        if msg.stream_id == 0:
            return [StreamNotice("ignored a start with stream id 0", warning=True)]
        service = msg.service_id if self.version >= 2 else ""
        key_service = service
        if msg.type == MessageType.CONNECTION_START:
            if self.version < 3 or self.active.get(key_service) != msg.stream_id \
                    or not self.multiplexed.get(key_service):
                # not a stream we have open (we reset it, or never had it): refuse the connection
                return [StreamSend(self._message(MessageType.CONNECTION_RESET,
                                           Key(service, msg.stream_id, msg.connection_id or 1)))]
            key = Key(key_service, msg.stream_id, msg.connection_id or 1)
            if key in self.connections:
                self.connections.discard(key)
                return [StreamClose(key, "the other end started it again", abort=True), StreamSend(self._reset_for(key))]
            return self._connect(key)
        # STREAM_START: a new active stream for the service; the old one (if any) is over
        effects: list[StreamEffect] = []
        if key_service in self.active:
            effects += self._close_stream(key_service, "a new stream replaces it")
        address = self.address_of(service)
        multiplexed = self.version >= 3 and msg.connection_id != 0
        key = Key(key_service, msg.stream_id, msg.connection_id if multiplexed else 0)
        if address is None:
            effects.append(StreamNotice(f"refused a stream for service {service or '(none)'}: no local address for it",
                                  warning=True))
            effects.append(StreamSend(self._message(MessageType.STREAM_RESET, Key(service, msg.stream_id))))
            return effects
        self.active[key_service] = msg.stream_id
        self.multiplexed[key_service] = multiplexed
        return effects + self._connect(key)

    def _connect(self, key: Key) -> list[StreamEffect]:
        address = self.address_of(key.service_id)
        if address is None:   # pragma: no cover (the stream was checked)
            return [StreamSend(self._reset_for(key))]
        self.connections.add(key)
        return [StreamConnect(key, address)]


class Source(EndStreams):
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

    def accepted(self, service: str) -> tuple[Key, list[StreamEffect]]:
        """A local TCP connection for `service` was accepted: its key, and what to send."""
        sid = service if self.version >= 2 else ""
        effects: list[StreamEffect] = []
        if self.multiplex and sid in self.active:
            key = Key(sid, self.active[sid], next(self._connection_ids))
            self.connections.add(key)
            effects.append(StreamSend(self._message(MessageType.CONNECTION_START, key)))
            return key, effects
        if sid in self.active:
            old = self.active[sid]
            effects += self._close_stream(sid, "a new connection replaces it (one stream per service)", abort=True)
            effects.append(StreamSend(self._message(MessageType.STREAM_RESET, Key(sid, old))))
        stream = next(self._stream_ids)
        key = Key(sid, stream, next(self._connection_ids) if self.multiplex else 0)
        self.active[sid] = stream
        self.multiplexed[sid] = self.multiplex
        self.connections.add(key)
        effects.append(StreamSend(self._message(MessageType.STREAM_START, key)))
        return key, effects
