"""The relay's rules for one tunnel of the AWS IoT Secure Tunneling protocol, without I/O.

`AwsPairing` has the interface of `relay.protocol.Pairing` (attach, detach, end_sides, empty,
ends, decoders) and returns the same actions (Send, Close, Link, StateChange), so the Hub
drives both kinds of tunnel alike. Its decoders are `codec.AwsDecoder`s: they check every
tunnel message (binary frames, 2-byte length + protobuf, who may send which type, the 63 KiB
payload limit) and forward it unchanged; here are only the rules around connections
(docs/aws.md):

* on every connection with subprotocol 2.0 or 3.0 the relay sends that end SERVICE_IDS, the
  tunnel's service ids (1.0 clients do not know that message);
* a new connection on a side replaces the old one (closed with 4000, as on Huawei tunnels);
* when a side goes away or is replaced, the other end's streams are over: it gets
  SESSION_RESET ("close every active stream"). AWS's guides say the service sends StreamReset
  when a peer is replaced; the relay does not follow stream ids (it would have to parse every
  message it relays), and SESSION_RESET is the message the guides define for resetting every
  stream at once, which AWS's localproxy honours in every state;
* AWS's protocol has no "disconnect" message: why a connection ends is said by its close code
  and reason, the same codes as Huawei tunnels (relay.protocol.CloseCode).

Tested without an event loop (tests/aws/test_protocol_aws.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from relay import codec
from relay.aws_messages import MessageType, ProxyMessage, frame
from relay.model import Side
from relay.protocol import Action, Close, Link, Reason, Reasons, Send, StateChange, other

# The subprotocols of AWS's guides, by version; the relay answers with the highest offered.
SUBPROTOCOLS = {
    "aws.iot.securetunneling-1.0": 1,
    "aws.iot.securetunneling-2.0": 2,
    "aws.iot.securetunneling-3.0": 3,
}
MAX_PAYLOAD = 64512   # 63 KiB: the most a tunnel message may carry (AWS's guides)
MODES = {"source": Side.SOURCE, "destination": Side.DEVICE}   # local-proxy-mode -> side

_CODEC_SIDE = {Side.SOURCE: codec.SOURCE, Side.DEVICE: codec.DEVICE}


def choose_subprotocol(offered: list[str]) -> str | None:
    """The highest version among `offered`; None when none is one of SUBPROTOCOLS."""
    known = [p for p in offered if p in SUBPROTOCOLS]
    return max(known, key=SUBPROTOCOLS.__getitem__) if known else None


def service_ids_message(services: tuple[str, ...]) -> bytes:
    return frame(ProxyMessage(MessageType.SERVICE_IDS, available_service_ids=tuple(services)))


SESSION_RESET = frame(ProxyMessage(MessageType.SESSION_RESET))


class AwsEnd(Protocol):
    """One WebSocket connection of an AWS tunnel, as the rules see it. `version` is its
    subprotocol's (1-3); an end without one (a bridge to another replica) is told nothing."""

    side: Side


class AwsPairing:
    """The two ends of one AWS-protocol tunnel."""

    def __init__(self, tunnel_id: str, services: tuple[str, ...], max_payload: int = MAX_PAYLOAD) -> None:
        self.tunnel_id = tunnel_id
        self.services = tuple(services)
        self.ends: dict[Side, Any] = {Side.SOURCE: None, Side.DEVICE: None}
        self.decoders = {side: codec.AwsDecoder(_CODEC_SIDE[side], self.services, max_payload) for side in Side}
        self._service_ids = service_ids_message(self.services)

    @property
    def empty(self) -> bool:
        return self.ends[Side.SOURCE] is None and self.ends[Side.DEVICE] is None

    def attach(self, end: AwsEnd) -> list[Action]:
        """A new connection authenticated on `end.side`. An older one on that side is evicted
        and the other end's streams, which belonged to it, are reset."""
        side, actions = end.side, []
        old = self.ends[side]
        if old is not None:
            actions += self._end_one(old, Reasons.EVICTED, tell_peer=True)
        self.ends[side] = end
        decoder = self.decoders[side]
        decoder.reset()
        peer = self.ends[other(side)]
        decoder.peer_connected = peer is not None
        self.decoders[other(side)].peer_connected = peer is not None
        actions.append(Link(end, peer, decoder))
        if peer is not None:
            actions.append(Link(peer, end, self.decoders[other(side)]))
        actions.append(StateChange(side, True))
        if getattr(end, "version", 0) >= 2:
            actions.append(Send(end, self._service_ids))
        return actions

    def detach(self, end: AwsEnd) -> list[Action]:
        """`end` went away (it closed, failed, or we closed it). Stale ends change nothing."""
        if self.ends[end.side] is not end:
            return []
        return self._remove(end, tell_peer=True)

    def end_sides(self, sides: frozenset[Side] | set[Side], reason: Reason) -> list[Action]:
        """Close the connections of `sides` with the reason's close code; a peer that stays
        has its streams reset."""
        actions: list[Action] = []
        for side in Side:
            end = self.ends[side]
            if side in sides and end is not None:
                actions += self._end_one(end, reason, tell_peer=other(side) not in sides)
        return actions

    def _end_one(self, end: AwsEnd, reason: Reason, tell_peer: bool) -> list[Action]:
        actions: list[Action] = []
        if reason.close_code is not None:
            actions.append(Close(end, int(reason.close_code), reason.status_msg))
        return actions + self._remove(end, tell_peer)

    def _remove(self, end: AwsEnd, tell_peer: bool) -> list[Action]:
        side = end.side
        self.ends[side] = None
        self.decoders[side].peer_connected = False
        self.decoders[other(side)].peer_connected = False
        actions: list[Action] = [Link(end, None, self.decoders[side]), StateChange(side, False)]
        peer = self.ends[other(side)]
        if peer is not None:
            actions.append(Link(peer, None, self.decoders[other(side)]))
            if tell_peer:
                actions.append(Send(peer, SESSION_RESET))
        return actions
