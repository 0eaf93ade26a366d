"""The relay's rules for one tunnel of the AWS IoT Secure Tunneling protocol, without I/O.

`AwsPairing` shares `relay.protocol.PairingRules` with the Huawei `Pairing` (attach, detach,
end_sides, empty, ends, decoders) and returns the same actions (Send, Close, Link,
StateChange), so the Hub drives both kinds of tunnel alike. Its decoders are
`codec.AwsDecoder`s: they check every tunnel message (binary frames, 2-byte length +
protobuf, who may send which type, the 63 KiB payload limit) and forward it unchanged; here
are only the rules around connections (docs/aws.md):

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
from relay.model import Side, TunnelProtocol
from relay.protocol import Action, PairingRules, Reasons, Send

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


class AwsPairing(PairingRules):
    """The two ends of one AWS-protocol tunnel."""

    __slots__ = ("services", "_service_ids")
    protocol = TunnelProtocol.AWS.value

    def __init__(self, tunnel_id: str, services: tuple[str, ...], max_payload: int = MAX_PAYLOAD) -> None:
        self.tunnel_id = tunnel_id
        self.services = tuple(services)
        self.ends: dict[Side, Any] = {Side.SOURCE: None, Side.DEVICE: None}
        self.decoders = {side: codec.AwsDecoder(_CODEC_SIDE[side], self.services, max_payload) for side in Side}
        self._service_ids = service_ids_message(self.services)

    def attach(self, end: AwsEnd) -> list[Action]:
        """A new connection authenticated on `end.side`. An older one on that side is evicted
        and the other end's streams, which belonged to it, are reset."""
        actions: list[Action] = []
        old = self.ends[end.side]
        if old is not None:
            actions += self._end_one(old, Reasons.EVICTED, tell_peer=True)
        actions += self._link(end)
        if getattr(end, "version", 0) >= 2:
            actions.append(Send(end, self._service_ids))
        return actions

    def _peer_left(self, side: Side) -> bytes:
        # AWS has no "disconnect" message: the close code says why, and the streams are over.
        return SESSION_RESET
