"""Tables for people, JSON for scripts."""

from __future__ import annotations

import io
import re

import orjson

from relay.client import output
from relay.client.api import ApiError
from relay.client.terminal import Terminal

OPEN = {"tunnel_id": "t-1", "device_id": "dev-1", "status": "OPEN", "create_time": "20261124T161807Z",
        "closed_time": None, "expires_at": "20261125T161807Z", "close_reason": None, "description": "fix\nwifi",
        "custom_info": None, "source_connect_state": {"status": "CONNECTED", "last_update_time": "20261124T161900Z"},
        "device_connect_state": {"status": "DISCONNECTED", "last_update_time": "20261124T161807Z"},
        "notify_status": "DELIVERED"}
CLOSED = {**OPEN, "tunnel_id": "t-22", "device_id": "device-long-name", "status": "CLOSED",
          "closed_time": "20261124T170000Z", "close_reason": "expired", "description": None,
          "source_connect_state": {"status": "DISCONNECTED"}}


def test_times_read_like_times():
    assert output.when("20261124T161807Z") == "2026-11-24 16:18:07Z"
    assert output.when(None) == "-" and output.when("soon") == "soon"


def test_table_columns_line_up():
    text = output.tunnels_table([OPEN, CLOSED])
    lines = text.splitlines()
    assert lines[0].split() == ["TUNNEL_ID", "DEVICE_ID", "STATUS", "SOURCE", "DEVICE", "CREATED", "ENDS", "DESCRIPTION"]
    starts = [line.index(word) for line, word in zip(lines, ["DEVICE_ID", "dev-1", "device-long-name"])]
    assert len(set(starts)) == 1   # the second column starts at the same place on every line
    assert "connected" in lines[1] and "fix wifi" in lines[1]   # one line per row
    assert "2026-11-24 17:00:00Z (expired)" in lines[2]
    assert all(line == line.rstrip() for line in lines)
    assert output.tunnels_table([]) == "no tunnels"


def test_fields_of_one_tunnel():
    text = output.fields(OPEN)
    assert text.splitlines()[0] == "tunnel_id:            t-1"
    assert "source_connect_state: CONNECTED since 2026-11-24 16:19:00Z" in text
    assert "closed_time:          -" in text
    assert "notify_status:        DELIVERED" in text


def test_created_fields_come_in_order_and_unknown_ones_after():
    made = {"tunnel_access_token": "S", "tunnel_id": "t", "extra": 1, "expires_in": 60, "tunnel_uri": "ws://x"}
    keys = [line.split(":")[0] for line in output.fields(made, output.CREATED_FIELDS).splitlines()]
    assert keys == ["tunnel_id", "expires_in", "tunnel_uri", "tunnel_access_token", "extra"]


def test_batch_lines_and_single_results():
    answer = {"results": [{"tunnel_id": "a", "result": "SUCCESS"},
                          {"tunnel_id": "b", "result": "FAILED", "error_code": "TUNNEL.404000", "error_msg": "no such"}],
              "success_count": 1, "failure_count": 1}
    assert output.batch_lines("close", answer) == "a: closed\nb: FAILED TUNNEL.404000: no such"
    assert output.single_result("a") == {"results": [{"tunnel_id": "a", "result": "SUCCESS"}],
                                         "success_count": 1, "failure_count": 0}
    failed = output.single_result("b", ApiError(409, "TUNNEL.409001", "only closed"))
    assert failed["failure_count"] == 1 and failed["results"][0]["error_code"] == "TUNNEL.409001"


def test_json_is_the_api_answer():
    assert orjson.loads(output.to_json({"tunnels": [OPEN]})) == {"tunnels": [OPEN]}


def test_api_errors_are_one_line_with_their_code():
    err = ApiError(409, "TUNNEL.409003", "device dev-1 is offline;\n start its agent")
    assert str(err) == "TUNNEL.409003: device dev-1 is offline; start its agent (HTTP 409)"


# -- what a device or a tenant chose never drives the operator's terminal (issue 15, finding 3) -

# A title, a clipboard write, concealed text, cursor up and erase line, an 8-bit CSI, a bidi
# override, a carriage return that rewrites the line, and the bell.
HOSTILE = ("ok\x1b]0;pwned\x07\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[8mhidden\x1b[0m\x1b[2A\x1b[2K"
           "\x9b2K\u202egnp.exe\rFAKE\x07")
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")


def test_tables_and_fields_escape_what_the_relay_sent():
    hostile = {**OPEN, "tunnel_id": "t-1\x1b[1A", "device_id": "dev\x1b]52;c;YQ==\x07", "description": HOSTILE,
               "status": "OPEN\x1b[8m", "close_reason": "\x9b2J", "extra\x1b[2K": "x"}
    for text in (output.tunnels_table([hostile, CLOSED]), output.fields(hostile),
                 output.batch_lines("close", {"results": [{"tunnel_id": hostile["tunnel_id"], "result": "FAILED",
                                                           "error_code": "\x1b[31m", "error_msg": HOSTILE}]})):
        assert not CONTROLS.search(text), text
        assert "\\x1b" in text
    lines = output.tunnels_table([hostile, CLOSED]).splitlines()
    starts = [line.index(word) for line, word in zip(lines, ["DEVICE_ID", "dev\\x1b]52", "device-long-name"])]
    assert len(set(starts)) == 1   # columns still line up with the escapes shown


def test_json_escapes_c1_and_bidi_controls_and_keeps_the_value():
    value = {"description": HOSTILE, "k\x9b": ["\u2066x\u2069", "\x7f"]}
    text = output.to_json(value)
    assert not CONTROLS.search(text)
    assert orjson.loads(text) == value


def test_say_is_the_sanitizing_print():
    out = io.StringIO()
    output.say(f"relay: TUNNEL.404000: {HOSTILE}", file=out)
    assert out.getvalue().endswith("FAKE\\x07\n") and not CONTROLS.search(out.getvalue())


def test_status_lines_are_sanitized_and_the_stream_is_filtered():
    stdout, stderr = io.BytesIO(), io.StringIO()
    terminal = Terminal(stdin_fd=0, stdout=stdout, stderr=stderr)
    terminal.notice(f"the device ended the session (500): {HOSTILE}")
    terminal.raw = True   # as in `relay ssh`
    terminal.error("line one\nline two\x1b[2A")
    assert not CONTROLS.search(stderr.getvalue().replace("\r\n", "").replace("\n", ""))
    assert stderr.getvalue().endswith("\r\n[relay] line one\r\nline two\\x1b[2A\r\n")
    terminal.write("\x1b[32mgreen\x1b[0m \x1b]52;c;YQ")
    terminal.write("==\x07done\r\n")
    assert stdout.getvalue() == b"\x1b[32mgreen\x1b[0m done\r\n"

    raw = io.BytesIO()
    Terminal(stdin_fd=0, stdout=raw, stderr=stderr, raw_output=True).write("\x1b]52;c;YQ==\x07")
    assert raw.getvalue() == b"\x1b]52;c;YQ==\x07"   # --raw-terminal: as it comes
