"""The stream rules of both AWS-protocol ends (relay/ends/aws_streams.py), without sockets: what
a destination and a source do with each message of AWS's guides (V1-V3) and each local event."""

from __future__ import annotations

import itertools

import pytest

from relay import aws_messages
from relay.ends import aws_session, localproxy_args
from relay.ends import aws_streams as s
from relay.aws_messages import MessageReader, MessageType, ProxyMessage
from relay.errors import ConfigError

SSH = ("127.0.0.1", 22)
HTTP = ("10.0.0.1", 80)


def sent(effects: list[s.StreamEffect]) -> list[ProxyMessage]:
    """The messages of the Send effects, decoded."""
    return MessageReader().feed(b"".join(e.data for e in effects if isinstance(e, s.StreamSend)))


def others(effects: list[s.StreamEffect]) -> list[s.StreamEffect]:
    return [e for e in effects if not isinstance(e, (s.StreamSend, s.StreamNotice))]


def msg(type_: MessageType, stream_id: int = 0, service_id: str = "", connection_id: int = 0, payload: bytes = b"",
        ignorable: bool = False, available: tuple[str, ...] = ()) -> ProxyMessage:
    return ProxyMessage(type_, stream_id=stream_id, service_id=service_id, connection_id=connection_id,
                        payload=payload, ignorable=ignorable, available_service_ids=available)


def destination(version: int = 3, services: dict | None = None) -> s.Destination:
    table = s.Destination(services or {"SSH": SSH, "HTTP": HTTP}, version)
    assert table.received(msg(MessageType.SERVICE_IDS, available=("SSH", "HTTP"))) == []
    return table


# -- destination ----------------------------------------------------------------------------------


def test_v3_destination_opens_a_connection_per_start_and_routes_data_by_connection_id():
    d = destination()
    assert d.received(msg(MessageType.STREAM_START, 7, "SSH", 1)) == [s.StreamConnect(s.Key("SSH", 7, 1), SSH)]
    assert d.received(msg(MessageType.CONNECTION_START, 7, "SSH", 2)) == [s.StreamConnect(s.Key("SSH", 7, 2), SSH)]
    assert d.received(msg(MessageType.DATA, 7, "SSH", 2, b"two")) == [s.StreamDeliver(s.Key("SSH", 7, 2), b"two")]
    assert d.received(msg(MessageType.DATA, 7, "SSH", 1, b"one")) == [s.StreamDeliver(s.Key("SSH", 7, 1), b"one")]
    # a reset of one connection leaves the other, and the stream, alone
    assert d.received(msg(MessageType.CONNECTION_RESET, 7, "SSH", 1)) == [
        s.StreamClose(s.Key("SSH", 7, 1), "the other end reset the connection")]
    assert d.received(msg(MessageType.DATA, 7, "SSH", 1, b"late")) == []
    assert d.received(msg(MessageType.DATA, 7, "SSH", 2, b"x")) == [s.StreamDeliver(s.Key("SSH", 7, 2), b"x")]
    assert d.active == {"SSH": 7}


def test_local_data_is_split_into_payloads_of_at_most_63_kib_with_the_stream_fields():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 7, "SSH", 3))
    data = bytes(range(256)) * 600   # 153,600 bytes
    effects = d.local_data(s.Key("SSH", 7, 3), data)
    messages = sent(effects)
    assert [len(m.payload) for m in messages] == [64512, 64512, 153600 - 2 * 64512]
    assert b"".join(m.payload for m in messages) == data
    assert {(m.type, m.stream_id, m.service_id, m.connection_id) for m in messages} == {(MessageType.DATA, 7, "SSH", 3)}
    assert d.local_data(s.Key("SSH", 8, 3), b"not a connection") == []


def test_a_local_close_sends_connection_reset_in_v3_and_stream_reset_in_v2():
    d3 = destination(3)
    d3.received(msg(MessageType.STREAM_START, 7, "SSH", 1))
    (reset,) = sent(d3.local_closed(s.Key("SSH", 7, 1)))
    assert (reset.type, reset.stream_id, reset.service_id, reset.connection_id) == (
        MessageType.CONNECTION_RESET, 7, "SSH", 1)
    assert d3.active == {"SSH": 7}   # the stream goes on: the next connection is a CONNECTION_START
    assert d3.local_closed(s.Key("SSH", 7, 1)) == []   # once

    d2 = destination(2)
    assert d2.received(msg(MessageType.STREAM_START, 5, "SSH")) == [s.StreamConnect(s.Key("SSH", 5, 0), SSH)]
    (reset,) = sent(d2.local_closed(s.Key("SSH", 5, 0)))
    assert (reset.type, reset.stream_id, reset.service_id, reset.connection_id) == (MessageType.STREAM_RESET, 5, "SSH", 0)
    assert d2.active == {}


def test_a_v2_stream_start_replaces_the_active_stream_of_its_service_and_old_data_is_stale():
    d = destination(2)
    d.received(msg(MessageType.STREAM_START, 1, "SSH"))
    d.received(msg(MessageType.STREAM_START, 1, "HTTP"))
    effects = d.received(msg(MessageType.STREAM_START, 2, "SSH"))
    assert others(effects) == [s.StreamClose(s.Key("SSH", 1), "a new stream replaces it"), s.StreamConnect(s.Key("SSH", 2), SSH)]
    assert d.received(msg(MessageType.DATA, 1, "SSH", payload=b"stale")) == []
    assert d.received(msg(MessageType.DATA, 2, "SSH", payload=b"new")) == [s.StreamDeliver(s.Key("SSH", 2), b"new")]
    assert d.received(msg(MessageType.DATA, 1, "HTTP", payload=b"other service")) == [
        s.StreamDeliver(s.Key("HTTP", 1), b"other service")]


def test_stream_reset_closes_every_connection_of_the_active_stream_only_when_the_id_matches():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 4, "SSH", 1))
    d.received(msg(MessageType.CONNECTION_START, 4, "SSH", 2))
    assert d.received(msg(MessageType.STREAM_RESET, 3, "SSH")) == []   # stale
    closes = d.received(msg(MessageType.STREAM_RESET, 4, "SSH"))
    assert [c.key for c in closes] == [s.Key("SSH", 4, 1), s.Key("SSH", 4, 2)]
    assert all(isinstance(c, s.StreamClose) and not c.abort for c in closes)   # orderly: queued data is written first
    assert d.active == {} and d.connections == set()


def test_session_reset_closes_everything():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 1, "SSH", 1))
    d.received(msg(MessageType.STREAM_START, 9, "HTTP", 1))
    assert sorted(c.key for c in d.received(msg(MessageType.SESSION_RESET))) == [
        s.Key("HTTP", 9, 1), s.Key("SSH", 1, 1)]
    assert d.active == {} and d.connections == set()
    assert d.received(msg(MessageType.SESSION_RESET)) == []


def test_a_stream_for_a_service_without_an_address_is_refused_with_stream_reset():
    d = s.Destination({"SSH": SSH})
    notice = d.received(msg(MessageType.SERVICE_IDS, available=("SSH", "VNC")))
    assert len(notice) == 1 and "VNC" in notice[0].text
    effects = d.received(msg(MessageType.STREAM_START, 3, "VNC", 1))
    assert others(effects) == []
    (reset,) = sent(effects)
    assert (reset.type, reset.stream_id, reset.service_id) == (MessageType.STREAM_RESET, 3, "VNC")


def test_connection_start_for_a_stream_that_is_not_active_is_answered_with_connection_reset():
    d = destination()
    (reset,) = sent(d.received(msg(MessageType.CONNECTION_START, 3, "SSH", 2)))
    assert (reset.type, reset.stream_id, reset.connection_id) == (MessageType.CONNECTION_RESET, 3, 2)
    d.received(msg(MessageType.STREAM_START, 3, "SSH", 1))
    # the same connection id twice: an error; the old one ends
    effects = d.received(msg(MessageType.CONNECTION_START, 3, "SSH", 1))
    assert others(effects) == [s.StreamClose(s.Key("SSH", 3, 1), "the other end started it again", abort=True)]
    assert [m.type for m in sent(effects)] == [MessageType.CONNECTION_RESET]


def test_a_v2_peer_on_a_v3_connection_has_one_connection_per_stream():
    d = destination(3)
    assert d.received(msg(MessageType.STREAM_START, 2, "SSH")) == [s.StreamConnect(s.Key("SSH", 2, 0), SSH)]
    assert d.received(msg(MessageType.DATA, 2, "SSH", payload=b"x")) == [s.StreamDeliver(s.Key("SSH", 2, 0), b"x")]
    (reset,) = sent(d.local_closed(s.Key("SSH", 2, 0)))
    assert (reset.type, reset.connection_id) == (MessageType.STREAM_RESET, 0)


def test_v1_messages_carry_no_service_id_and_go_to_the_single_mapping():
    d = s.Destination({"": SSH}, version=1)
    assert d.received(msg(MessageType.STREAM_START, 1)) == [s.StreamConnect(s.Key("", 1), SSH)]
    assert d.received(msg(MessageType.DATA, 1, payload=b"v1")) == [s.StreamDeliver(s.Key("", 1), b"v1")]
    (data,) = sent(d.local_data(s.Key("", 1), b"back"))
    assert (data.service_id, data.connection_id, data.payload) == ("", 0, b"back")
    # a V2 destination hears a V1 source (no service id) on its one service
    d2 = s.Destination({"SSH": SSH}, version=2)
    assert d2.received(msg(MessageType.STREAM_START, 1)) == [s.StreamConnect(s.Key("", 1), SSH)]
    assert d2.received(msg(MessageType.DATA, 1, payload=b"a")) == [s.StreamDeliver(s.Key("", 1), b"a")]


def test_unknown_messages_are_ignored_and_reported_unless_ignorable():
    d = destination()
    assert d.received(msg(99, ignorable=True)) == []   # type: ignore[arg-type]
    (notice,) = d.received(msg(99))   # type: ignore[arg-type]
    assert isinstance(notice, s.StreamNotice) and notice.warning
    # a destination never receives STREAM_START's counterpart for sources... and a source never a start
    src = s.Source()
    (notice,) = src.received(msg(MessageType.STREAM_START, 1, "SSH", 1))
    assert isinstance(notice, s.StreamNotice)


def test_losing_the_websocket_resets_every_connection():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 1, "SSH", 1))
    d.received(msg(MessageType.CONNECTION_START, 1, "SSH", 2))
    closes = d.connection_lost()
    assert [c.key for c in closes] == [s.Key("SSH", 1, 1), s.Key("SSH", 1, 2)] and all(c.abort for c in closes)
    assert d.active == {} and d.available is None


# -- source ------------------------------------------------------------------------------------------


def test_v3_source_starts_a_stream_then_adds_connections_to_it():
    src = s.Source(3)
    key1, effects = src.accepted("SSH")
    (start,) = sent(effects)
    assert (start.type, start.stream_id, start.service_id, start.connection_id) == (MessageType.STREAM_START, 1, "SSH", 1)
    key2, effects = src.accepted("SSH")
    (start,) = sent(effects)
    assert (start.type, start.stream_id, start.connection_id) == (MessageType.CONNECTION_START, 1, 2)
    assert (key1, key2) == (s.Key("SSH", 1, 1), s.Key("SSH", 1, 2))
    assert src.received(msg(MessageType.DATA, 1, "SSH", 2, b"b")) == [s.StreamDeliver(key2, b"b")]
    # a V2 destination answers without connection ids: that is the stream's first connection
    assert src.received(msg(MessageType.DATA, 1, "SSH", 0, b"a")) == [s.StreamDeliver(key1, b"a")]
    # the destination could not connect one: it resets it
    assert src.received(msg(MessageType.CONNECTION_RESET, 1, "SSH", 2)) == [
        s.StreamClose(key2, "the other end reset the connection")]
    assert src.connections == {key1}


def test_v2_source_has_one_stream_per_service_and_a_new_connection_resets_the_old():
    src = s.Source(2)
    key1, _ = src.accepted("SSH")
    key2, effects = src.accepted("SSH")
    assert (key1, key2) == (s.Key("SSH", 1), s.Key("SSH", 2))
    assert others(effects) == [s.StreamClose(key1, "a new connection replaces it (one stream per service)", abort=True)]
    assert [(m.type, m.stream_id, m.connection_id) for m in sent(effects)] == [
        (MessageType.STREAM_RESET, 1, 0), (MessageType.STREAM_START, 2, 0)]
    assert src.received(msg(MessageType.DATA, 1, "SSH", payload=b"stale")) == []
    # another service has its own stream
    key3, effects = src.accepted("HTTP")
    assert key3 == s.Key("HTTP", 3) and [m.type for m in sent(effects)] == [MessageType.STREAM_START]
    # the destination resets the stream: the next connection starts a new one
    assert [c.key for c in src.received(msg(MessageType.STREAM_RESET, 2, "SSH"))] == [key2]
    key4, effects = src.accepted("SSH")
    assert key4 == s.Key("SSH", 4) and [m.type for m in sent(effects)] == [MessageType.STREAM_START]


def test_a_source_without_multiplexing_speaks_v2_on_a_v3_connection():
    src = s.Source(3, multiplex=False)
    key, effects = src.accepted("SSH")
    (start,) = sent(effects)
    assert key == s.Key("SSH", 1, 0) and start.connection_id == 0


def test_stream_ids_go_on_across_the_tables_of_one_session():
    ids = itertools.count(1)
    first = s.Source(3, stream_ids=ids)
    first.accepted("SSH")
    first.connection_lost()
    second = s.Source(3, stream_ids=ids)
    key, _ = second.accepted("SSH")
    assert key.stream_id == 2


def test_a_v1_source_sends_no_service_id():
    src = s.Source(1)
    key, effects = src.accepted("SSH")
    (start,) = sent(effects)
    assert key == s.Key("", 1) and (start.service_id, start.connection_id) == ("", 0)


# -- settings and addresses ------------------------------------------------------------------------


def test_destination_and_listener_mappings_are_written_as_localproxy_writes_them():
    assert localproxy_args.parse_destinations("22") == {"": ("127.0.0.1", 22)}
    assert localproxy_args.parse_destinations("SSH=22, HTTP=10.0.0.1:80,V6=[::1]:8080", "192.0.2.1") == {
        "SSH": ("192.0.2.1", 22), "HTTP": ("10.0.0.1", 80), "V6": ("::1", 8080)}
    assert localproxy_args.parse_listeners("5555") == {"": 5555}
    assert localproxy_args.parse_listeners("SSH1=5555,SSH2=0") == {"SSH1": 5555, "SSH2": 0}
    for bad in ("", "SSH=22,SSH=23", "22,HTTP=80", "SSH=x", "SSH=70000", "SSH=0"):
        with pytest.raises(ValueError):
            localproxy_args.parse_destinations(bad)
    for bad in ("", "5555,SSH=6666", "SSH=1,SSH=2", "SSH=-1"):
        with pytest.raises(ValueError):
            localproxy_args.parse_listeners(bad)


def test_addresses_subprotocols_and_client_tokens():
    assert aws_session.tunnel_url("http://127.0.0.1:8080/", "source") == "ws://127.0.0.1:8080/tunnel?local-proxy-mode=source"
    assert aws_session.tunnel_url("https://relay.example.com", "destination") == \
        "wss://relay.example.com/tunnel?local-proxy-mode=destination"
    assert aws_session.tunnel_url("relay.example.com:443/tunnel", "source") == "wss://relay.example.com:443/tunnel?local-proxy-mode=source"
    assert aws_session.aws_endpoint("eu-west-1") == "wss://data.tunneling.iot.eu-west-1.amazonaws.com"
    assert aws_messages.subprotocols() == ["aws.iot.securetunneling-3.0", "aws.iot.securetunneling-2.0",
                                "aws.iot.securetunneling-1.0"]
    assert aws_messages.subprotocols(2) == ["aws.iot.securetunneling-2.0", "aws.iot.securetunneling-1.0"]
    token = aws_messages.new_client_token()
    assert aws_messages.valid_client_token(token) and token != aws_messages.new_client_token()
    assert not aws_messages.valid_client_token("short") and not aws_messages.valid_client_token("x" * 31 + "!")


def test_listeners_are_matched_to_the_services_the_relay_names():
    from relay.client.aws_tunnel import resolve_listeners

    assert resolve_listeners({"": 5555}, ("SSH",)) == ({"SSH": 5555}, [])
    assert resolve_listeners({"SSH": 5555}, ("SSH", "HTTP")) == (
        {"SSH": 5555}, ["no local port for the tunnel's service(s) HTTP"])
    assert resolve_listeners({"": 5555}, None) == ({"": 5555}, [])
    with pytest.raises(ConfigError, match="name the one"):
        resolve_listeners({"": 5555}, ("SSH", "HTTP"))
    with pytest.raises(ConfigError, match="not services of this tunnel"):
        resolve_listeners({"VNC": 5900}, ("SSH",))


# -- the module's own pieces (relay/ends/aws_streams.py) ------------------------------------------


@pytest.mark.parametrize("mapping, service_id, expected", [
    ({"SSH": 1, "HTTP": 2}, "HTTP", "HTTP"),
    ({"SSH": 1, "HTTP": 2}, "VNC", None),
    ({"SSH": 1, "HTTP": 2}, "", None),        # a V1 peer names no service: which one is unknown
    ({"": 1}, "ANY", ""),                     # a bare endpoint serves the tunnel's one service
    ({"SSH": 1}, "", "SSH"),                  # a V1 peer: the only entry
    ({"SSH": 1}, "HTTP", None),
])
def test_match_service(mapping, service_id, expected):
    assert s.match_service(mapping, service_id) == expected


def test_stream_names_for_people():
    assert s.stream_name(s.Key("SSH", 7, 2)) == "SSH/7/2"
    assert s.stream_name(s.Key("SSH", 7)) == "SSH/7"
    assert s.stream_name(s.Key("", 3)) == "-/3"


def test_keys_order_by_service_stream_and_connection():
    assert sorted([s.Key("b", 1), s.Key("a", 2, 1), s.Key("a", 1, 2), s.Key("a", 1, 1)]) == [
        s.Key("a", 1, 1), s.Key("a", 1, 2), s.Key("a", 2, 1), s.Key("b", 1)]


def test_the_effect_names_are_the_modules_own():
    """Send x5 and Link x3 in the code base: the effects here say they are about streams."""
    assert {t.__name__ for t in s.StreamEffect.__args__} == {
        "StreamSend", "StreamConnect", "StreamDeliver", "StreamClose", "StreamNotice"}


def test_a_start_with_stream_id_0_is_ignored_with_a_warning():
    d = destination()
    (notice,) = d.received(msg(MessageType.STREAM_START, 0, "SSH", 1))
    assert isinstance(notice, s.StreamNotice) and notice.warning and d.active == {}


def test_a_source_is_never_asked_to_start_a_stream():
    src = s.Source(3)
    (notice,) = src.received(msg(MessageType.STREAM_START, 5, "SSH", 1))
    assert isinstance(notice, s.StreamNotice) and "source does not receive it" in notice.text
    assert src.connections == set()


def test_empty_data_and_data_for_an_unknown_connection_do_nothing():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 4, "SSH", 1))
    assert d.received(msg(MessageType.DATA, 4, "SSH", 1, b"")) == []
    assert d.received(msg(MessageType.DATA, 4, "SSH", 9, b"x")) == []     # never started
    assert d.received(msg(MessageType.DATA, 5, "SSH", 1, b"x")) == []     # not the active stream
    assert d.local_data(s.Key("SSH", 4, 9), b"x") == []                   # nor from our side


def test_service_ids_without_a_local_address_are_told_once_they_come():
    d = s.Destination({"SSH": SSH})
    (notice,) = d.received(msg(MessageType.SERVICE_IDS, available=("SSH", "RDP")))
    assert isinstance(notice, s.StreamNotice) and "RDP" in notice.text and d.available == ("SSH", "RDP")


def test_a_closed_connection_is_closed_once():
    d = destination()
    d.received(msg(MessageType.STREAM_START, 4, "SSH", 1))
    assert [m.type for m in sent(d.local_closed(s.Key("SSH", 4, 1)))] == [MessageType.CONNECTION_RESET]
    assert d.local_closed(s.Key("SSH", 4, 1)) == []
