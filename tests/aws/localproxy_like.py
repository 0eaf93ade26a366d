"""A test end that handles the relay's messages as AWS's localproxy does, so that the tests see
what a real localproxy would make of them. Written from localproxy's source
(aws-samples/aws-iot-securetunneling-localproxy, `src/TcpAdapterProxy.cpp`: 1.x and the
multi-service rewrite that 3.x extends) and from what was observed on the wire with 3.3.1
(issue 14, /work/shared/REFERENCE.md). The TCP side is abstract: a local connection is a key
`(service id, connection id)`, opened, written and closed by the test or by the rules.

localproxy 3.x (`generation=3`):
- after the handshake it waits for SERVICE_IDS, whatever subprotocol was agreed
  (`setup_web_socket` -> `async_wait_for_service_ids`); a list of exactly one service puts it
  in "V1 message format": every message is then taken as that service's, whatever its
  `serviceId`;
- it drops, as stale, a DATA or STREAM_RESET whose stream id is not its current one for the
  service (`is_valid_stream_id`), or for a service without a stream (V2/V3 format);
- it routes every other message by `serviceId` (and, in V3, connection id; 0 means 1) to
  that connection's handler, and a message for no known connection to the handler set up
  after the handshake, which accepts only SERVICE_IDS: anything else is logged
  ("Expect:Message_Type_SERVICE_IDS. Ignore message type: N") and its read loop stops;
- a destination waits for a stream with a handler that ignores SESSION_RESET and
  STREAM_RESET; while a stream transfers, SESSION_RESET closes every service's TCP
  connection, STREAM_RESET the service's, CONNECTION_RESET that connection;
- once its TCP connection was reset, a source's connection handler stops the read loop on
  any message (`ignore_message_and_stop`) until its next accepted TCP connection starts a
  stream (V3: while a stream is alive, a new TCP connection is a CONNECTION_START on it);
  a destination's waits for the next stream again once it has drained;
- the read loop, once stopped, reads again only when something restarts it (above); until
  then nothing the relay sends is read, not even a close frame;
- a message of an unknown type that is not `ignorable` throws (the process fails).
Not in the published 2.x source, assumed from the V3 guide: a CONNECTION_START is handled by
its stream's handler (a new connection id), and a STREAM_RESET ends every connection of the
stream it names.

localproxy 1.x (`generation=1`, subprotocol 1.0): one stream, no service ids; it does not
wait for SERVICE_IDS, and throws "Unrecognized message type" on any message of a type it
does not know (SERVICE_IDS is one) unless it is marked `ignorable`. A 1.x source reads the
WebSocket only once its first stream started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Callable

import aiohttp

from tests.aws.spec_client import (CONNECTION_RESET, CONNECTION_START, DATA, NAMES, SERVICE_IDS, SESSION_RESET,
                                   STREAM_RESET, STREAM_START, V1, V3, Msg, decode, frame)
import contextlib

KNOWN_3X = {DATA, STREAM_START, STREAM_RESET, SESSION_RESET, SERVICE_IDS, CONNECTION_START, CONNECTION_RESET}
KNOWN_1X = {DATA, STREAM_START, STREAM_RESET, SESSION_RESET}

# connection handlers
WAIT_SERVICE_IDS = "service_ids"      # the handler set after the handshake (3.x)
WAIT_STREAM = "wait_for_stream_start"
TRANSFER = "data_transfer"
STOP = "ignore_message_and_stop"

Key = tuple[str, int]   # (service id, connection id)


class Crash(Exception):
    """What would make localproxy throw out of its event loop."""


@dataclasses.dataclass
class Rules:
    mode: str                               # "source" or "destination"
    services: tuple[str, ...]               # its -s/-d service ids
    generation: int = 3                     # 3: localproxy 3.x; 1: localproxy 1.x
    protocol: str = V3                      # the subprotocol agreed
    service_ids: tuple[str, ...] | None = None
    v1_format: bool = False
    stream_of: dict[str, int] = dataclasses.field(default_factory=dict)   # current stream id per service
    alive: dict[str, bool] = dataclasses.field(default_factory=dict)      # source: is the service's stream alive
    handlers: dict[Key, str] = dataclasses.field(default_factory=dict)
    tcp: set[Key] = dataclasses.field(default_factory=set)                # open local TCP connections
    closed: list[tuple[Key, str]] = dataclasses.field(default_factory=list)
    received: dict[Key, bytearray] = dataclasses.field(default_factory=dict)
    log: list[str] = dataclasses.field(default_factory=list)
    outbox: list[Msg] = dataclasses.field(default_factory=list)
    reading: bool = True
    next_connection: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.generation == 1:
            self.v1_format = True
            if self.mode == "destination":
                self.handlers[(self.services[0], 1)] = WAIT_STREAM
            else:
                self.reading = False   # 1.x: a source reads once its first stream started

    # -- what localproxy computes ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """3.x: it received SERVICE_IDS (a source opens its listeners then)."""
        return self.generation == 1 or self.service_ids is not None

    def _service(self, msg: Msg) -> str:
        return self.services[0] if self.v1_format else msg.service_id

    def _connection(self, msg: Msg) -> int:
        return (msg.connection_id or 1) if self.protocol == V3 and self.generation == 3 else 1

    def _stale(self, msg: Msg) -> bool:
        if msg.type not in (DATA, STREAM_RESET):
            return False
        service = self._service(msg)
        if service not in self.stream_of:
            if self.v1_format and self.generation == 3:
                raise Crash("std::out_of_range: serviceId_to_streamId_map.at()")
            self.log.append(f"No stream found for service id: {service}. Ignore stream id: {msg.stream_id}")
            return True
        if msg.stream_id == 0 or msg.stream_id != self.stream_of[service]:
            self.log.append(f"Stale message dropped: {msg!r}")
            return True
        return False

    def receive(self, msg: Msg) -> bool:
        """One message; whether the read loop goes on."""
        if self._stale(msg):
            return True
        service, cid = self._service(msg), self._connection(msg)
        # a new connection of a stream is for the stream's handler (its first connection's)
        handler = self.handlers.get((service, 1 if msg.type == CONNECTION_START else cid))
        if self.generation == 1:
            handler = handler or (TRANSFER if self.tcp else WAIT_STREAM)
        elif handler is None:
            handler = WAIT_SERVICE_IDS
        if msg.type == DATA:
            if handler == TRANSFER and (service, cid) in self.tcp:
                self.received.setdefault((service, cid), bytearray()).extend(msg.payload)
                return True
            return handler != STOP
        return getattr(self, "_" + handler)(msg, service, cid)

    def _unknown(self, msg: Msg, where: str) -> bool:
        if msg.ignorable:
            self.log.append(f"ignored an ignorable message of type {msg.type}")
            return True
        raise Crash(f"Unrecognized message type received {where}: {msg.type}")

    def _known(self) -> set[int]:
        return KNOWN_3X if self.generation == 3 else KNOWN_1X

    def _service_ids(self, msg: Msg, service: str, cid: int) -> bool:
        if msg.type == STREAM_START:
            raise Crash("Receive stream start before receiving service ids. Cannot forward data.")
        if msg.type != SERVICE_IDS:
            self.log.append(f"Expect:Message_Type_SERVICE_IDS. Ignore message type: {msg.type}")
            return False
        ids = tuple(dict.fromkeys(msg.available_service_ids))
        if set(ids) != set(self.services):
            raise Crash("Wrong configurations detected in local proxy")
        self.service_ids = ids
        self.v1_format = len(ids) == 1
        if self.mode == "destination":
            for s in self.services:
                self.handlers[(s, 1)] = WAIT_STREAM
        return True

    def _ignore_message_and_stop(self, msg: Msg, service: str, cid: int) -> bool:
        return False

    def _wait_for_stream_start(self, msg: Msg, service: str, cid: int) -> bool:
        if msg.type not in self._known():
            return self._unknown(msg, "while waiting for stream start")
        if msg.type in (SESSION_RESET, STREAM_RESET, SERVICE_IDS):
            return True
        if msg.type == STREAM_START:
            if not msg.stream_id:
                raise Crash("No stream ID set for stream start message!")
            self._open_destination(service, msg.stream_id, cid)
            return True
        if msg.type == CONNECTION_START:
            return self._connection_start(msg, service, cid)
        return True

    def _data_transfer(self, msg: Msg, service: str, cid: int) -> bool:
        t = msg.type
        if t not in self._known():
            return self._unknown(msg, "during data transfer")
        if t == SESSION_RESET:
            for s in sorted({k[0] for k in self.tcp}):
                self._reset_service(s, "SESSION_RESET")
        elif t == STREAM_RESET:
            self._reset_service(service, "STREAM_RESET")
        elif t == CONNECTION_RESET and self.generation == 3:
            self._reset_connection((service, cid), "CONNECTION_RESET")
        elif t == STREAM_START and self.mode == "destination":
            if msg.stream_id != self.stream_of.get(service):
                self._reset_service(service, "a new stream replaces it")
                self._open_destination(service, msg.stream_id, cid)
        elif t == CONNECTION_START and self.mode == "destination":
            return self._connection_start(msg, service, cid)
        return True

    def _connection_start(self, msg: Msg, service: str, cid: int) -> bool:
        if self.stream_of.get(service) == msg.stream_id and (service, 1) in self.handlers:
            self.tcp.add((service, cid))
            self.handlers[(service, cid)] = TRANSFER
        else:
            self.outbox.append(Msg(CONNECTION_RESET, stream_id=msg.stream_id, service_id=service, connection_id=cid))
        return True

    def _open_destination(self, service: str, stream: int, cid: int) -> None:
        self.stream_of[service] = stream
        self.tcp.add((service, cid))
        self.handlers[(service, cid)] = TRANSFER

    def _reset_connection(self, key: Key, why: str) -> None:
        if key not in self.tcp:
            return   # "Ignoring explicit reset because TCP socket is already closed"
        self.tcp.discard(key)
        self.closed.append((key, why))
        if self.mode == "destination":
            self.handlers[key] = WAIT_STREAM if key[1] == 1 else STOP
        else:
            self.handlers[key] = STOP

    def _reset_service(self, service: str, why: str) -> None:
        for key in sorted(k for k in self.tcp if k[0] == service):
            self._reset_connection(key, why)
        if self.mode == "destination":
            self.handlers[(service, 1)] = WAIT_STREAM
        self.alive[service] = False

    # -- local events ---------------------------------------------------------------------

    def _message(self, type_: int, service: str, cid: int, payload: bytes = b"") -> Msg:
        v3 = self.protocol == V3 and self.generation == 3
        return Msg(type_, stream_id=self.stream_of[service], payload=payload,
                   service_id=service if self.generation == 3 else "", connection_id=cid if v3 else 0)

    def accept(self, service: str) -> Key:
        """Source: an application connected to the service's port."""
        assert self.mode == "source" and self.ready, "no listener yet"
        v3 = self.protocol == V3 and self.generation == 3
        if v3 and self.alive.get(service):
            cid = self.next_connection[service] = self.next_connection.get(service, 1) + 1
            self.outbox.append(self._message(CONNECTION_START, service, cid))
        else:
            cid = 1
            self.next_connection[service] = 1
            self.stream_of[service] = self.stream_of.get(service, 0) + 1
            self.alive[service] = True
            self.outbox.append(self._message(STREAM_START, service, cid))
        self.tcp.add((service, cid))
        self.handlers[(service, cid)] = TRANSFER
        self.reading = True   # async_setup_bidirectional_data_transfers starts the read loop
        return (service, cid)

    def local_data(self, key: Key, payload: bytes) -> None:
        assert key in self.tcp, f"{key} is not open"
        self.outbox.append(self._message(DATA, key[0], key[1], payload))

    def local_close(self, key: Key) -> None:
        """The application closed its TCP connection: localproxy tells the other end."""
        assert key in self.tcp
        self.tcp.discard(key)
        self.closed.append((key, "closed locally"))
        v3 = self.protocol == V3 and self.generation == 3
        if v3 and self.mode == "source" and len([k for k in self.tcp if k[0] == key[0]]) > 0:
            self.outbox.append(self._message(CONNECTION_RESET, key[0], key[1]))
        else:
            self.outbox.append(self._message(STREAM_RESET, key[0], key[1]))
            self.alive[key[0]] = False
        self.handlers[key] = STOP if self.mode == "source" else WAIT_STREAM


class Localproxy:
    """Rules on a real WebSocket to the relay: reads only while the rules read (a stopped read
    loop leaves everything unread, close frames included), sends what they send."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, rules: Rules) -> None:
        self.ws = ws
        self.rules = rules
        self.buffer = b""
        self.close_code: int | None = None
        self.crash: Crash | None = None
        self.paused = False
        self._resumed = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, tunnel, mode: str, services: tuple[str, ...], *, protocol: str = V3,  # type: ignore[no-untyped-def]
                      generation: int = 3, client_token: str | None = None, token: str | None = None) -> Localproxy:
        client = await tunnel.connect(mode, token=token, protocols=(protocol,), client_token=client_token)
        assert client.protocol == protocol
        return cls(client.ws, Rules(mode, services, generation, protocol))

    async def _read(self) -> None:
        try:
            for _ in range(1_000_000):   # bounded: reads
                while not self.rules.reading or self.paused:
                    await self._wake.wait()
                    self._wake.clear()
                if self._resumed:
                    self._resumed = False   # what came while it was busy is processed now
                else:
                    msg = await self.ws.receive()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        self.buffer += msg.data
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                      aiohttp.WSMsgType.ERROR):
                        self.close_code = self.ws.close_code
                        self.rules.tcp.clear()   # "Web socket close received": every TCP connection is reset
                        return
                # localproxy processes what it has after each read, until a handler stops the loop
                while len(self.buffer) >= 2 and not self.paused:
                    (size,) = struct.unpack(">H", self.buffer[:2])
                    if len(self.buffer) < 2 + size:
                        break
                    body, self.buffer = self.buffer[2:2 + size], self.buffer[2 + size:]
                    if not self.rules.receive(decode(body)):
                        self.rules.reading = False
                        break
                await self._flush()
        except Crash as crash:
            self.crash = crash
            await self.ws.close()

    async def _flush(self) -> None:
        if self.rules.outbox:
            out, self.rules.outbox = self.rules.outbox, []
            await self.ws.send_bytes(frame(*out))

    def pause(self) -> None:
        """Stop processing for now (localproxy busy elsewhere): what comes waits."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._resumed = True
        self._wake.set()

    async def accept(self, service: str) -> Key:
        key = self.rules.accept(service)
        await self._flush()
        self._wake.set()
        return key

    async def send(self, key: Key, payload: bytes) -> None:
        self.rules.local_data(key, payload)
        await self._flush()

    async def close_tcp(self, key: Key) -> None:
        self.rules.local_close(key)
        await self._flush()

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        """Wait for `condition` (checked every 20 ms, at most `timeout` seconds); fail saying `what`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if self.crash is not None:
                raise AssertionError(f"localproxy crashed: {self.crash}")
            if loop.time() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s (reading={self.rules.reading},"
                                     f" log={self.rules.log[-3:]})")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.ws.close()


def names(msgs: list[Msg]) -> list[str]:
    return [NAMES.get(m.type, str(m.type)) for m in msgs]


__all__ = ["Crash", "Localproxy", "Rules", "V1", "V3", "names"]
