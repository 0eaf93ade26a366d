"""The agent's protocol logic without sockets: what it answers, how it splits output, when
it reconnects."""

from __future__ import annotations

import random

import orjson
import pytest

from relay.agent.session import CloseShell, DeviceSession, OpenShell, ToSource, WriteShell, split_output
from relay.closes import Backoff, Next, after_close, after_refusal


def msg(op: str, request_id: str = "r1", data=None) -> bytes:  # type: ignore[no-untyped-def]
    body = {"operation_type": op, "tunnel_service_type": "ssh", "request_id": request_id}
    if data is not None:
        body["data"] = data
    return orjson.dumps(body)


def sent(effects) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(e.payload) for e in effects if isinstance(e, ToSource)]


def logged_in(session: DeviceSession, request_id: str = "c1") -> None:
    session.received(msg("connect", request_id, {"username": "u", "password": "p"}))
    session.login_succeeded(request_id, "ok")


def test_connect_opens_a_shell_and_keeps_the_password_out_of_reprs():
    [effect] = DeviceSession().received(msg("connect", "c1", {"username": "alice", "password": "s3cret"}))
    assert effect == OpenShell("c1", "alice", "s3cret")
    assert "s3cret" not in repr(effect)


@pytest.mark.parametrize("data", [None, "x", {"username": ""}, {"username": "a"}, {"username": "a", "password": 1}])
def test_a_bad_connect_is_answered_400(data):
    [answer] = sent(DeviceSession().received(msg("connect", "c1", data)))
    assert answer["operation_type"] == "connect_response" and answer["request_id"] == "c1"
    assert answer["data"]["status_code"] == "400"


def test_login_results_answer_the_connect():
    session = DeviceSession()
    session.received(msg("connect", "c1", {"username": "u", "password": "p"}))
    [ok] = sent(session.login_succeeded("c1", "logged in"))
    assert ok == {"operation_type": "connect_response", "tunnel_service_type": "ssh", "request_id": "c1",
                  "data": {"status_code": "200", "status_msg": "logged in"}}
    [bad] = sent(DeviceSession().login_failed("c2", "401", "refused"))
    assert bad["request_id"] == "c2" and bad["data"] == {"status_code": "401", "status_msg": "refused"}


def test_command_without_a_session():
    [answer] = sent(DeviceSession().received(msg("command", "k1", "ls\n")))
    assert answer["operation_type"] == "disconnect" and answer["request_id"] == "k1"
    assert answer["data"]["status_code"] == "400"


def test_command_is_written_and_its_output_carries_its_id():
    session = DeviceSession()
    logged_in(session)
    assert sent(session.output(b"banner\r\n$ "))[0]["request_id"] == "c1"   # before any command: the connect's
    assert session.received(msg("command", "k1", "ls -l\n")) == [WriteShell(b"ls -l\n")]
    [out] = sent(session.output(b"total 0\r\n"))
    assert out == {"operation_type": "command_response", "tunnel_service_type": "ssh", "request_id": "k1",
                   "data": "total 0\r\n"}


def test_utf8_split_across_reads_is_not_mangled():
    session = DeviceSession()
    logged_in(session)
    data = "héllo ✓".encode()
    texts = [m["data"] for part in (data[:2], data[2:9], data[9:]) for m in sent(session.output(part))]
    assert "".join(texts) == "héllo ✓"


def test_disconnect_ends_the_session_quietly():
    session = DeviceSession()
    logged_in(session)
    [effect] = session.received(msg("disconnect", "d1", {"status_code": "499", "status_msg": "the source disconnected"}))
    assert isinstance(effect, CloseShell) and "499" in effect.reason
    assert session.shell_ended(0) == []   # we ended it: the source is not told again
    assert session.received(msg("disconnect", "d2")) == []   # nothing to end


def test_a_shell_that_exits_is_reported():
    session = DeviceSession()
    logged_in(session)
    session.received(msg("command", "k1", "exit\n"))
    effects = session.shell_ended(0)
    [bye] = sent(effects)
    assert bye["operation_type"] == "disconnect" and bye["request_id"] == "k1"
    assert bye["data"]["status_code"] == "200" and "exit status 0" in bye["data"]["status_msg"]
    assert not session.shell_open


def test_a_new_connect_replaces_the_session():
    session = DeviceSession()
    logged_in(session)
    effects = session.received(msg("connect", "c2", {"username": "u", "password": "p"}))
    assert isinstance(effects[0], CloseShell) and isinstance(effects[1], OpenShell)


@pytest.mark.parametrize("op", ["connect_tunnel", "ping", "pong", "command_response", "whatever"])
def test_messages_not_for_a_device_are_ignored(op):
    assert DeviceSession().received(msg(op)) == []


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'"x"', b"{}"])
def test_garbage_is_ignored(raw):
    assert DeviceSession().received(raw) == []


@pytest.mark.parametrize("limit", [200, 1000, 10240])
def test_split_output_respects_the_limit_and_the_order(limit):
    rng = random.Random(limit)
    alphabet = 'ab"\\\n\r\t\x00\x1b\x7fé✓😀 '
    text = "".join(rng.choice(alphabet) for _ in range(30000))
    messages = split_output(text, "req-1", limit)
    assert all(len(m) <= limit for m in messages)
    assert "".join(orjson.loads(m)["data"] for m in messages) == text
    # and they are not needlessly small
    assert len(messages) <= len(orjson.dumps(text)) // (limit - 120) + 2


def test_split_output_worst_case_escaping():
    text = "\x01" * 5000   # 6 bytes each once escaped
    messages = split_output(text, "r", 10240)
    assert all(len(m) <= 10240 for m in messages)
    assert "".join(orjson.loads(m)["data"] for m in messages) == text


def test_a_limit_too_small_is_refused():
    with pytest.raises(ValueError):
        split_output("x", "r" * 100, 150)


@pytest.mark.parametrize("code, expected", [
    (None, Next.RECONNECT), (1006, Next.RECONNECT), (1001, Next.RECONNECT), (4008, Next.RECONNECT),
    (1000, Next.STOP), (4000, Next.STOP), (1002, Next.STOP), (1009, Next.STOP), (4403, Next.STOP),
    (4001, Next.WAIT_FOR_TOKEN),
])
def test_after_close(code, expected):
    assert after_close(code).next is expected


@pytest.mark.parametrize("status, expected", [
    (401, Next.WAIT_FOR_TOKEN), (404, Next.STOP), (410, Next.STOP), (400, Next.STOP),
    (503, Next.RECONNECT), (502, Next.RECONNECT),
])
def test_after_refusal(status, expected):
    assert after_refusal(status).next is expected


def test_backoff_grows_to_a_ceiling_and_resets():
    backoff = Backoff(1, 8, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    assert 0.8 <= delays[0] <= 1.2 and all(d <= 8 * 1.2 for d in delays)
    assert delays[3] > delays[0] * 4
    backoff.reset()
    assert backoff.next_delay() <= 1.2
