"""The relay's rules for one tunnel, without I/O.

A `Pairing` holds at most one live connection per side and the two sides' decoders. Its
methods take events (a side connected, a side went away, the tunnel ended) and return the
actions the adapter must carry out: messages to send, connections to close, links to change,
connection states to record. Tested without an event loop (tests/test_protocol.py).

Relayed traffic never passes through here: once two ends are linked, the adapter hands each
read to the decoder and writes what it returns straight to the peer.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, assert_never

from relay import codec
from relay.closes import CloseCode as CloseCode
from relay.envelope import build as build_envelope
from relay.model import CloseReason, Side, TunnelProtocol

SERVICE_SSH = "ssh"
SERVICES = ("ssh", "tcp")  # Huawei's SSH service, and TCP forwarding (docs/forwarding.md)


@dataclasses.dataclass(frozen=True)
class Reason:
    """Why a side is told `disconnect`: the `data` of that message, and the close that follows."""

    status_code: str
    status_msg: str
    close_code: CloseCode | None  # None: the connection stays open (its peer went away)


class Reasons:
    PEER_LEFT = {
        Side.SOURCE: Reason("499", "the device disconnected", None),
        Side.DEVICE: Reason("499", "the source disconnected", None),
    }
    # The peer's session belonged to the replaced connection: it must end too (a new source
    # must never inherit an SSH login made by the one it replaced).
    PEER_REPLACED = {
        Side.SOURCE: Reason("499", "the device was replaced by a newer connection", None),
        Side.DEVICE: Reason("499", "the source was replaced by a newer connection", None),
    }
    EVICTED = Reason("409", "replaced by a newer connection", CloseCode.REPLACED)
    TUNNEL_CLOSED = Reason("410", "the tunnel was closed", CloseCode.NORMAL)
    TUNNEL_EXPIRED = Reason("408", "the tunnel expired", CloseCode.NORMAL)
    TOKEN_ROTATED = Reason("401", "the access token was rotated", CloseCode.TOKEN_REVOKED)
    SHUTTING_DOWN = Reason("503", "the relay is shutting down", CloseCode.GOING_AWAY)
    HEARTBEAT = Reason("504", "no answer to heartbeats", CloseCode.HEARTBEAT_TIMEOUT)


class EndCause(str, enum.Enum):
    """Why the control plane ends a tunnel's connections. Its value is what a cluster hint
    carries to the other replicas (relay.cluster.Hint.reason)."""

    CLOSED = "closed"     # closed by the API
    EXPIRED = "expired"   # its lifetime ran out
    ROTATED = "rotated"   # the side's token was rotated

    @classmethod
    def of_close(cls, reason: CloseReason) -> EndCause:
        """The cause of a tunnel's close, as the store records it."""
        match reason:
            case CloseReason.CLOSED:
                return cls.CLOSED
            case CloseReason.EXPIRED:
                return cls.EXPIRED
            case _:
                assert_never(reason)

    @classmethod
    def parse(cls, text: str) -> EndCause:
        """The cause a hint names; ValueError for any other text (never a guess)."""
        return cls(text)

    @property
    def reason(self) -> Reason:
        """What the ends are told, and the close that follows."""
        match self:
            case EndCause.CLOSED:
                return Reasons.TUNNEL_CLOSED
            case EndCause.EXPIRED:
                return Reasons.TUNNEL_EXPIRED
            case EndCause.ROTATED:
                return Reasons.TOKEN_ROTATED
            case _:
                assert_never(self)


def new_request_id() -> str:
    return uuid.uuid4().hex


def envelope(operation_type: str, data: Any, request_id: str | None = None, service: str = SERVICE_SSH) -> bytes:
    return build_envelope(operation_type, request_id or new_request_id(), data, service)


def connect_tunnel_message() -> bytes:
    return envelope("connect_tunnel", None)


def disconnect_message(reason: Reason) -> bytes:
    return envelope("disconnect", {"status_code": reason.status_code, "status_msg": reason.status_msg})


class End(Protocol):
    """One connection of a tunnel, as the rules see it, and what the actions ask of it (the
    adapter's ends meet it: relay/web/sockets.py, relay/web/bridge.py)."""

    side: Side

    @property
    def version(self) -> int:
        """The version of the subprotocol it speaks: AWS's 1-3; 0 for an end that has none (a
        Huawei connection) or that the relay tells nothing (a bridge to another replica)."""
        ...

    def send_message(self, payload: bytes) -> None:
        """Send one message of the relay's own (Send)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the connection with this WebSocket close (Close)."""
        ...

    def link(self, peer: Self | None) -> None:
        """Relay what it reads to `peer` from now on; None: to no one (Link)."""
        ...


# The decoders of a tunnel: the codec's, of the tunnel's protocol (Huawei's or AWS's).
TunnelDecoder = TypeVar("TunnelDecoder", codec.Decoder, codec.AwsDecoder)


class Watcher(Protocol):
    """Sees the few relayed messages the audit trail needs (relay/sessions.py): the decoders
    hand it the messages whose operation type it names, nothing else."""

    def noted(self, side: Side) -> frozenset[str]: ...
    def observer(self, side: Side) -> Callable[[bytes], None]: ...
    def side_left(self, side: Side) -> None: ...


@dataclasses.dataclass(frozen=True)
class Send:
    end: End
    message: bytes        # one text message (its payload)


@dataclasses.dataclass(frozen=True)
class Close:
    end: End
    code: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Link:
    end: End
    peer: End | None      # where `end`'s relayed messages go from now on
    decoder: codec.Decoder | codec.AwsDecoder   # the decoder `end` must feed its reads to


@dataclasses.dataclass(frozen=True)
class StateChange:
    side: Side
    connected: bool


Action = Send | Close | Link | StateChange

_CODEC_SIDE = {Side.SOURCE: codec.SOURCE, Side.DEVICE: codec.DEVICE}


def other(side: Side) -> Side:
    return Side.DEVICE if side is Side.SOURCE else Side.SOURCE


class PairingRules(Generic[TunnelDecoder]):
    """What every kind of tunnel does with its two connections, whatever its protocol: at most
    one live end per side, linking the two, and ending them. The protocol's kind says what an
    end is told when it goes (`_farewell`), what its peer hears (`_peer_left`), and what else
    it does on a connection (`attach`)."""

    __slots__ = ("tunnel_id", "ends", "decoders")   # one per tunnel with a connection here: kept small

    protocol: ClassVar[str]   # a TunnelProtocol value: the label of its metrics
    tunnel_id: str
    ends: dict[Side, End | None]
    decoders: dict[Side, TunnelDecoder]

    @property
    def empty(self) -> bool:
        return self.ends[Side.SOURCE] is None and self.ends[Side.DEVICE] is None

    def detach(self, end: End) -> list[Action]:
        """`end` went away (it closed, failed, or we closed it). Stale ends change nothing."""
        if self.ends[end.side] is not end:
            return []
        return self._remove(end, tell_peer=True)

    def end_sides(self, sides: frozenset[Side] | set[Side], reason: Reason) -> list[Action]:
        """Tell the connections of `sides` why they end, and close them."""
        actions: list[Action] = []
        for side in Side:
            end = self.ends[side]
            if side in sides and end is not None:
                # A peer that ends too hears only its own reason.
                actions += self._end_one(end, reason, tell_peer=other(side) not in sides)
        return actions

    def _link(self, end: End) -> list[Action]:
        """`end` becomes its side's connection, linked to the peer if there is one."""
        side = end.side
        self.ends[side] = end
        decoder = self.decoders[side]
        decoder.reset()
        peer = self.ends[other(side)]
        decoder.peer_connected = peer is not None
        self.decoders[other(side)].peer_connected = peer is not None
        actions: list[Action] = [Link(end, peer, decoder)]
        if peer is not None:
            actions.append(Link(peer, end, self.decoders[other(side)]))
        actions.append(StateChange(side, True))
        return actions

    def _end_one(self, end: End, reason: Reason, tell_peer: bool) -> list[Action]:
        actions = self._farewell(end, reason)
        if reason.close_code is not None:
            actions.append(Close(end, int(reason.close_code), reason.status_msg))
        return actions + self._remove(end, tell_peer, reason.status_msg)

    def _remove(self, end: End, tell_peer: bool, why: str = "it disconnected") -> list[Action]:
        side = end.side
        self.ends[side] = None
        peer = self.ends[other(side)]
        # What the peer is told is decided before the protocol forgets the side's connection.
        told = self._peer_left(other(side), why) if peer is not None and tell_peer else b""
        self._side_left(side)
        self.decoders[side].peer_connected = False
        self.decoders[other(side)].peer_connected = False
        actions: list[Action] = [Link(end, None, self.decoders[side]), StateChange(side, False)]
        if peer is not None:
            actions.append(Link(peer, None, self.decoders[other(side)]))
            if told:
                actions.append(Send(peer, told))
        return actions

    # -- what the protocol says ---------------------------------------------------------

    def _farewell(self, end: End, reason: Reason) -> list[Action]:
        """What an end is sent before its connection is closed for `reason`."""
        return []

    def _peer_left(self, side: Side, why: str) -> bytes:
        """What the end on `side` is sent when its peer has gone (`why`: the peer's reason);
        nothing when empty."""
        raise NotImplementedError

    def _side_left(self, side: Side) -> None:
        """Anything the protocol keeps about `side`'s connection is over."""


class Pairing(PairingRules[codec.Decoder]):
    """The two ends of one Huawei-protocol tunnel."""

    __slots__ = ("watcher",)
    protocol = TunnelProtocol.HUAWEI.value

    def __init__(self, tunnel_id: str, max_message_size: int = 10240, watcher: Watcher | None = None) -> None:
        self.tunnel_id = tunnel_id
        self.ends = {Side.SOURCE: None, Side.DEVICE: None}
        self.watcher = watcher
        # One decoder per side for the tunnel's whole life: the source's request ids must be
        # unique in the tunnel, across reconnections.
        self.decoders = {side: self._decoder(side, max_message_size) for side in Side}

    def _decoder(self, side: Side, max_message_size: int) -> codec.Decoder:
        if self.watcher is None:
            return codec.Decoder(_CODEC_SIDE[side], max_message_size, SERVICES)
        return codec.Decoder(_CODEC_SIDE[side], max_message_size, SERVICES, noted=self.watcher.noted(side),
                             on_note=self.watcher.observer(side))

    def attach(self, end: End) -> list[Action]:
        """A new connection authenticated on `end.side`. An older one on that side is evicted."""
        side, actions = end.side, []
        old = self.ends[side]
        if old is not None:
            actions += self._end_one(old, Reasons.EVICTED, tell_peer=False)
            peer = self.ends[other(side)]
            if peer is not None:
                # The session on the old connection is over: its peer ends its side of it.
                actions.append(Send(peer, disconnect_message(Reasons.PEER_REPLACED[other(side)])))
        if side is Side.SOURCE:
            # Whatever the device still sends for an earlier source's requests (output it sent
            # before it read that source's end) belongs to a session that is over: it must not
            # reach this source. Request ids are unique in the tunnel, so every id remembered so
            # far is an earlier connection's.
            self.decoders[Side.DEVICE].retire_request_ids(self.decoders[Side.SOURCE].request_ids())
        actions += self._link(end)
        peer = self.ends[other(side)]
        if peer is not None:
            source = end if side is Side.SOURCE else peer
            actions.append(Send(source, connect_tunnel_message()))
        return actions

    def _farewell(self, end: End, reason: Reason) -> list[Action]:
        return [Send(end, disconnect_message(reason))]

    def _peer_left(self, side: Side, why: str) -> bytes:
        return disconnect_message(Reasons.PEER_LEFT[side])

    def _side_left(self, side: Side) -> None:
        if self.watcher is not None:
            self.watcher.side_left(side)   # what ran over this connection is over
