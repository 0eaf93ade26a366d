"""`relay audit` and `relay playback` as a user runs them: a real process against a relay."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest

from relay.audit import EventType
from relay.client.output import when
from relay.clock import format_time
from relay.recording import SessionRecorder, parse_cast
from relay.web.audit_rest import AUDIT

TUNNEL = str(uuid.UUID(int=7))
OUTPUT = ["pi@dev-1:~$ ", "uptime\r\n", " 10:00:00 up 3 days\r\n", "pi@dev-1:~$ "]


async def seed(relay) -> None:  # type: ignore[no-untyped-def]
    log = relay.client.server.app[AUDIT]
    for _n, (kind, actor, device, outcome, detail) in enumerate([
        (EventType.TUNNEL_CREATED, "alice", "dev-1", "ok", {"expires_in": 600}),
        (EventType.SSH_LOGIN_FAILED, "source", "dev-1", "401", {"username": "root"}),
        (EventType.SSH_LOGIN_SUCCEEDED, "source", "dev-1", "ok", {"username": "pi"}),
        (EventType.TUNNEL_CREATED, "ci", "dev-2", "ok", {}),
    ]):
        log.record("proj-a", kind, actor=actor, tunnel_id=TUNNEL, device_id=device, outcome=outcome, detail=detail)
        relay.clock.advance(1)
    assert await log.flush()


def session(relay, output: list[str] = OUTPUT) -> str:  # type: ignore[no-untyped-def]
    """A recorded session of `output` (four messages), saved through the audit log; returns its id."""
    start = relay.clock.now()
    rec = SessionRecorder("0f1e2d3c4b5a69788796a5b4c3d2e1f0", "proj-a", TUNNEL, "dev-1", start, 1 << 20)
    msgs = [
        ("source", {"operation_type": "connect", "data": {"username": "pi", "password": "never-in-a-recording"}}),
        ("device", {"operation_type": "connect_response", "data": {"status_code": "200"}}),
        ("device", {"operation_type": "command_response", "data": output[0]}),
        ("source", {"operation_type": "command", "data": "uptime\r"}),
        ("device", {"operation_type": "command_response", "data": output[1]}),
        ("device", {"operation_type": "command_response", "data": output[2]}),
        ("device", {"operation_type": "command_response", "data": output[3]}),
    ]
    for n, (side, body) in enumerate(msgs):
        payload = orjson.dumps({**body, "tunnel_service_type": "ssh", "request_id": f"r{n}"})
        rec.observe(side, payload, start + n * 0.5)
    relay.client.server.app[AUDIT].save_recording(rec.finish(start + 60))
    return rec.session_id


async def test_audit_table_filters_and_json(cli, relay):
    await seed(relay)
    code, out, err = await cli.run("audit")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "EVENT", "ACTOR", "DEVICE_ID", "TUNNEL_ID", "OUTCOME", "DETAIL"]
    assert [r.split()[2] for r in rows] == ["tunnel_created", "ssh_login_succeeded", "ssh_login_failed", "tunnel_created"]
    assert rows[2].split()[3:] == ["source", "dev-1", TUNNEL, "401", "username=root"]
    assert " ".join(rows[0].split()[0:2]) == when(format_time(relay.clock.now() - 1))   # 2025-06-15 15:06:43Z

    code, out, _ = await cli.run("audit", "--device", "dev-1", "--type", "ssh_login_failed,ssh_login_succeeded", "--json")
    answer = orjson.loads(out)
    assert code == 0 and [e["event"] for e in answer["events"]] == ["ssh_login_succeeded", "ssh_login_failed"]
    code, out, _ = await cli.run("audit", "--type", "tunnel_created", "--type", "ssh_login_failed", "--json")
    assert len(orjson.loads(out)["events"]) == 3
    code, out, _ = await cli.run("audit", "--tunnel", TUNNEL, "--since", format_time(relay.clock.now() - 2), "--json")
    assert [e["actor"] for e in orjson.loads(out)["events"]] == ["ci", "source"]
    code, out, _ = await cli.run("audit", "--until", "2000-01-01T00:00:00Z")
    assert (code, out) == (0, "no events\n")


async def test_audit_pages_with_limit(cli, relay):
    await seed(relay)
    code, out, err = await cli.run("audit", "--limit", "3", "--json")
    answer = orjson.loads(out)
    assert code == 0 and answer["count"] == 3 and answer["marker"]
    code, out, err = await cli.run("audit", "--limit", "3")
    assert len(out.splitlines()) == 4 and "--marker" in err
    code, out, _ = await cli.run("audit", "--marker", answer["marker"], "--json")
    assert [e["actor"] for e in orjson.loads(out)["events"]] == ["alice"]


async def test_audit_errors_are_one_line(cli):
    code, out, err = await cli.run("audit", "--type", "tunnel_teleported")
    assert code == 1 and out == "" and err.startswith("relay: TUNNEL.400001:") and err.count("\n") == 1
    code, _, err = await cli.run("audit", "--since", "last tuesday")
    assert code == 1 and "since" in err


async def test_playback_writes_exactly_the_recorded_output(cli, relay):
    session_id = session(relay)
    assert await relay.client.server.app[AUDIT].flush()
    code, out, err = await cli.run("playback", session_id, "--speed", "50", "--max-idle", "0.01")
    assert code == 0, err
    assert out == "".join(OUTPUT)
    assert "pi@dev-1" in err and "[login as pi]" in err and "[end of the recording]" in err
    code, out, err = await cli.run("playback", session_id, "--max-idle", "0", "-q")
    assert (code, out, err) == (0, "".join(OUTPUT), "")


# What a device chose (issue 15, finding 3): an outcome and a detail that would retitle the
# window, write the clipboard, and move up to erase the rows above.
HOSTILE = "\x1b]0;pwned\x07\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2A\x1b[2K\x9b8m"
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


async def test_audit_shows_what_devices_chose_escaped(cli, relay):
    log = relay.client.server.app[AUDIT]
    log.record("proj-a", EventType.SSH_LOGIN_FAILED, actor="source", tunnel_id=TUNNEL, device_id="dev-1",
               outcome="401" + HOSTILE, detail={"username": "root" + HOSTILE, "reason": ["\x1b[8m"]})
    relay.clock.advance(1)
    await seed(relay)
    code, out, err = await cli.run("audit")
    assert code == 0, err
    assert not CONTROLS.search(out), out
    header, *rows = out.splitlines()
    assert len(rows) == 5 and "401\\x1b]0;pwned\\x07\\x1b]52;c;" in rows[-1] and "username=root\\x1b]0;" in rows[-1]
    code, out, _ = await cli.run("audit", "--json")
    assert not CONTROLS.search(out.replace("\n", ""))
    assert orjson.loads(out)["events"][-1]["outcome"] == "401" + HOSTILE   # the value, JSON-escaped


async def test_playback_filters_what_reaches_past_the_screen(cli, relay):
    hostile = ["pi@dev-1:~$ \x1b]52;c;ZWNobyBwd25lZA==", "\x07\x1b[1;32mgreen\x1b[0m\r\n",
               "\x1bP$qm\x1b\\\x1b]0;dev-1\x07\x1b[21t\r\n", "pi@dev-1:~$ "]
    session_id = session(relay, hostile)
    assert await relay.client.server.app[AUDIT].flush()
    code, out, err = await cli.run("playback", session_id, "--max-idle", "0", "-q")
    assert code == 0, err
    assert out == "pi@dev-1:~$ \x1b[1;32mgreen\x1b[0m\r\n\x1b]0;dev-1\x07\r\npi@dev-1:~$ "
    code, out, err = await cli.run("playback", session_id, "--max-idle", "0", "-q", "--raw-terminal")
    assert (code, out) == (0, "".join(hostile))


async def test_playback_saves_the_cast_file(cli, relay, tmp_path):
    session_id = session(relay)
    assert await relay.client.server.app[AUDIT].flush()
    target = tmp_path / "session.cast"
    code, _, err = await cli.run("playback", session_id, "--out", str(target))
    assert code == 0 and "saved" in err
    header, events = parse_cast(target.read_bytes())
    assert header["title"] == "pi@dev-1" and b"never-in-a-recording" not in target.read_bytes()
    assert "".join(t for _, c, t in events if c == "o") == "".join(OUTPUT)
    code, out, _ = await cli.run("playback", session_id, "--out", "-")
    assert out.encode() == target.read_bytes()


async def test_playback_of_an_unknown_session(cli):
    code, out, err = await cli.run("playback", "feedfeedfeedfeedfeedfeedfeedfeed")
    assert code == 1 and out == "" and "TUNNEL.404002" in err
    code, _, err = await cli.run("playback", "x", "--speed", "0")
    assert code == 2


def test_serve_options(tmp_path, monkeypatch):
    from relay import cli
    from relay.errors import ConfigError

    monkeypatch.setenv("RELAY_API_TOKENS", "p1:tester:serve-test-token-0123456789")
    monkeypatch.setenv("RELAY_MQTT_URL", "none")
    db = str(tmp_path / "relay.db")
    args = cli.build_parser().parse_args(["serve", "--db", db, "--record-projects", "p1, p-2,p1",
                                          "--recording-cap", "4096", "--audit-retention", "3600",
                                          "--audit-queue-size", "77"])
    settings, _ = cli.settings_from_args(args)
    assert settings.record_projects == ("p1", "p-2") and settings.recording_cap == 4096
    assert settings.audit_retention == 3600 and settings.audit_queue_size == 77
    defaults, _ = cli.settings_from_args(cli.build_parser().parse_args(["serve", "--db", db]))
    assert defaults.record_projects == () and defaults.recording_cap == 1 << 20
    monkeypatch.setenv("RELAY_RECORD_PROJECTS", "from-env")
    from_env, _ = cli.settings_from_args(cli.build_parser().parse_args(["serve", "--db", db]))
    assert from_env.record_projects == ("from-env",)
    with pytest.raises(ConfigError, match="not a project id"):
        cli.settings_from_args(cli.build_parser().parse_args(["serve", "--db", db, "--record-projects", "a/b"]))
