"""The rules of an AWS-protocol tunnel (relay/protocol_aws.py), without sockets or an event loop.
Messages the relay sends are parsed with the tests' own protobuf reader (tests/aws/spec_client.py)."""

from __future__ import annotations

import struct

import pytest

from relay import codec
from relay.model import Side
from relay.protocol import Close, CloseCode, Link, Reasons, Send, StateChange
from relay.protocol_aws import LOGGED_ANSWERS, MAX_TRACKED_CONNECTIONS, SUBPROTOCOLS, AwsPairing, choose_subprotocol
from tests.aws.spec_client import (CONNECTION_RESET, CONNECTION_START, DATA, SERVICE_IDS, SESSION_RESET, STREAM_RESET,
                                   STREAM_START, Msg, decode, frame)


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


def send_through(p: AwsPairing, side: Side, *msgs: Msg) -> bytes:
    """What `side`'s end sends, through its decoder as the relay's hot path feeds it: what the peer gets."""
    to_peer, _, close = p.decoders[side].feed(masked_binary(frame(*msgs)))
    assert close is None
    return to_peer


def ssh(type_: int, stream: int, conn: int = 1, service: str = "SSH") -> Msg:
    return Msg(type_, stream_id=stream, service_id=service, connection_id=conn)


def paired(services=("SSH",), src_version=3, dst_version=3):
    p = AwsPairing("t", services)
    src, dst = FakeEnd(Side.SOURCE, "src", src_version), FakeEnd(Side.DEVICE, "dst", dst_version)
    p.attach(src)
    p.attach(dst)
    return p, src, dst


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


def test_version_1_ends_get_service_ids_marked_ignorable():
    """localproxy 3.x waits for SERVICE_IDS whatever the subprotocol; 1.x ignores an unknown
    type only when it is marked ignorable (docs/aws.md)."""
    p = AwsPairing("t", ("SSH",))
    old = FakeEnd(Side.DEVICE, "v1", version=1)
    assert sends(p.attach(old), old) == [Msg(SERVICE_IDS, ignorable=True, available_service_ids=("SSH",))]
    bridge = FakeEnd(Side.SOURCE, "bridge", version=0)   # an end on another replica is told by its own
    assert sends(p.attach(bridge), bridge) == []


def test_a_replaced_destination_resets_the_source_s_streams():
    p = AwsPairing("t", ("SSH",))
    src, old, new = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "old"), FakeEnd(Side.DEVICE, "new")
    p.attach(src)
    p.attach(old)
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    actions = p.attach(new)
    assert closes(actions, old) == [(CloseCode.REPLACED, "replaced by a newer connection")]
    assert sends(actions, old) == []
    assert sends(actions, src) == [ssh(STREAM_RESET, 1)]
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
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    actions = p.attach(new)
    assert closes(actions, old) == [(4000, "replaced by a newer connection")]
    assert sends(actions, dst) == [ssh(STREAM_RESET, 1)]


def test_an_end_going_away_resets_the_other_and_unlinks_it():
    p = AwsPairing("t", ("SSH",))
    src, dst = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dst")
    p.attach(src)
    p.attach(dst)
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    actions = p.detach(dst)
    assert sends(actions, src) == [ssh(STREAM_RESET, 1)]
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
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    actions = p.end_sides({Side.SOURCE}, Reasons.TOKEN_ROTATED)
    assert closes(actions, src) == [(4001, "the access token was rotated")]
    assert sends(actions, dst) == [ssh(STREAM_RESET, 1)] and closes(actions, dst) == []
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


def test_nothing_is_sent_when_no_stream_is_open():
    """localproxy routes a reset to the connection of its service: one for a service with no
    stream goes to its SERVICE_IDS handler, which stops reading. So an idle end hears nothing."""
    p, src, dst = paired(("SSH", "HTTP"))
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1), ssh(DATA, 1))
    send_through(p, Side.DEVICE, ssh(STREAM_RESET, 1))   # the destination ended the stream itself
    assert sends(p.detach(dst), src) == []
    p.attach(dst)
    assert sends(p.detach(src), dst) == []


def test_each_open_stream_gets_its_own_addressed_reset():
    p, src, dst = paired(("SSH", "HTTP", "VNC"))
    send_through(p, Side.SOURCE, ssh(STREAM_START, 4, conn=1), ssh(CONNECTION_START, 4, conn=2),
                 ssh(CONNECTION_START, 4, conn=3), ssh(DATA, 4, conn=3))
    send_through(p, Side.DEVICE, ssh(CONNECTION_RESET, 4, conn=1))   # either end may end a connection
    send_through(p, Side.SOURCE, ssh(STREAM_START, 7, conn=0, service="HTTP"))   # V2: no connection ids
    send_through(p, Side.SOURCE, ssh(STREAM_START, 2, service="VNC"), ssh(CONNECTION_RESET, 2, service="VNC"))
    actions = p.detach(src)
    # an open connection id where there is one; the last one seen for a stream without any left
    assert sends(actions, dst) == [ssh(STREAM_RESET, 7, conn=0, service="HTTP"), ssh(STREAM_RESET, 4, conn=2),
                                   ssh(STREAM_RESET, 2, service="VNC")]
    assert len([a for a in actions if isinstance(a, Send)]) == 1   # in one write
    assert not p.streams.open


def test_a_new_stream_replaces_the_old_one_and_stale_resets_change_nothing():
    p, src, dst = paired(("SSH", "HTTP"))
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1), ssh(STREAM_START, 2))
    send_through(p, Side.DEVICE, ssh(STREAM_RESET, 1), ssh(CONNECTION_RESET, 1))   # stale: stream 1 is over
    send_through(p, Side.SOURCE, ssh(CONNECTION_START, 9, conn=5))   # a connection of a stream not seen starting
    assert sends(p.detach(dst), src) == [ssh(STREAM_RESET, 9, conn=5)]


def test_a_v1_stream_names_no_service_and_is_the_tunnel_s_only_one():
    p, src, dst = paired(("SSH",), src_version=1, dst_version=1)
    send_through(p, Side.SOURCE, Msg(STREAM_START, stream_id=3))
    assert sends(p.detach(src), dst) == [Msg(STREAM_RESET, stream_id=3, service_id="SSH")]


def test_a_stream_holds_a_bounded_number_of_connection_ids():
    p, src, dst = paired()
    send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    for first in range(2, MAX_TRACKED_CONNECTIONS + 200, 100):
        send_through(p, Side.SOURCE, *(ssh(CONNECTION_START, 1, conn=c) for c in range(first, first + 100)))
    assert len(p.streams.open["SSH"].connections) == MAX_TRACKED_CONNECTIONS
    assert sends(p.detach(dst), src) == [ssh(STREAM_RESET, 1, conn=1)]


def test_a_destination_whose_source_was_on_another_replica_hears_a_reset_per_service():
    """The source's messages went through the other replica's decoder: its streams are not
    known here, and a SESSION_RESET per service is what a destination acts on in any state."""
    p = AwsPairing("t", ("SSH", "HTTP"))
    bridge, dst = FakeEnd(Side.SOURCE, "bridge", version=0), FakeEnd(Side.DEVICE, "dst")
    p.attach(bridge)
    p.attach(dst)
    assert sends(p.detach(bridge), dst) == [Msg(SESSION_RESET, service_id="SSH"), Msg(SESSION_RESET, service_id="HTTP")]
    src = FakeEnd(Side.SOURCE, "src")
    p.attach(src)
    assert sends(p.detach(src), dst) == []   # a local source: its streams are known (none)


def test_each_reset_is_logged_with_tunnel_side_and_why(caplog):
    p, src, dst = paired(("SSH", "HTTP"))
    send_through(p, Side.SOURCE, ssh(STREAM_START, 3, conn=2, service="HTTP"))
    with caplog.at_level("INFO", logger="relay.protocol_aws"):
        p.end_sides({Side.DEVICE}, Reasons.HEARTBEAT)
    [record] = [r for r in caplog.records if r.getMessage() == "reset the streams of the end that stays"]
    assert record.levelname == "INFO"
    assert (record.tunnel_id, record.side) == ("t", "source")
    assert record.reason == "the destination left: no answer to heartbeats"
    assert record.resets == "STREAM_RESET HTTP/3/2"


def test_a_stream_reset_when_the_peer_left_is_not_answered_again_and_each_answer_is_logged(caplog):
    """The end's data still on its way when its peer left is dropped (it was told already);
    a new stream while it is alone is answered once, and that answer is logged too."""
    p, src, dst = paired()
    send_through(p, Side.SOURCE, Msg(STREAM_START, stream_id=1))   # a V1 end: no service id
    assert sends(p.detach(dst), src) == [Msg(STREAM_RESET, stream_id=1, service_id="SSH")]
    decoder = p.decoders[Side.SOURCE]
    with caplog.at_level("INFO", logger="relay.protocol_aws"):
        assert decoder.feed(masked_binary(frame(Msg(DATA, stream_id=1, payload=b"late"))))[1] == b""
        _, to_sender, _ = decoder.feed(masked_binary(frame(ssh(STREAM_START, 2), ssh(DATA, 2), ssh(DATA, 2))))
    assert messages(to_sender[2:]) == [ssh(STREAM_RESET, 2)]
    [record] = [r for r in caplog.records if r.getMessage() == "answered a stream with a reset"]
    assert (record.levelname, record.tunnel_id, record.side) == ("INFO", "t", "source")
    assert (record.reason, record.resets) == ("no destination is connected", "STREAM_RESET SSH/2/1")


def test_a_client_cannot_flood_the_log_with_answers(caplog):
    p = AwsPairing("t", ("SSH",))
    src = FakeEnd(Side.SOURCE, "src")
    p.attach(src)
    with caplog.at_level("INFO", logger="relay.protocol_aws"):
        for stream in range(1, 40):
            send_through(p, Side.SOURCE, ssh(STREAM_START, stream))   # each answered
        p.attach(FakeEnd(Side.SOURCE, "again"))   # a new connection is logged again
        send_through(p, Side.SOURCE, ssh(STREAM_START, 1))
    reasons = [r.reason for r in caplog.records if r.getMessage() == "answered a stream with a reset"]
    assert len(reasons) == LOGGED_ANSWERS + 1
    assert reasons[LOGGED_ANSWERS - 1].endswith("; this connection's further answers are not logged")
    assert reasons[-1] == "no destination is connected"
