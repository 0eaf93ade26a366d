"""The localproxy-like end's rules on their own (tests/aws/localproxy_like.py): that it does
what localproxy does with the messages the relay used to send and sends now, so that the
scenario tests (test_localproxy_like.py) fail for localproxy's reasons."""

from __future__ import annotations

import pytest

from tests.aws.localproxy_like import STOP, TRANSFER, WAIT_STREAM, Crash, Rules
from tests.aws.spec_client import (CONNECTION_START, DATA, SERVICE_IDS, SESSION_RESET, STREAM_RESET, STREAM_START, V1,
                                   V2, V3, Msg)


def ready(mode: str, services=("SSH", "HTTP"), protocol: str = V3) -> Rules:
    rules = Rules(mode, services, protocol=protocol)
    assert rules.receive(Msg(SERVICE_IDS, available_service_ids=services))
    return rules


def start(rules: Rules, stream: int = 1, service: str = "SSH", conn: int = 1) -> None:
    assert rules.receive(Msg(STREAM_START, stream_id=stream, service_id=service, connection_id=conn))


def test_3x_waits_for_service_ids_and_stops_on_anything_else():
    rules = Rules("destination", ("SSH",), protocol=V1)
    assert not rules.ready
    assert rules.receive(Msg(SESSION_RESET)) is False
    assert rules.log == ["Expect:Message_Type_SERVICE_IDS. Ignore message type: 4"]
    with pytest.raises(Crash, match="stream start before receiving service ids"):
        Rules("destination", ("SSH",)).receive(Msg(STREAM_START, stream_id=1, service_id="SSH"))


@pytest.mark.parametrize("protocol", [V2, V3])
def test_a_bare_session_reset_stops_a_multi_service_destination_in_every_state(protocol):
    idle = ready("destination", protocol=protocol)
    assert idle.receive(Msg(SESSION_RESET)) is False
    busy = ready("destination", protocol=protocol)
    start(busy)
    assert busy.receive(Msg(SESSION_RESET)) is False and busy.tcp == {("SSH", 1)}   # not acted on


def test_in_v1_message_format_a_bare_session_reset_is_the_one_service_s():
    rules = ready("destination", services=("SSH",))
    start(rules)
    assert rules.receive(Msg(SESSION_RESET)) and not rules.tcp
    assert rules.handlers[("SSH", 1)] == WAIT_STREAM


def test_stream_resets_are_routed_by_service_and_dropped_when_stale():
    rules = ready("destination")
    start(rules, 3)
    start(rules, 5, "HTTP")
    assert rules.receive(Msg(STREAM_RESET, stream_id=2, service_id="SSH", connection_id=1))   # stale
    assert rules.tcp == {("SSH", 1), ("HTTP", 1)}
    assert rules.receive(Msg(STREAM_RESET, stream_id=3, service_id="SSH", connection_id=1))
    assert rules.tcp == {("HTTP", 1)} and rules.handlers[("SSH", 1)] == WAIT_STREAM


def test_a_source_whose_connection_was_reset_stops_reading_until_its_next_connection():
    rules = ready("source")
    key = rules.accept("SSH")
    assert rules.handlers[key] == TRANSFER
    assert rules.receive(Msg(STREAM_RESET, stream_id=1, service_id="SSH", connection_id=1)) and key not in rules.tcp
    assert rules.receive(Msg(STREAM_RESET, stream_id=1, service_id="SSH", connection_id=1)) is False   # STOP
    assert rules.handlers[key] == STOP
    again = rules.accept("SSH")   # a new stream: reading again, the old stream's messages stale
    assert rules.reading and rules.stream_of["SSH"] == 2
    assert rules.receive(Msg(STREAM_RESET, stream_id=1, service_id="SSH", connection_id=1)) and again in rules.tcp


def test_v3_connections_of_a_stream():
    rules = ready("destination")
    start(rules, 7)
    assert rules.receive(Msg(CONNECTION_START, stream_id=7, service_id="SSH", connection_id=2))
    assert rules.tcp == {("SSH", 1), ("SSH", 2)}
    assert rules.receive(Msg(DATA, stream_id=7, service_id="SSH", connection_id=2, payload=b"x"))
    assert rules.received == {("SSH", 2): bytearray(b"x")}
    assert rules.receive(Msg(STREAM_RESET, stream_id=7, service_id="SSH", connection_id=2)) and not rules.tcp


def test_1x_throws_on_a_type_it_does_not_know_unless_ignorable():
    with pytest.raises(Crash, match="Unrecognized message type"):
        Rules("destination", ("SSH",), generation=1, protocol=V1).receive(
            Msg(SERVICE_IDS, available_service_ids=("SSH",)))
    rules = Rules("destination", ("SSH",), generation=1, protocol=V1)
    assert rules.receive(Msg(SERVICE_IDS, ignorable=True, available_service_ids=("SSH",)))
    assert rules.receive(Msg(STREAM_START, stream_id=1)) and rules.tcp == {("SSH", 1)}
    with pytest.raises(Crash):
        rules.receive(Msg(9))
    assert Rules("source", ("SSH",), generation=1, protocol=V1).reading is False   # until its first stream
