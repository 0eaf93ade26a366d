"""The relay's rules for one tunnel of the AWS IoT Secure Tunneling protocol, without I/O.

`AwsPairing` shares `relay.protocol.PairingRules` with the Huawei `Pairing` (attach, detach,
end_sides, empty, ends, decoders) and returns the same actions (Send, Close, Link,
StateChange), so the Hub drives both kinds of tunnel alike. Its decoders are
`codec.AwsDecoder`s: they check every tunnel message (binary frames, 2-byte length +
protobuf, who may send which type, the 63 KiB payload limit) and forward it unchanged; here
are only the rules around connections (docs/aws.md):

* on every connection the relay sends that end SERVICE_IDS, the tunnel's service ids; to a
  1.0 client marked `ignorable` (localproxy 3.x waits for it whatever the subprotocol,
  localproxy 1.x ignores an unknown type only when it is marked so);
* a new connection on a side replaces the old one (closed with 4000, as on Huawei tunnels);
* when a side goes away or is replaced, the other end's streams are over. The relay follows
  the streams open on the tunnel (`StreamTable`, fed by the decoders with the STREAM_START,
  CONNECTION_START, STREAM_RESET and CONNECTION_RESET they forward: a few messages per TCP
  connection, never DATA) and sends the end that stays one STREAM_RESET per open stream,
  with its service id, stream id and an open connection id: AWS's localproxy routes every
  control message by service id (and connection id), so a bare SESSION_RESET, which names no
  service, is dropped by a localproxy that serves several services, and its reading stops;
* AWS's protocol has no "disconnect" message: why a connection ends is said by its close code
  and reason, the same codes as Huawei tunnels (relay.protocol.CloseCode).

Tested without an event loop (tests/aws/test_protocol_aws.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from relay import codec
from relay.aws_messages import MAX_PAYLOAD, VERSION_OF, MessageType, ProxyMessage, frame
from relay.model import Side, TunnelProtocol
from relay.protocol import Action, End, PairingRules, Reasons, Send

# The subprotocols of AWS's guides, by version (the relay answers with the highest offered),
# and the most a tunnel message may carry: one home, relay/aws_messages.py.
SUBPROTOCOLS = VERSION_OF
MODES = {"source": Side.SOURCE, "destination": Side.DEVICE}   # local-proxy-mode -> side

_CODEC_SIDE = {Side.SOURCE: codec.SOURCE, Side.DEVICE: codec.DEVICE}
MAX_TRACKED_CONNECTIONS = 1024   # connection ids kept per stream (one open one is all a reset needs)
LOGGED_ANSWERS = 8               # answered resets logged per connection (a client must not flood the log)

log = logging.getLogger(__name__)


def choose_subprotocol(offered: list[str]) -> str | None:
    """The highest version among `offered`; None when none is one of SUBPROTOCOLS."""
    known = [p for p in offered if p in SUBPROTOCOLS]
    return max(known, key=SUBPROTOCOLS.__getitem__) if known else None


def service_ids_message(services: tuple[str, ...], ignorable: bool = False) -> bytes:
    return frame(ProxyMessage(MessageType.SERVICE_IDS, ignorable=ignorable, available_service_ids=tuple(services)))


@dataclasses.dataclass(slots=True)
class OpenStream:
    stream_id: int
    connections: set[int]     # open connection ids; {0}: a stream without them (V1/V2)
    last_connection: int      # the latest connection id seen (when none is open any more)
    wire_service: str = ""    # the service id as the ends write it ("" from V1 ends)


class StreamTable:
    """The streams open on one tunnel, as the relay saw their messages pass: per service
    id, the active stream and its open connections. Fed with what the decoders forward
    (`note`); `take_resets` gives the messages that end them all at the end that stays."""

    __slots__ = ("open", "_only")

    def __init__(self, services: tuple[str, ...]) -> None:
        self.open: dict[str, OpenStream] = {}
        self._only = services[0] if len(services) == 1 else ""

    def note(self, type_: int, service_id: str, stream_id: int, connection_id: int) -> None:
        """A forwarded STREAM_START, CONNECTION_START, STREAM_RESET or CONNECTION_RESET."""
        service = service_id or self._only   # a V1 message names no service: the tunnel's only one
        current = self.open.get(service)
        if type_ == MessageType.STREAM_START:
            # a new stream of the service replaces its old one at the destination
            self.open[service] = OpenStream(stream_id, {connection_id}, connection_id, service_id)
        elif type_ == MessageType.CONNECTION_START:
            cid = connection_id or 1   # V3: a connection id of 0 means 1
            if current is None or current.stream_id != stream_id:
                self.open[service] = OpenStream(stream_id, {cid}, cid, service_id)
            else:
                if len(current.connections) < MAX_TRACKED_CONNECTIONS:
                    current.connections.add(cid)
                current.last_connection = cid
        elif type_ == MessageType.CONNECTION_RESET:
            if current is not None and current.stream_id == stream_id:
                current.connections.discard(connection_id or 1)
        elif type_ == MessageType.STREAM_RESET:
            if current is not None and current.stream_id == stream_id:
                del self.open[service]

    def take_resets(self) -> list[tuple[ProxyMessage, str]]:
        """One STREAM_RESET per open stream, addressed as localproxy routes it (service id,
        stream id, and one of its open connection ids), each with the service id as the ends
        write it; the table is then empty."""
        resets = []
        for service, stream in sorted(self.open.items()):
            cid = min(stream.connections) if stream.connections else stream.last_connection
            resets.append((ProxyMessage(MessageType.STREAM_RESET, stream_id=stream.stream_id, service_id=service,
                                        connection_id=cid), stream.wire_service))
        self.open.clear()
        return resets


def describe(msg: ProxyMessage) -> str:
    """`STREAM_RESET SSH/3/1` (type service/stream/connection), for the logs."""
    where = "/".join(str(part) for part in (msg.service_id or "-", msg.stream_id, msg.connection_id) if part != 0)
    return f"{MessageType(msg.type).name} {where}".strip()


class AwsPairing(PairingRules[codec.AwsDecoder]):
    """The two ends of one AWS-protocol tunnel."""

    __slots__ = ("services", "streams", "_source_seen", "_answers_logged")
    protocol = TunnelProtocol.AWS.value

    def __init__(self, tunnel_id: str, services: tuple[str, ...], max_payload: int = MAX_PAYLOAD) -> None:
        self.tunnel_id = tunnel_id
        self.services = tuple(services)
        self.ends = {Side.SOURCE: None, Side.DEVICE: None}
        self.streams = StreamTable(self.services)
        # whether the source's messages pass through a decoder here (not through a bridge
        # from another replica): only then does `streams` know every stream it started
        self._source_seen = True
        self._answers_logged = {Side.SOURCE: 0, Side.DEVICE: 0}
        self.decoders = {side: codec.AwsDecoder(_CODEC_SIDE[side], self.services, max_payload,
                                                on_stream=functools.partial(self._stream_message, side))
                         for side in Side}

    def attach(self, end: End) -> list[Action]:
        """A new connection authenticated on `end.side`. An older one on that side is evicted
        and the other end's streams, which belonged to it, are reset. An end of `version` 0 (a
        bridge to another replica) is told nothing: its own replica tells its client."""
        actions: list[Action] = []
        old = self.ends[end.side]
        if old is not None:
            actions += self._end_one(old, Reasons.EVICTED, tell_peer=True)
        version = end.version
        self._answers_logged[end.side] = 0
        if end.side is Side.SOURCE:
            self._source_seen = version > 0
        actions += self._link(end)
        if version:
            actions.append(Send(end, service_ids_message(self.services, ignorable=version < 2)))
        return actions

    def _stream_message(self, side: Side, type_: int, service_id: str, stream_id: int, connection_id: int,
                        answered: bool) -> None:
        """What a decoder reports: a stream message it forwarded, or a STREAM_RESET it answered
        (once per stream) while the peer is away."""
        if not answered:
            self.streams.note(type_, service_id, stream_id, connection_id)
            return
        logged = self._answers_logged[side] = self._answers_logged[side] + 1
        if logged > LOGGED_ANSWERS:
            return
        peer = "destination" if side is Side.SOURCE else "source"
        more = "; this connection's further answers are not logged" if logged == LOGGED_ANSWERS else ""
        log.info("answered a stream with a reset", extra={
            "tunnel_id": self.tunnel_id, "side": side.value, "reason": f"no {peer} is connected{more}",
            "resets": describe(ProxyMessage(MessageType.STREAM_RESET, stream_id=stream_id,
                                            service_id=service_id, connection_id=connection_id))})

    def _peer_left(self, side: Side, why: str) -> bytes:
        """Resets for the streams of the end on `side` that were open with the peer that left."""
        decoder = self.decoders[side]
        resets = []
        for reset, wire_service in self.streams.take_resets():
            resets.append(reset)
            # its messages of that stream still on their way are not answered a second time
            decoder.reset_sent(wire_service, reset.stream_id)
        if not resets and side is Side.DEVICE and not self._source_seen:
            # The source was on another replica: its streams were not seen here. A SESSION_RESET
            # per service reaches a destination localproxy in every state (it waits for a stream
            # or transfers one for each of its services; it never stops on one).
            resets = [ProxyMessage(MessageType.SESSION_RESET, service_id=service) for service in self.services]
        if not resets:
            return b""
        peer = "destination" if side is Side.SOURCE else "source"
        log.info("reset the streams of the end that stays", extra={
            "tunnel_id": self.tunnel_id, "side": side.value, "reason": f"the {peer} left: {why}",
            "resets": ", ".join(map(describe, resets))})
        return b"".join(map(frame, resets))

    def _side_left(self, side: Side) -> None:
        self.streams.open.clear()   # what was open was reset, or has no one left to tell
