"""The audit trail of a scripted tunnel's life, through the real relay: every event type
appears once and only once, with the actor and details it should have, and nothing secret.
The ends are raw WebSocket clients playing source and device; the notify goes through a
real mosquitto."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from relay.recording import parse_cast
from tests.conftest import TOKEN_A2
from tests.dataplane.conftest import Tunnel, message, receive_close, receive_json
from tests.device.conftest import eventually, mosquitto  # noqa: F401 (fixture)

PASSWORD = "correct-horse-battery-staple"


def tcp(op: str, request_id: str, data=None) -> str:  # type: ignore[no-untyped-def]
    return message(op, request_id, data, tunnel_service_type="tcp")


async def flushed(relay) -> list[dict]:  # type: ignore[no-untyped-def]
    """Every event of project proj-a, oldest first (after the audit log has written them)."""
    audit = relay.client.server.app[__import__("relay.web.audit_rest", fromlist=["AUDIT"]).AUDIT]
    assert await audit.flush(5)
    events, marker = [], None
    while True:
        query = "?limit=1000" + (f"&marker={marker}" if marker else "")
        status, body = await relay.call("GET", f"/v5/iot/proj-a/audit{query}")
        assert status == 200, body
        events += body["events"]
        marker = body["marker"]
        if marker is None:
            return list(reversed(events))


async def open_tunnel(relay, session, **fields) -> Tunnel:  # type: ignore[no-untyped-def]
    body = await relay.create("dev-1", **fields)
    return Tunnel(relay, body["tunnel_id"], body["tunnel_access_token"], body["device_access_token"],
                  body["tunnel_uri"], body["device_tunnel_uri"], session)


@pytest.mark.timeout(60)
async def test_a_scripted_tunnel_life_is_audited_once_per_event(relay_factory, mosquitto):  # noqa: F811
    relay = await relay_factory(mqtt_url=mosquitto.url)
    async with aiohttp.ClientSession() as session:
        tunnel = await open_tunnel(relay, session, record_session=True)
        await eventually(lambda: tunnel.info(), 5)
        await eventually(lambda: _delivered(tunnel), 10)

        source, device = await tunnel.pair()
        # an SSH session: a failed login, then a good one, two commands
        await source.send_str(message("connect", "login-1", {"username": "mallory", "password": "guess"}))
        assert (await receive_json(device))["request_id"] == "login-1"
        await device.send_str(message("connect_response", "login-1", {"status_code": "401", "status_msg": "denied"}))
        await receive_json(source)
        await source.send_str(message("connect", "login-2", {"username": "pi", "password": PASSWORD}))
        await receive_json(device)
        await device.send_str(message("connect_response", "login-2", {"status_code": "200", "status_msg": "ok"}))
        await receive_json(source)
        output = ["pi@dev-1:~$ ", "uname -a\r\nLinux dev-1 6.1.0\r\n", "pi@dev-1:~$ "]
        await source.send_str(message("command", "cmd-1", "uname -a\r"))
        await receive_json(device)
        for chunk in output:
            await device.send_str(message("command_response", "cmd-1", chunk))
            assert (await receive_json(source))["data"] == chunk
        await source.send_str(message("disconnect", "bye-1"))
        await receive_json(device)

        # a forwarded TCP connection, opened, half-closed each way
        await source.send_str(tcp("forward_open", "f-1", {"port": 22}))
        await receive_json(device)
        await device.send_str(tcp("forward_open_response", "f-1", {"status_code": "200", "status_msg": "connected"}))
        await receive_json(source)
        await source.send_str(tcp("forward_close", "f-1", {"status_msg": "eof"}))
        await receive_json(device)
        await device.send_str(tcp("forward_close", "f-1", {"status_msg": "eof"}))
        await receive_json(source)

        # a second device connection evicts the first; then the source leaves
        newer = await tunnel.connect("device")
        assert (await receive_close(device))[0] == 4000
        await receive_json(source)   # 499: the device was replaced
        await source.close()
        await receive_json(newer)    # 499: the source disconnected

        # rotate, close, delete, batch
        status, _ = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{tunnel.tunnel_id}/rotate-token",
                                     json={"side": "source"})
        assert status == 200
        status, _ = await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{tunnel.tunnel_id}")
        assert status == 204
        await receive_close(newer)
        status, _ = await relay.call("POST", "/v5/iot/proj-a/tunnels/batch-close",
                                     json={"tunnel_ids": [tunnel.tunnel_id]})   # closed already: nothing to do
        assert status == 200
        status, _ = await relay.call("DELETE", f"/v5/iot/proj-a/tunnels/{tunnel.tunnel_id}")
        assert status == 204

        events = await flushed(relay)
    kinds = [e["event"] for e in events]
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    expected_once = {
        "tunnel_created", "notify_delivered", "source_connected", "ssh_login_failed", "ssh_login_succeeded",
        "session_recorded", "forward_opened", "forward_closed", "device_evicted", "source_disconnected",
        "tokens_rotated", "tunnel_closed", "tunnel_deleted", "batch_close",
    }
    for kind in expected_once:
        assert counts.get(kind) == 1, (kind, kinds)
    assert counts["device_connected"] == 2 and counts["device_disconnected"] == 2, kinds
    assert set(kinds) <= expected_once | {"device_connected", "device_disconnected"}, kinds
    assert all(e["tunnel_id"] == tunnel.tunnel_id and e["device_id"] == "dev-1" for e in events
               if e["event"] != "batch_close")

    by_kind = {e["event"]: e for e in events}
    assert by_kind["tunnel_created"]["actor"] == "alice"
    assert by_kind["tokens_rotated"]["actor"] == "alice" and by_kind["tokens_rotated"]["detail"]["sides"] == ["source"]
    assert by_kind["ssh_login_succeeded"]["detail"] == {"username": "pi"}
    assert by_kind["ssh_login_failed"]["outcome"] == "401"
    assert by_kind["forward_opened"]["detail"]["port"] == 22
    assert by_kind["batch_close"]["detail"]["results"] == {tunnel.tunnel_id: "ok"}
    assert by_kind["notify_delivered"]["actor"] == "relay"

    # the recording replays to the very output the device sent, and holds no password
    session_id = by_kind["session_recorded"]["detail"]["session_id"]
    status, cast = await relay.call("GET", f"/v5/iot/proj-a/recordings/{session_id}")
    assert status == 200
    _, played = parse_cast(cast)
    assert "".join(text for _, code, text in played if code == "o") == "".join(output)
    stored = orjson.dumps(events) + cast
    for secret in (PASSWORD, "guess", tunnel.source_token, tunnel.device_token):
        assert secret.encode() not in stored


async def _login(source, device, request_id: str, username: str = "pi") -> None:  # type: ignore[no-untyped-def]
    await source.send_str(message("connect", request_id, {"username": username, "password": PASSWORD}))
    await receive_json(device)
    await device.send_str(message("connect_response", request_id, {"status_code": "200"}))
    await receive_json(source)


@pytest.mark.timeout(60)
async def test_what_a_source_does_names_the_api_token_that_issued_its_token(relay):
    """alice creates the tunnel, ci rotates its source token: each login is theirs."""
    async with aiohttp.ClientSession() as session:
        tunnel = await open_tunnel(relay, session, record_session=True)   # by alice (TOKEN_A)
        source, device = await tunnel.pair()
        await _login(source, device, "as-alice", "user-a")
        await source.send_str(message("disconnect", "bye-alice"))   # the recorded session ends
        await receive_json(device)
        status, rotated = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{tunnel.tunnel_id}/rotate-token",
                                           token=TOKEN_A2, json={"side": "source"})   # by ci
        assert status == 200
        assert (await receive_close(source))[0] == 4001
        source = await tunnel.connect("source", rotated["tunnel_access_token"])
        assert (await receive_json(source))["operation_type"] == "connect_tunnel"
        await _login(source, device, "as-ci", "user-c")
        await source.close()
        await device.close()
        await eventually(lambda: _has(relay, "device_disconnected"), 5)
        events = await flushed(relay)
    # (the test relay's clock stands still: events of one moment come in any order)
    actors = [(e["event"], e["actor"]) for e in events]
    logins = {e["detail"]["username"]: e["actor"] for e in events if e["event"] == "ssh_login_succeeded"}
    assert logins == {"user-a": "alice", "user-c": "ci"}
    recorded = {e["detail"]["username"]: e["actor"] for e in events if e["event"] == "session_recorded"}
    assert recorded == {"user-a": "alice", "user-c": "ci"}
    assert sorted(a for e, a in actors if e == "source_connected") == ["alice", "ci"]
    assert sorted(a for e, a in actors if e == "source_disconnected") == ["alice", "ci"]
    assert {a for e, a in actors if e.startswith("device_")} == {"device"}
    assert ("tokens_rotated", "ci") in actors and ("tunnel_created", "alice") in actors


async def _delivered(tunnel: Tunnel) -> bool:
    return (await tunnel.info())["notify_status"] == "DELIVERED"


async def test_a_failed_attempt_is_recorded_with_its_outcome(relay):
    status, _ = await relay.call("PUT", "/v5/iot/proj-a/tunnels/4d1b4f3c-0000-4000-8000-000000000000")
    assert status == 404
    body = await relay.create("dev-1")
    status, _ = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "dev-1"})
    assert status == 409
    events = await flushed(relay)
    failed = sorted((e["event"], e["outcome"]) for e in events if e["outcome"] != "ok")
    assert failed == [("tunnel_closed", "TUNNEL.404000"), ("tunnel_created", "TUNNEL.409000")]
    assert [e["tunnel_id"] for e in events if e["event"] == "tunnel_created" and e["outcome"] == "ok"] == [
        body["tunnel_id"]]


async def test_tunnels_of_unrecorded_projects_are_not_recorded(relay):
    session = aiohttp.ClientSession()
    tunnel = await open_tunnel(relay, session)
    source, device = await tunnel.pair()
    await source.send_str(message("connect", "l1", {"username": "pi", "password": PASSWORD}))
    await receive_json(device)
    await device.send_str(message("connect_response", "l1", {"status_code": "200"}))
    await receive_json(source)
    await device.send_str(message("command_response", "c", "hello"))
    await receive_json(source)
    await source.close()
    await eventually(lambda: _has(relay, "source_disconnected"), 5)
    kinds = [e["event"] for e in await flushed(relay)]
    await session.close()
    assert "ssh_login_succeeded" in kinds and "session_recorded" not in kinds


async def test_recorded_projects_record_every_tunnel(relay_factory):
    relay = await relay_factory(record_projects=("proj-a",))
    session = aiohttp.ClientSession()
    tunnel = await open_tunnel(relay, session)
    source, device = await tunnel.pair()
    await source.send_str(message("connect", "l1", {"username": "pi", "password": PASSWORD}))
    await receive_json(device)
    await device.send_str(message("connect_response", "l1", {"status_code": "200"}))
    await receive_json(source)
    await device.send_str(message("command_response", "c", "hello"))
    await receive_json(source)
    await source.close()
    await eventually(lambda: _has(relay, "session_recorded"), 5)
    await session.close()


async def _has(relay, kind: str) -> bool:  # type: ignore[no-untyped-def]
    return kind in [e["event"] for e in await flushed(relay)]


async def test_record_session_is_refused_for_aws_tunnels_and_must_be_a_bool(relay):
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels",
                                    json={"device_id": "d", "protocol": "aws", "services": ["SSH"],
                                          "record_session": True})
    assert status == 400 and "record_session" in body["error_msg"]
    status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels", json={"device_id": "d", "record_session": "yes"})
    assert status == 400 and body["error_code"] == "TUNNEL.400001"
    body = await relay.create("d", record_session=True)
    status, info = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{body['tunnel_id']}")
    assert info["record_session"] is True


async def test_expiry_source_eviction_and_batch_delete_are_audited_once(relay):
    async with aiohttp.ClientSession() as session:
        tunnel = await open_tunnel(relay, session, expires_in=120)
        first = await tunnel.connect("source")
        second = await tunnel.connect("source")
        assert (await receive_close(first))[0] == 4000
        relay.clock.advance(121)
        assert (await receive_close(second))[0] == 1000    # the sweeper expired the tunnel
        status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels/batch-delete",
                                        json={"tunnel_ids": [tunnel.tunnel_id]})
        assert status == 200, body
        events = await flushed(relay)
    kinds = [e["event"] for e in events]
    for kind in ("source_evicted", "tunnel_expired", "batch_delete", "tunnel_deleted"):
        assert kinds.count(kind) == 1, (kind, kinds)
    assert "tunnel_closed" not in kinds
    by_kind = {e["event"]: e for e in events}
    assert by_kind["tunnel_expired"]["actor"] == "relay"
    assert by_kind["batch_delete"]["actor"] == "alice"
    assert by_kind["batch_delete"]["detail"]["results"] == {tunnel.tunnel_id: "ok"}
    assert kinds.count("source_connected") == 2 and kinds.count("source_disconnected") == 2
