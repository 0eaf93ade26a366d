"""The source end's rules without sockets: SourceSession and ExecFraming."""

from __future__ import annotations

import itertools

import orjson
import pytest

from relay.client.session import Ended, ExecFraming, LoggedIn, Notice, Output, Phase, ToDevice, SourceSession, message
from relay.closes import describe_close


def ids():  # type: ignore[no-untyped-def]
    counter = itertools.count(1)
    return lambda: f"r{next(counter)}"


def sent(events) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(e.payload) for e in events if isinstance(e, ToDevice)]


def only(events, kind):  # type: ignore[no-untyped-def]
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def status(code: str, text: str = "") -> dict:
    return {"status_code": code, "status_msg": text}


def logged_in(**kwargs) -> SourceSession:  # type: ignore[no-untyped-def]
    s = SourceSession("alice", "s3cret", new_id=ids(), **kwargs)
    s.start()
    (connect,) = sent(s.received(message("connect_tunnel", "t1")))
    assert isinstance(only(s.received(message("connect_response", connect["request_id"], status("200", "ok"))),
                           LoggedIn), LoggedIn)
    return s


def test_waits_for_the_device_then_logs_in():
    s = SourceSession("alice", "s3cret", new_id=ids())
    assert only(s.start(), Notice).text == "waiting for the device..."
    assert s.phase is Phase.WAITING
    assert s.typed("ls\n") == []   # nothing goes out before there is a shell
    events = s.received(message("connect_tunnel", "relay-1"))
    assert "logging in as alice" in only(events, Notice).text
    (connect,) = sent(events)
    assert connect == {"operation_type": "connect", "tunnel_service_type": "ssh", "request_id": "r1",
                       "data": {"username": "alice", "password": "s3cret"}}
    assert s.phase is Phase.LOGGING_IN
    assert s.received(message("connect_tunnel", "relay-2")) == []   # said again: nothing new
    assert s.received(message("connect_response", "other", status("200"))) == []   # not our request
    assert only(s.received(message("connect_response", "r1", status("200", "logged in to x"))), LoggedIn).text == \
        "logged in to x"
    assert s.phase is Phase.OPEN


def test_a_refused_login_ends_with_the_device_reason():
    s = SourceSession("alice", "wrong", new_id=ids())
    s.received(message("connect_tunnel", "t"))
    end = only(s.received(message("connect_response", "r1", status("401", "SSH login refused"))), Ended)
    assert end.error and end.reason == "login failed (401): SSH login refused"
    assert s.phase is Phase.ENDED
    assert s.received(message("command_response", "r1", "late")) == []


def test_typed_text_goes_out_as_commands_with_fresh_ids_never_reused():
    s = SourceSession("alice", "pw")   # the real id source: uuid4
    (connect,) = sent(s.received(message("connect_tunnel", "t")))
    s.received(message("connect_response", connect["request_id"], status("200")))
    seen = {connect["request_id"]}
    for key in ["l", "s", "\r", "\x03", "é", "ls -la\n"] * 200:
        (cmd,) = sent(s.typed(key))
        assert cmd["operation_type"] == "command" and cmd["data"] == key
        assert cmd["request_id"] not in seen
        seen.add(cmd["request_id"])


@pytest.mark.parametrize("text", ["x" * 50_000, "\x1b[A" * 9_000, '"\\' * 12_000, "€😀" * 8_000])
def test_big_input_is_split_into_messages_under_the_limit(text):
    s = logged_in(max_message_size=10240)
    messages = [e.payload for e in s.typed(text)]
    assert len(messages) > 1
    assert all(len(m.encode()) <= 10240 for m in messages)
    assert "".join(orjson.loads(m)["data"] for m in messages) == text


def test_utf8_split_between_reads_of_a_raw_terminal():
    s = logged_in()
    word = "héllo€".encode()
    out = sent(s.typed(word[:2])) + sent(s.typed(word[2:6])) + sent(s.typed(word[6:]))
    assert "".join(m["data"] for m in out) == "héllo€"


def test_output_is_passed_on():
    s = logged_in()
    assert only(s.received(message("command_response", "r2", "hello\r\n")), Output).text == "hello\r\n"
    assert s.received(message("command_response", "r2", None)) == []
    assert s.received(b"not json") == [] and s.received(b"[1]") == [] and s.received(message("pong", "p")) == []


def test_the_device_going_away_waits_and_logs_in_again():
    s = logged_in()
    notice = only(s.received(message("disconnect", "x", status("499", "the device disconnected"))), Notice)
    assert "waiting for it to come back" in notice.text
    assert s.phase is Phase.WAITING and s.typed("ls\n") == []
    (again,) = sent(s.received(message("connect_tunnel", "t2")))
    assert again["operation_type"] == "connect" and again["request_id"] != "r1"
    s.received(message("connect_response", again["request_id"], status("200")))
    assert s.phase is Phase.OPEN


def test_exec_does_not_log_in_again_after_the_device_went_away():
    s = logged_in(relogin=False)
    s.received(message("disconnect", "x", status("499", "the device disconnected")))
    end = only(s.received(message("connect_tunnel", "t2")), Ended)
    assert end.error and "lost" in end.reason


def test_the_shell_ending_gives_its_exit_status():
    s = logged_in()
    end = only(s.received(message("disconnect", "r2", status("200", "the SSH session ended (exit status 3)"))), Ended)
    assert end == Ended("the SSH session ended (exit status 3)", 3, error=False)


@pytest.mark.parametrize("code, text, words", [
    ("410", "the tunnel was closed", "the relay ended the session (410): the tunnel was closed"),
    ("408", "the tunnel expired", "(408): the tunnel expired"),
    ("401", "the access token was rotated", "(401)"),
    ("409", "replaced by a newer connection", "(409)"),
    ("503", "the relay is shutting down", "(503)"),
    ("400", "no SSH session: send connect first", "the device ended the session (400)"),
])
def test_disconnects_that_end_the_session(code, text, words):
    s = logged_in()
    end = only(s.received(message("disconnect", "d", status(code, text))), Ended)
    assert end.error and words in end.reason
    assert s.connection_closed(1000) == []   # the first reason is the one told


@pytest.mark.parametrize("code, words", [(1000, "closed or expired"), (4001, "rotated"), (4000, "replaced"),
                                         (1001, "shutting down"), (None, "ended"), (4409, "request_id")])
def test_close_codes_are_explained(code, words):
    s = logged_in()
    end = only(s.connection_closed(code), Ended)
    assert end.error and words in end.reason and end.reason == describe_close(code)


def test_leaving_ends_the_remote_session_once():
    s = logged_in()
    events = s.close()
    (bye,) = sent(events)
    assert bye["operation_type"] == "disconnect" and bye["data"]["status_code"] == "200"
    assert only(events, Ended).error is False
    assert s.close() == []
    waiting = SourceSession("a", "b")
    assert sent(waiting.close()) == []   # no session on the device: nothing to end


def test_the_password_is_not_in_repr():
    s = SourceSession("alice", "s3cret-pw")
    assert "s3cret-pw" not in repr(s) and "alice" in repr(s)


# -- ExecFraming -----------------------------------------------------------------------------


def terminal_stream(framing: ExecFraming, output: str, status: int = 0) -> str:
    """What the device's terminal shows: banner, prompt, the echo of the typed line, the
    begin marker, the output (CRLF), the end marker, as a shell prints them."""
    n = framing.nonce
    echo = framing.line.replace("\n", "\r\n")
    return (f"Welcome\r\n$ {echo}__RELAY_{n}_BEGIN__\r\n{output}__RELAY_{n}_END:{status}__\r\n")


def test_exec_cuts_out_the_command_output_and_status():
    f = ExecFraming("uname -a", nonce="abc123")
    assert "(eval 'uname -a');" in f.line and f.line.endswith("; exit\n")
    out = f.feed(terminal_stream(f, "Linux box 6.1\r\nsecond line\r\n", 0))
    assert out == "Linux box 6.1\nsecond line\n"
    assert f.done and f.exit_status == 0
    assert f.feed("$ more prompt") == ""


@pytest.mark.parametrize("size", [1, 2, 3, 7, 19])
def test_exec_markers_split_across_messages(size):
    f = ExecFraming("false", nonce="n0nce")
    stream = terminal_stream(f, "a\r\nb", 1)
    out = "".join(f.feed(stream[i:i + size]) for i in range(0, len(stream), size))
    assert out == "a\nb" and f.exit_status == 1


def test_the_echo_of_the_typed_line_is_not_a_marker():
    f = ExecFraming("echo __RELAY_x_END:0__", nonce="feed")
    assert f.feed(f.line.replace("\n", "\r\n")) == "" and not f.begun


def test_exec_output_streams_while_the_command_runs():
    f = ExecFraming("tail -f log", nonce="s")
    f.feed("$ typed\r\n__RELAY_s_BEGIN__\r\n")
    assert f.feed("first\r\n") == "first\n"
    assert f.feed("partial") == "partial"
    assert f.feed(" __RELAY_other_END:1__ ") == " __RELAY_other_END:1__ "   # not our nonce
    assert f.feed("__RELAY_s_E") == ""   # may be ours: held back
    assert f.feed("XTRA\r") == "__RELAY_s_EXTRA"
    assert f.feed("\n") == "\n" and not f.done


def test_exec_keeps_crlf_when_asked():
    f = ExecFraming("x", nonce="c", crlf=True)
    assert f.feed(terminal_stream(f, "a\r\n", 0)) == "a\r\n"


def test_a_command_that_exits_the_shell():
    f = ExecFraming("exit 3", nonce="e")
    assert f.feed("$ x\r\n__RELAY_e_BEGIN__\r\nbye\r") == "bye"   # "\r" waits for its "\n"
    assert f.shell_ended(3) == "\r"
    assert f.done and f.exit_status == 3
    assert f.shell_ended(0) == "" and f.exit_status == 3


def test_nonces_differ():
    assert ExecFraming("x").nonce != ExecFraming("x").nonce


# -- Huawei's device SDK: an answer before the login, a refusal after it (docs/device.md) -------


def sdk_answer(request_id: str) -> str:
    """The SDK's `connect_response`: no `data` at all, pretty-printed by cJSON."""
    return ('{\n\t"operation_type":\t"connect_response",\n\t"tunnel_service_type":\t"ssh",\n'
            f'\t"request_id":\t"{request_id}"\n}}')


def test_an_answer_without_status_opens_the_session_until_the_device_refuses_it():
    s = SourceSession("alice", "wrong", new_id=ids())
    (connect,) = sent(s.received(message("connect_tunnel", "t")))
    told = only(s.received(sdk_answer(connect["request_id"])), LoggedIn)
    assert "login request" in told.text and s.phase is Phase.OPEN
    assert sent(s.typed("id\n"))   # queued at the device behind its login, as the SDK takes them in order
    refusal = message("disconnect", connect["request_id"],
                      status("400", "WssClientListenerOnMsg: Create SSH channel failed"))
    end = only(s.received(refusal), Ended)
    assert end.error and end.exit_status is None
    assert end.reason == "login failed (400): WssClientListenerOnMsg: Create SSH channel failed"


def test_after_the_first_output_a_device_disconnect_is_no_longer_a_login_failure():
    s = SourceSession("alice", "pw", new_id=ids())
    (connect,) = sent(s.received(message("connect_tunnel", "t")))
    s.received(sdk_answer(connect["request_id"]))
    assert only(s.received(message("command_response", connect["request_id"], "Last login: ...\r\n$ ")), Output)
    end = only(s.received(message("disconnect", "d", status("400", "gone"))), Ended)
    assert end.reason == "the device ended the session (400): gone"


def test_the_relays_own_disconnects_keep_their_meaning_while_the_login_is_unconfirmed():
    s = SourceSession("alice", "pw", new_id=ids())
    (connect,) = sent(s.received(message("connect_tunnel", "t")))
    s.received(sdk_answer(connect["request_id"]))
    assert "waiting" in only(s.received(message("disconnect", "x", status("499", "the device disconnected"))),
                             Notice).text
    (again,) = sent(s.received(message("connect_tunnel", "t2")))
    s.received(sdk_answer(again["request_id"]))
    end = only(s.received(message("disconnect", "y", status("410", "the tunnel was closed"))), Ended)
    assert end.reason == "the relay ended the session (410): the tunnel was closed"


def test_the_sdk_closing_its_ssh_channel_ends_the_session_without_error():
    s = SourceSession("alice", "pw", new_id=ids())
    (connect,) = sent(s.received(message("connect_tunnel", "t")))
    s.received(sdk_answer(connect["request_id"]))
    s.received(message("command_response", connect["request_id"], "$ "))
    closed = message("disconnect", "SSH_timeout_disconnect",
                     status("408", "SSH idles for too long, the session will be closed"))
    end = only(s.received(closed), Ended)
    assert not end.error and end.exit_status is None
    assert end.reason == "the device closed the SSH session (408): SSH idles for too long, the session will be closed"
