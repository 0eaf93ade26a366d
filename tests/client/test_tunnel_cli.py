"""`relay tunnel ...` as a user runs it: a real process against a running relay."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from tests.client.conftest import Cli, cli_env
from tests.conftest import TOKEN_A

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def cli(relay):
    return Cli(cli_env(relay))


async def test_create_list_show_rotate_close_delete(cli):
    code, out, err = await cli.run("tunnel", "create", "dev-1", "--description", "from the CLI", "--json")
    assert code == 0, err
    made = orjson.loads(out)
    tid = made["tunnel_id"]
    assert {"tunnel_access_token", "tunnel_uri", "device_access_token"} <= made.keys()

    code, out, err = await cli.run("tunnel", "list")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["TUNNEL_ID", "DEVICE_ID", "STATUS"]
    assert row.split()[:3] == [tid, "dev-1", "OPEN"] and row.endswith("from the CLI")

    code, out, _ = await cli.run("tunnel", "list", "--device-id", "dev-1", "--status", "open", "--json")
    assert code == 0 and [t["tunnel_id"] for t in orjson.loads(out)["tunnels"]] == [tid]

    code, out, _ = await cli.run("tunnel", "show", tid)
    assert code == 0 and f"tunnel_id:            {tid}" in out and "status:               OPEN" in out
    assert orjson.loads((await cli.run("tunnel", "show", tid, "--json"))[1])["device_id"] == "dev-1"

    code, out, _ = await cli.run("tunnel", "rotate", tid)
    assert code == 0
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("tunnel_access_token:"))
    assert token != made["tunnel_access_token"] and "device_access_token" not in out
    rotated = orjson.loads((await cli.run("tunnel", "rotate", tid, "--side", "all", "--json"))[1])
    assert rotated["device_access_token"] != made["device_access_token"]

    code, out, err = await cli.run("tunnel", "delete", tid)   # still open
    assert code == 1 and out == ""
    assert err.strip().startswith("relay: TUNNEL.409001:") and len(err.strip().splitlines()) == 1

    code, out, _ = await cli.run("tunnel", "close", tid)
    assert (code, out) == (0, f"{tid}: closed\n")
    code, out, _ = await cli.run("tunnel", "delete", tid, "--json")
    assert code == 0 and orjson.loads(out)["success_count"] == 1

    code, _, err = await cli.run("tunnel", "show", tid)
    assert code == 1 and "TUNNEL.404000" in err


async def test_create_with_record_turns_recording_on(cli, relay):
    code, out, err = await cli.run("tunnel", "create", "dev-rec", "--record", "--json")
    assert code == 0, err
    recorded = orjson.loads(out)["tunnel_id"]
    code, out, err = await cli.run("tunnel", "create", "dev-plain", "--json")
    assert code == 0, err
    plain = orjson.loads(out)["tunnel_id"]
    assert (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{recorded}"))[1]["record_session"] is True
    assert (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{plain}"))[1]["record_session"] is False
    code, out, _ = await cli.run("tunnel", "create", "--help")
    assert code == 0 and "--record" in out


async def test_batch_close_and_delete_report_each_tunnel(cli, relay):
    ids = [(await relay.create(f"dev-{i}"))["tunnel_id"] for i in range(3)]
    code, out, _ = await cli.run("tunnel", "close", *ids, UNKNOWN)
    assert code == 1   # one failed
    lines = out.splitlines()
    assert lines[:3] == [f"{t}: closed" for t in ids]
    assert lines[3].startswith(f"{UNKNOWN}: FAILED TUNNEL.404000")
    code, out, _ = await cli.run("tunnel", "delete", *ids, "--json")
    answer = orjson.loads(out)
    assert code == 0 and answer["success_count"] == 3 and answer["failure_count"] == 0
    code, out, _ = await cli.run("tunnel", "list", "--json")
    assert orjson.loads(out)["tunnels"] == []
    assert (await cli.run("tunnel", "list"))[1] == "no tunnels\n"


async def test_list_pages_and_all(cli, relay):
    for i in range(12):
        await relay.create(f"dev-{i}")
    code, out, err = await cli.run("tunnel", "list", "--limit", "5")
    assert code == 0 and len(out.splitlines()) == 6
    assert "5 of 12 tunnels shown" in err and "--marker" in err
    code, out, _ = await cli.run("tunnel", "list", "--all", "--json")
    assert len(orjson.loads(out)["tunnels"]) == 12


async def test_a_wrong_token_is_one_line_and_never_echoed(cli):
    wrong = "not-the-token-abcdefghijklmnop"
    for args in (["--token", wrong], []):
        code, out, err = await cli.run("tunnel", "list", *args, env={"RELAY_API_TOKEN": wrong})
        assert code == 1 and out == ""
        assert err == "relay: TUNNEL.401000: " + err.split(": ", 2)[2] and err.count("\n") == 1
        assert wrong not in err and TOKEN_A not in err


async def test_token_file_and_project(cli, relay, tmp_path):
    tokens = tmp_path / "api-tokens.txt"
    tokens.write_text(f"# generated\nproj-b:bob:some-other-token-xxxxxxxx\nproj-a:alice:{TOKEN_A}\n")
    env = {"RELAY_API_TOKEN": ""}
    code, out, err = await cli.run("tunnel", "create", "dev-9", "--token-file", str(tokens), env=env)
    assert code == 0, err
    code, _, err = await cli.run("tunnel", "list", "--project", "proj-b", "--token-file", str(tokens), env=env)
    assert code == 1 and "TUNNEL.401000" in err   # proj-b's token is not known to this relay
    code, _, err = await cli.run("tunnel", "list", env=env)
    assert code == 2 and "no API token" in err


async def test_the_relay_is_not_there(cli):
    code, _, err = await cli.run("tunnel", "list", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the relay at http://127.0.0.1:9" in err


async def test_help_names_the_environment():
    code, out, _ = await Cli(cli_env(type("R", (), {"url": "http://x"})())).run("tunnel", "list", "--help")
    assert code == 0 and "RELAY_URL" in out and "RELAY_API_TOKEN" in out and TOKEN_A not in out


# -- what a tenant or the relay chose never drives the terminal (issue 15, finding 3) ----------

HOSTILE = "fix\x1b]0;pwned\x07\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[8mhidden\x1b[2A\x1b[2K\x9b2K\rFAKE"
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


async def test_list_and_show_escape_a_hostile_description(cli, relay):
    made = await relay.create("dev-1", description=HOSTILE)
    await relay.create("dev-2", description="plain")
    code, out, err = await cli.run("tunnel", "list")
    assert code == 0, err
    assert not CONTROLS.search(out), out
    header, *rows = out.splitlines()
    assert len(rows) == 2 and any(r.endswith("fix\\x1b]0;pwned\\x07\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[8mhidden"
                                             "\\x1b[2A\\x1b[2K\\x9b2K\\x0dFAKE") for r in rows)
    code, out, _ = await cli.run("tunnel", "show", made["tunnel_id"])
    assert code == 0 and not CONTROLS.search(out) and "description:" in out
    code, out, _ = await cli.run("tunnel", "show", made["tunnel_id"], "--json")
    assert orjson.loads(out)["description"] == HOSTILE and not CONTROLS.search(out.replace("\n", ""))


async def test_an_error_answer_is_shown_escaped(cli):
    """A relay (or what pretends to be one) answering with control characters in its error."""
    body = orjson.dumps({"error_code": "TUNNEL.403000\x1b]0;pwned\x07", "error_msg": HOSTILE})

    async def answer(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        code, out, err = await cli.run("tunnel", "list", "--url", f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1 and out == ""
    assert err.startswith("relay: TUNNEL.403000\\x1b]0;pwned\\x07: fix\\x1b]0;pwned") and err.count("\n") == 1
    assert not CONTROLS.search(err.rstrip("\n"))
