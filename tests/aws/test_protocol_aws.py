"""The rules of an AWS-protocol tunnel (relay/protocol_aws.py), without sockets or an event loop.
Messages the relay sends are parsed with the tests' own protobuf reader (tests/aws/spec_client.py)."""

from __future__ import annotations

import struct

import pytest

from relay import codec
from relay.model import Side
from relay.protocol import Close, CloseCode, Link, Reasons, Send, StateChange
from relay.protocol_aws import SUBPROTOCOLS, AwsPairing, choose_subprotocol
from tests.aws.spec_client import DATA, SERVICE_IDS, SESSION_RESET, STREAM_RESET, STREAM_START, Msg, decode, frame


class FakeEnd:
    def __init__(self, side: Side, name: str, version: int = 3) -> None:
        self.side = side
        self.name = name
        self.version = version

    def __repr__(self) -> str:
        return self.name


def messages(payload: bytes) -> list[Msg]:
    found = []
    while payload:
        (size,) = struct.unpack(">H", payload[:2])
        found.append(decode(payload[2:2 + size]))
        payload = payload[2 + size:]
    return found


def sends(actions, end) -> list[Msg]:
    return [m for a in actions if isinstance(a, Send) and a.end is end for m in messages(a.message)]


def closes(actions, end):
    return [(a.code, a.reason) for a in actions if isinstance(a, Close) and a.end is end]


def links(actions, end):
    return [a.peer for a in actions if isinstance(a, Link) and a.end is end]


def states(actions):
    return [(a.side, a.connected) for a in actions if isinstance(a, StateChange)]


def masked_binary(payload: bytes) -> bytes:
    """A client's binary WebSocket frame (mask of zeros: the payload is unchanged)."""
    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + b"\0\0\0\0" + payload


def test_subprotocol_choice_is_the_highest_offered():
    assert choose_subprotocol(["aws.iot.securetunneling-2.0", "aws.iot.securetunneling-3.0"]) \
        == "aws.iot.securetunneling-3.0"
    assert choose_subprotocol(["x", "aws.iot.securetunneling-1.0"]) == "aws.iot.securetunneling-1.0"
    assert choose_subprotocol(["aws.iot.securetunneling-4.0", "iot-tunnel.v1"]) is None
    assert choose_subprotocol([]) is None
    assert sorted(SUBPROTOCOLS.values()) == [1, 2, 3]


def test_each_connecting_end_is_told_the_services():
    p = AwsPairing("t", ("SSH", "HTTP"))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst", version=2)
    actions = p.attach(src)
    assert sends(actions, src) == [Msg(SERVICE_IDS, available_service_ids=("SSH", "HTTP"))]
    assert links(actions, src) == [None] and states(actions) == [(Side.SOURCE, True)]
    assert p.decoders[Side.SOURCE].peer_connected is False
    actions = p.attach(dst)
    assert sends(actions, dst) == [Msg(SERVICE_IDS, available_service_ids=("SSH", "HTTP"))]
    assert sends(actions, src) == []   # nothing like Huawei's connect_tunnel
    assert links(actions, dst) == [src] and links(actions, src) == [dst]
    assert p.decoders[Side.SOURCE].peer_connected and p.decoders[Side.DEVICE].peer_connected


def test_version_1_ends_do_not_get_service_ids():
    p = AwsPairing("t", ("SSH",))
    old = FakeEnd(Side.DEVICE, "v1", version=1)
    assert sends(p.attach(old), old) == []


def test_a_replaced_destination_resets_the_source_s_streams():
    p = AwsPairing("t", ("SSH",))
    src, old, new = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "old"), FakeEnd(Side.DEVICE, "new")
    p.attach(src)
    p.attach(old)
    actions = p.attach(new)
    assert closes(actions, old) == [(CloseCode.REPLACED, "replaced by a newer connection")]
    assert sends(actions, old) == []
    assert sends(actions, src) == [Msg(SESSION_RESET)]
    assert sends(actions, new) == [Msg(SERVICE_IDS, available_service_ids=("SSH",))]
    assert links(actions, src)[-1] is new and links(actions, new) == [src]
    # the reset reaches the source before anything the new destination could send
    order = [a for a in actions if isinstance(a, (Send, Link)) and a.end is src]
    assert isinstance(order[-2], Send) and order[-1].peer is new
    assert p.detach(old) == []   # the evicted end going away later changes nothing
    assert p.ends[Side.DEVICE] is new


def test_a_replaced_source_resets_the_destination_s_streams():
    p = AwsPairing("t", ("SSH",))
    old, new, dst = FakeEnd(Side.SOURCE, "old"), FakeEnd(Side.SOURCE, "new"), FakeEnd(Side.DEVICE, "dst")
    p.attach(old)
    p.attach(dst)
    actions = p.attach(new)
    assert closes(actions, old) == [(4000, "replaced by a newer connection")]
    assert sends(actions, dst) == [Msg(SESSION_RESET)]


def test_an_end_going_away_resets_the_other_and_unlinks_it():
    p = AwsPairing("t", ("SSH",))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst")
    p.attach(src)
    p.attach(dst)
    actions = p.detach(dst)
    assert sends(actions, src) == [Msg(SESSION_RESET)]
    assert links(actions, src) == [None] and links(actions, dst) == [None]
    assert states(actions) == [(Side.DEVICE, False)]
    assert closes(actions, src) == []   # the source stays and waits
    assert p.decoders[Side.SOURCE].peer_connected is False
    assert p.detach(src) and p.empty


@pytest.mark.parametrize("reason, code", [
    (Reasons.TUNNEL_CLOSED, 1000), (Reasons.TUNNEL_EXPIRED, 1000), (Reasons.TOKEN_ROTATED, 4001),
    (Reasons.SHUTTING_DOWN, 1001), (Reasons.HEARTBEAT, 4008),
])
def test_ending_both_sides_closes_them_with_the_reason_s_code(reason, code):
    p = AwsPairing("t", ("SSH",))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst")
    p.attach(src)
    p.attach(dst)
    actions = p.end_sides(frozenset(Side), reason)
    assert closes(actions, src) == [(code, reason.status_msg)] and closes(actions, dst) == [(code, reason.status_msg)]
    assert sends(actions, src) == [] and sends(actions, dst) == []   # no disconnect message in this protocol
    assert p.empty


def test_rotating_one_side_closes_it_and_resets_the_other():
    p = AwsPairing("t", ("SSH",))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst")
    p.attach(src)
    p.attach(dst)
    actions = p.end_sides({Side.SOURCE}, Reasons.TOKEN_ROTATED)
    assert closes(actions, src) == [(4001, "the access token was rotated")]
    assert sends(actions, dst) == [Msg(SESSION_RESET)] and closes(actions, dst) == []
    assert p.ends == {Side.SOURCE: None, Side.DEVICE: dst}


def test_decoders_follow_the_links():
    """What the pairing decides is what the decoders do: relay while linked, answer the
    sender with STREAM_RESET while the peer is away."""
    p = AwsPairing("t", ("SSH",))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst")
    p.attach(src)
    start = frame(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1))
    to_peer, to_sender, close = p.decoders[Side.SOURCE].feed(masked_binary(start))
    assert to_peer == b"" and close is None
    [reset] = messages(to_sender[2:])   # one server frame: 2-byte header, then the messages
    assert reset.type == STREAM_RESET and reset.stream_id == 1
    p.attach(dst)
    data = frame(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"hello"))
    to_peer, to_sender, close = p.decoders[Side.SOURCE].feed(masked_binary(start + data))
    assert to_peer == codec.encode_binary(start + data) and to_sender == b"" and close is None
    p.detach(dst)
    to_peer, _, _ = p.decoders[Side.SOURCE].feed(masked_binary(data))
    assert to_peer == b""
