"""The relay's rules for one tunnel, without sockets or an event loop."""

from __future__ import annotations

import orjson

from relay.model import Side
from relay.protocol import Close, CloseCode, Link, Pairing, Reasons, Send, StateChange


class FakeEnd:
    def __init__(self, side: Side, name: str) -> None:
        self.side = side
        self.name = name

    def __repr__(self) -> str:
        return self.name


def sends(actions, end):
    return [orjson.loads(a.message) for a in actions if isinstance(a, Send) and a.end is end]


def closes(actions, end):
    return [(a.code, a.reason) for a in actions if isinstance(a, Close) and a.end is end]


def links(actions, end):
    return [a.peer for a in actions if isinstance(a, Link) and a.end is end]


def states(actions):
    return [(a.side, a.connected) for a in actions if isinstance(a, StateChange)]


def test_first_side_waits_alone():
    p = Pairing("t")
    src = FakeEnd(Side.SOURCE, "src")
    actions = p.attach(src)
    assert links(actions, src) == [None]
    assert sends(actions, src) == []
    assert states(actions) == [(Side.SOURCE, True)]
    assert p.decoders[Side.SOURCE].peer_connected is False


def test_second_side_links_both_and_tells_the_source():
    p = Pairing("t")
    src, dev = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dev")
    p.attach(dev)
    actions = p.attach(src)
    assert links(actions, src) == [dev] and links(actions, dev) == [src]
    [hello] = sends(actions, src)
    assert hello["operation_type"] == "connect_tunnel" and hello["data"] is None
    assert sends(actions, dev) == []
    assert p.decoders[Side.SOURCE].peer_connected and p.decoders[Side.DEVICE].peer_connected


def test_eviction_closes_the_old_end_with_4000_and_relinks():
    p = Pairing("t")
    src, old, new = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "old"), FakeEnd(Side.DEVICE, "new")
    p.attach(src)
    p.attach(old)
    actions = p.attach(new)
    [bye] = sends(actions, old)
    assert bye["operation_type"] == "disconnect" and bye["data"]["status_code"] == "409"
    assert closes(actions, old) == [(CloseCode.REPLACED, "replaced by a newer connection")]
    assert links(actions, new) == [src]
    assert links(actions, src)[-1] is new
    # the source's session ended with the old device; a new device is there
    told = sends(actions, src)
    assert [m["operation_type"] for m in told] == ["disconnect", "connect_tunnel"]
    assert told[0]["data"] == {"status_code": "499", "status_msg": "the device was replaced by a newer connection"}
    # the evicted end going away later changes nothing
    assert p.detach(old) == []
    assert p.ends[Side.DEVICE] is new


def test_a_replaced_source_ends_the_device_session():
    """A new source must not inherit the SSH login of the one it replaced: the device is told."""
    p = Pairing("t")
    old, dev, new = FakeEnd(Side.SOURCE, "old"), FakeEnd(Side.DEVICE, "dev"), FakeEnd(Side.SOURCE, "new")
    p.attach(old)
    p.attach(dev)
    actions = p.attach(new)
    assert sends(actions, dev)[0]["data"]["status_msg"] == "the source was replaced by a newer connection"
    assert [m["operation_type"] for m in sends(actions, new)] == ["connect_tunnel"]


def test_a_new_source_retires_the_request_ids_of_the_earlier_ones():
    """The device's late output for an earlier source's requests is dropped, not relayed to
    the source that replaced it (request ids are unique in the tunnel)."""
    from tests.codec.frames import envelope, frame

    p = Pairing("t")
    old, dev, new = FakeEnd(Side.SOURCE, "old"), FakeEnd(Side.DEVICE, "dev"), FakeEnd(Side.SOURCE, "new")
    p.attach(old)
    p.attach(dev)
    p.decoders[Side.SOURCE].feed(frame(envelope("connect", "c1")))
    p.attach(new)
    late = envelope("command_response", "c1", data="prompt$ ")
    assert p.decoders[Side.DEVICE].feed(frame(late)) == (b"", b"", None)
    fresh = envelope("command_response", "device", data="hello")
    assert p.decoders[Side.DEVICE].feed(frame(fresh))[0].endswith(fresh)


def test_detach_tells_the_peer_and_keeps_it():
    p = Pairing("t")
    src, dev = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dev")
    p.attach(src)
    p.attach(dev)
    actions = p.detach(dev)
    [msg] = sends(actions, src)
    assert msg["data"] == {"status_code": "499", "status_msg": "the device disconnected"}
    assert closes(actions, src) == []
    assert links(actions, src) == [None]
    assert states(actions) == [(Side.DEVICE, False)]
    assert p.decoders[Side.SOURCE].peer_connected is False
    assert not p.empty
    p.detach(src)
    assert p.empty


def test_ending_both_sides_gives_each_only_its_own_reason():
    p = Pairing("t")
    src, dev = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dev")
    p.attach(src)
    p.attach(dev)
    actions = p.end_sides(frozenset(Side), Reasons.TUNNEL_CLOSED)
    for end in (src, dev):
        assert [m["data"]["status_code"] for m in sends(actions, end)] == ["410"]
        assert closes(actions, end) == [(1000, "the tunnel was closed")]
    assert p.empty


def test_ending_one_side_tells_the_other_that_its_peer_left():
    p = Pairing("t")
    src, dev = FakeEnd(Side.SOURCE, "src"), FakeEnd(Side.DEVICE, "dev")
    p.attach(src)
    p.attach(dev)
    actions = p.end_sides({Side.DEVICE}, Reasons.TOKEN_ROTATED)
    assert sends(actions, dev)[0]["data"]["status_code"] == "401"
    assert closes(actions, dev) == [(4001, "the access token was rotated")]
    assert sends(actions, src)[0]["data"]["status_code"] == "499"
    assert closes(actions, src) == []


def test_every_reason_has_a_code_and_message():
    reasons = [Reasons.EVICTED, Reasons.TUNNEL_CLOSED, Reasons.TUNNEL_EXPIRED, Reasons.TOKEN_ROTATED,
               Reasons.SHUTTING_DOWN, Reasons.HEARTBEAT, *Reasons.PEER_LEFT.values()]
    assert len({r.status_code for r in reasons}) == len(reasons) - 1  # peer-left shares one code
    assert all(r.status_msg for r in reasons)


def test_request_ids_stay_unique_across_source_reconnections():
    p = Pairing("t")
    decoder = p.decoders[Side.SOURCE]
    first = FakeEnd(Side.SOURCE, "first")
    p.attach(first)
    p.attach(FakeEnd(Side.SOURCE, "second"))
    assert p.decoders[Side.SOURCE] is decoder
