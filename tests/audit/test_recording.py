"""Session recording (sans-I/O): asciicast v2 out of tunnel messages, what is never kept,
the cap, and playback with an injected clock."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.recording import Recording, SessionRecorder, TunnelTap, parse_cast, play

T0 = 1_750_000_000.0
TUNNEL = "0b9c6f0e-0000-4000-8000-000000000001"


def msg(operation: str, data: object = None, *, service: str = "ssh", request_id: str = "r1") -> bytes:
    envelope: dict = {"operation_type": operation, "tunnel_service_type": service, "request_id": request_id}
    if data is not None:
        envelope["data"] = data
    return orjson.dumps(envelope)


def recorder(cap: int = 1 << 20, **kw) -> SessionRecorder:  # type: ignore[no-untyped-def]
    return SessionRecorder("sess-1", "p1", TUNNEL, "dev-1", T0, cap, **kw)


# A scripted session: (seconds after the start, side, message)
OUTPUT = ["Linux dev-1 6.1.0\r\n", "pi@dev-1:~$ ", "l", "s", "\r\n", "a.txt  b\u00e9.txt\r\n",
          "\x1b[01;32mpi@dev-1\x1b[00m:~$ ", "logout\r\n"]
SCRIPT = [
    (0.0, "source", msg("connect", {"username": "pi", "password": "hunter2-secret"})),
    (0.4, "device", msg("connect_response", {"status_code": "200", "status_msg": "logged in"})),
    (0.5, "device", msg("command_response", OUTPUT[0])),
    (0.6, "device", msg("command_response", OUTPUT[1])),
    (1.5, "source", msg("command", "l")),
    (1.51, "device", msg("command_response", OUTPUT[2])),
    (1.7, "source", msg("command", "s")),
    (1.71, "device", msg("command_response", OUTPUT[3])),
    (2.0, "source", msg("command", "\r")),
    (2.01, "device", msg("command_response", OUTPUT[4])),
    (2.02, "device", msg("command_response", OUTPUT[5])),
    (2.03, "device", msg("command_response", OUTPUT[6])),
    (9.0, "source", msg("ping")),
    (9.5, "source", msg("command", "\x04")),
    (9.6, "device", msg("command_response", OUTPUT[7])),
    (9.7, "device", msg("disconnect", {"status_code": "200", "status_msg": "the SSH session ended (exit status 0)"})),
]


def run(script, rec: SessionRecorder | None = None) -> Recording:  # type: ignore[no-untyped-def]
    rec = rec or recorder()
    for at, side, payload in script:
        rec.observe(side, payload, T0 + at)
    return rec.finish(T0 + 10)


def test_a_scripted_session_replays_to_exactly_the_output_sent():
    recording = run(SCRIPT)
    assert recording.size == len(recording.data) and not recording.truncated
    assert (recording.session_id, recording.project_id, recording.tunnel_id, recording.device_id) == \
        ("sess-1", "p1", TUNNEL, "dev-1")
    assert recording.username == "pi" and recording.started == T0 and recording.ended == T0 + 10
    header, events = parse_cast(recording.data)
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["timestamp"] == int(T0) and header["title"] == "pi@dev-1"
    written: list[str] = []
    slept: list[float] = []
    play(events, write=written.append, sleep=slept.append)
    assert "".join(written) == "".join(OUTPUT)
    assert sum(slept) == pytest.approx(9.6)        # the time of the last output
    assert [text for _, code, text in events if code == "i"] == ["l", "s", "\r", "\x04"]
    markers = [text for _, code, text in events if code == "m"]
    assert markers == ["login as pi", "login succeeded", "the device ended the session (200)"]
    times = [at for at, _, _ in events]
    assert times == sorted(times) and times[0] == 0.0
    assert [e for e in events if e[1] == "i"][0][0] == pytest.approx(1.5)
    # every line is JSON; the file is UTF-8 text
    recording.data.decode("utf-8")
    assert all(orjson.loads(line) for line in recording.data.splitlines())


def test_play_speed_and_idle_cap():
    events = [(0.5, "o", "a"), (1.0, "m", "mark"), (11.0, "o", "b"), (11.0, "i", "typed"), (12.0, "o", "c")]
    written, slept, marks = [], [], []
    play(events, write=written.append, sleep=slept.append, speed=2.0, max_idle=3.0, marker=marks.append)
    assert written == ["a", "b", "c"] and marks == ["mark"]
    assert slept == [0.25, 0.25, 1.5, 0.5]         # 0.5, 0.5, 10 capped to 3, 1; halved
    slept.clear()
    play(events, write=lambda _: None, sleep=slept.append)
    assert slept == [0.5, 10.5, 1.0]               # markers skipped without a marker callback
    with pytest.raises(ValueError):
        play(events, write=print, sleep=print, speed=0)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(password=st.text(min_size=1, max_size=64), extra=st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3))
def test_the_password_of_connect_is_never_recorded(password, extra):
    """Whatever the password (and any other field of connect's data), the recording is the
    same byte for byte as with another password: nothing of it can be in there."""
    def session(secret: str, more: dict) -> bytes:
        data = {**more, "username": "pi", "password": secret}
        script = [(0.0, "source", msg("connect", data)), *SCRIPT[1:]]
        return run(script).data

    baseline = session("x", {})
    assert session(password, extra) == baseline
    assume(len(password) >= 4 and password not in baseline.decode())
    encoded = orjson.dumps(password)[1:-1]
    assert password.encode() not in baseline and encoded not in baseline


def test_connect_without_a_username_or_with_odd_data():
    for data in (None, "text", {"password": "pw-123456"}, {"username": 7, "password": "pw-123456"}, [1, 2]):
        rec = recorder()
        rec.observe("source", msg("connect", data), T0)
        recording = rec.finish(T0 + 1)
        assert recording.username is None
        assert b"pw-123456" not in recording.data
        assert parse_cast(recording.data)[1] == [(0.0, "m", "login")]
    rec = recorder()
    rec.observe("source", msg("connect", {"username": "u" * 500}), T0)
    assert rec.username == "u" * 64


def test_login_failure_is_noted():
    rec = recorder()
    rec.observe("source", msg("connect", {"username": "root", "password": "nope"}), T0)
    rec.observe("device", msg("connect_response", {"status_code": "401", "status_msg": "refused"}), T0 + 1)
    assert rec.login_ok is False
    assert parse_cast(rec.finish(T0 + 2).data)[1][-1] == (1.0, "m", "login failed (401)")


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[1,2]", b'"text"', b"\xff\xfe", b'{"operation_type": "command"}',
    msg("command", "ls\r", service="tcp"), msg("command_response", "out", service="tcp"),
    msg("command", {"not": "text"}), msg("command_response", 42), msg("connect_tunnel"), msg("pong"),
])
def test_malformed_and_other_messages_are_ignored(payload):
    rec = recorder()
    for side in ("source", "device", "nobody"):
        rec.observe(side, payload, T0 + 1)
    rec.observe("source", bytearray(payload), T0 + 1)
    assert rec.finish(T0 + 2).data.count(b"\n") == 1     # the header only


def test_messages_from_the_wrong_side_are_ignored():
    rec = recorder()
    rec.observe("device", msg("command", "typed by nobody"), T0)
    rec.observe("source", msg("command_response", "output from nobody"), T0)
    rec.observe("device", msg("connect", {"username": "x", "password": "y"}), T0)
    assert parse_cast(rec.finish(T0).data)[1] == []


def test_nothing_after_disconnect():
    rec = recorder()
    rec.observe("source", msg("disconnect", {"status_code": "200"}), T0 + 1)
    assert rec.ended
    rec.observe("device", msg("command_response", "late"), T0 + 2)
    assert parse_cast(rec.finish(T0 + 3).data)[1] == [(1.0, "m", "the source ended the session (200)")]


def test_the_cap():
    rec = recorder(cap=4096)
    chunk = "y" * 100 + "\r\n"
    for n in range(200):
        rec.observe("device", msg("command_response", chunk), T0 + n)
    recording = rec.finish(T0 + 300)
    assert recording.truncated and len(recording.data) <= 4096 and recording.size == len(recording.data)
    header, events = parse_cast(recording.data)
    outputs = [e for e in events if e[1] == "o"]
    assert 20 < len(outputs) < 40 and all(text == chunk for _, _, text in outputs)
    last = events[-1]
    assert last[1] == "m" and "truncated" in last[2] and "4096" in last[2]
    assert last[0] == len(outputs)      # the moment the cap was reached
    # what came after the cap is not there, also not input
    rec.observe("source", msg("command", "after"), T0 + 301)
    assert b"after" not in rec.finish(T0 + 302).data


def test_under_the_cap_nothing_is_truncated():
    rec = recorder(cap=1 << 20)
    for n in range(100):
        rec.observe("device", msg("command_response", "z" * 1000), T0 + n)
    recording = rec.finish(T0 + 100)
    assert not recording.truncated and len(parse_cast(recording.data)[1]) == 100


def test_input_at_a_password_prompt_is_hidden():
    rec = recorder()
    steps = [
        ("device", msg("command_response", "pi@dev-1:~$ ")),
        ("source", msg("command", "sudo ls\r")),
        ("device", msg("command_response", "sudo ls\r\n[sudo] password for pi: ")),
        ("source", msg("command", "s3")),
        ("source", msg("command", "cr3t")),
        ("source", msg("command", "!\rls\r")),      # Enter, then type-ahead
        ("device", msg("command_response", "\r\nfile\r\n\x1b[1mPassword:\x1b[0m ")),
        ("source", msg("command", "another\r")),
        ("device", msg("command_response", "\r\npi@dev-1:~$ ")),
        ("source", msg("command", "echo password: ok\r")),
    ]
    for n, (side, payload) in enumerate(steps):
        rec.observe(side, payload, T0 + n)
    data = rec.finish(T0 + 20).data
    assert b"s3" not in data and b"cr3t" not in data and b"!" not in data and b"another" not in data
    events = parse_cast(data)[1]
    assert [t for _, c, t in events if c == "i"] == ["sudo ls\r", "\rls\r", "\r", "echo password: ok\r"]
    assert [t for _, c, t in events if c == "m"] == ["input hidden at a password prompt"] * 2


def test_a_tap_records_each_session_of_a_tunnel():
    ids = iter(["first", "second", "third"])
    tap = TunnelTap("p1", TUNNEL, "dev-1", 1 << 20, width=128, height=30, new_id=lambda: next(ids))
    assert tap.observe("device", msg("command_response", "before any login"), T0) is None
    assert tap.observe("source", b"garbage", T0) is None
    finished = [r for at, side, payload in SCRIPT if (r := tap.observe(side, payload, T0 + at))]
    assert [r.session_id for r in finished] == ["first"] and tap.current is None
    assert parse_cast(finished[0].data)[0]["width"] == 128
    # a login that fails and carries nothing is not kept; a new connect ends the session before
    tap.observe("source", msg("connect", {"username": "root", "password": "x"}), T0 + 20)
    tap.observe("device", msg("connect_response", {"status_code": "401"}), T0 + 21)
    tap.observe("source", msg("connect", {"username": "pi", "password": "x"}), T0 + 22)
    assert tap.current is not None and tap.current.session_id == "third"
    tap.observe("device", msg("connect_response", {"status_code": "200"}), T0 + 23)
    tap.observe("device", msg("command_response", "hello"), T0 + 24)
    last = tap.end(T0 + 30)            # the connection went away
    assert last is not None and last.session_id == "third" and last.started == T0 + 22 and last.ended == T0 + 30
    assert tap.end(T0 + 31) is None
    # a session replaced by a new connect is returned by that connect
    tap.new_id = lambda: "fourth"
    tap.observe("source", msg("connect", {"username": "pi", "password": "x"}), T0 + 40)
    tap.observe("device", msg("connect_response", {"status_code": "200"}), T0 + 41)
    tap.new_id = lambda: "fifth"
    replaced = tap.observe("source", msg("connect", {"username": "pi", "password": "x"}), T0 + 42)
    assert replaced is not None and replaced.session_id == "fourth"


@pytest.mark.parametrize("data, why", [
    (b"", "empty"), (b"not json\n", "header"), (b'{"version": 1}\n', "version 2"), (b"[2]\n", "version 2"),
    (b'{"version": 2}\n[1, "o"]\n', "line 2"), (b'{"version": 2}\n[true, "o", "x"]\n', "line 2"),
    (b'{"version": 2}\n\n[1, "o", "x"]\nnope\n', "line 3"),
])
def test_parse_cast_refuses_what_is_not_asciicast(data, why):
    with pytest.raises(ValueError, match=why):
        parse_cast(data)


def test_parse_cast_takes_text_and_bytes():
    assert parse_cast('{"version": 2, "width": 1}\n[1, "o", "x"]') == ({"version": 2, "width": 1}, [(1.0, "o", "x")])


