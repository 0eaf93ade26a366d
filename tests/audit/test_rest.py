"""The audit trail and recordings over real HTTP: answers, filters, paging, authentication,
bad inputs, the .cast download, metrics."""

from __future__ import annotations

import uuid

import orjson
import pytest

from relay import errors
from relay.audit import EventType
from relay.auditlog import AuditLog
from relay.clock import format_time
from relay.recording import Recording, parse_cast
from relay.web import metrics, rest, sockets
from relay.web.audit_rest import AUDIT, CAST_TYPE
from tests.conftest import TOKEN_A, TOKEN_A2, TOKEN_B

AUDIT_PATH = "/v5/iot/proj-a/audit"
TUNNEL_1 = str(uuid.UUID(int=1))
TUNNEL_2 = str(uuid.UUID(int=2))


def audit_log(relay) -> AuditLog:  # type: ignore[no-untyped-def]
    return relay.client.server.app[AUDIT]


async def seed(relay) -> float:  # type: ignore[no-untyped-def]
    """Six events of proj-a a second apart, one of proj-b; returns the first one's time."""
    log, clock = audit_log(relay), relay.clock
    start = clock.now()
    script = [
        (EventType.TUNNEL_CREATED, "alice", TUNNEL_1, "dev-1", "ok", {"expires_in": 600}),
        (EventType.DEVICE_CONNECTED, "device", TUNNEL_1, "dev-1", "ok", {}),
        (EventType.SOURCE_CONNECTED, "source", TUNNEL_1, "dev-1", "ok", {}),
        (EventType.SSH_LOGIN_FAILED, "source", TUNNEL_1, "dev-1", "401", {"username": "root"}),
        (EventType.SSH_LOGIN_SUCCEEDED, "source", TUNNEL_1, "dev-1", "ok", {"username": "pi"}),
        (EventType.TUNNEL_CREATED, "ci", TUNNEL_2, "dev-2", "ok", {"expires_in": 60}),
    ]
    for kind, actor, tunnel, device, outcome, detail in script:
        log.record("proj-a", kind, actor=actor, tunnel_id=tunnel, device_id=device, outcome=outcome, detail=detail)
        clock.advance(1)
    log.record("proj-b", EventType.TUNNEL_CREATED, actor="bob", tunnel_id=TUNNEL_2, device_id="dev-1")
    assert await log.flush()
    return start


async def get(relay, query: str = "", token: str = TOKEN_A, path: str = AUDIT_PATH):  # type: ignore[no-untyped-def]
    return await relay.call("GET", path + query, token=token)


def kinds(body: dict) -> list[str]:
    return [e["event"] for e in body["events"]]


async def test_the_audit_log_is_part_of_the_app(relay):
    log = audit_log(relay)
    assert relay.client.server.app[rest.SERVICE].audit is log
    assert log.retention == relay.settings.audit_retention and log.queue_size == relay.settings.audit_queue_size


async def test_events_newest_first_with_every_field(relay):
    start = await seed(relay)
    status, body = await get(relay)
    assert status == 200
    assert kinds(body) == ["tunnel_created", "ssh_login_succeeded", "ssh_login_failed", "source_connected",
                           "device_connected", "tunnel_created"]
    assert body["count"] == 6 and body["marker"] is None
    failed = body["events"][2]
    assert failed == {"event_id": failed["event_id"], "time": format_time(start + 3), "timestamp": start + 3,
                      "event": "ssh_login_failed", "actor": "source", "tunnel_id": TUNNEL_1, "device_id": "dev-1",
                      "outcome": "401", "detail": {"username": "root"}}
    # a second token of the project sees the same; another project sees its own only
    assert kinds((await get(relay, token=TOKEN_A2))[1]) == kinds(body)
    status, other = await get(relay, token=TOKEN_B, path="/v5/iot/proj-b/audit")
    assert status == 200 and [e["actor"] for e in other["events"]] == ["bob"]


async def test_filters(relay):
    start = await seed(relay)
    assert kinds((await get(relay, "?device_id=dev-2"))[1]) == ["tunnel_created"]
    assert len((await get(relay, f"?tunnel_id={TUNNEL_1}"))[1]["events"]) == 5
    body = (await get(relay, "?event_type=ssh_login_failed,ssh_login_succeeded"))[1]
    assert kinds(body) == ["ssh_login_succeeded", "ssh_login_failed"]
    body = (await get(relay, "?event_type=ssh_login_failed&event_type=tunnel_created&device_id=dev-1"))[1]
    assert kinds(body) == ["ssh_login_failed", "tunnel_created"]
    since, until = format_time(start + 1), format_time(start + 4)
    assert kinds((await get(relay, f"?since={since}&until={until}"))[1]) == [
        "ssh_login_failed", "source_connected", "device_connected"]
    assert len((await get(relay, f"?since={format_time(start + 4)}"))[1]["events"]) == 2
    extended = format_time(start + 4)
    extended = f"{extended[:4]}-{extended[4:6]}-{extended[6:8]}T{extended[9:11]}:{extended[11:13]}:{extended[13:15]}.000Z"
    assert len((await get(relay, f"?since={extended}"))[1]["events"]) == 2
    assert (await get(relay, f"?since={until}&until={since}"))[1]["events"] == []


async def test_paging(relay):
    await seed(relay)
    seen: list[str] = []
    marker = None
    for _ in range(3):
        status, body = await get(relay, "?limit=2" + (f"&marker={marker}" if marker else ""))
        assert status == 200 and body["count"] == len(body["events"]) == 2
        seen += [e["event_id"] for e in body["events"]]
        marker = body["marker"]
    assert marker is None
    assert seen == [e["event_id"] for e in (await get(relay))[1]["events"]]


@pytest.mark.parametrize("query, fragment", [
    ("?since=yesterday", "since"),
    ("?until=2026-13-01T00:00:00Z", "until"),
    ("?since=20261124T161807", "since"),
    ("?event_type=tunnel_teleported", "tunnel_teleported"),
    ("?event_type=tunnel_created,", "event_type"),
    ("?limit=0", "limit"),
    ("?limit=1001", "limit"),
    ("?limit=ten", "limit"),
    ("?marker=nope", "marker"),
    ("?marker=1750000000.0_", "marker"),
    ("?marker=inf_abc", "marker"),
    ("?device_id=bad%20id", "device_id"),
    ("?tunnel_id=not-a-uuid", "tunnel_id"),
    ("?colour=red", "unknown query parameter"),
    ("?limit=1&limit=2", "more than once"),
])
async def test_bad_inputs_are_400_with_the_standard_body(relay, query, fragment):
    status, body = await get(relay, query)
    assert status == 400 and body["error_code"] == errors.InvalidParameter.code, body
    assert fragment in body["error_msg"]


@pytest.mark.parametrize("path", [AUDIT_PATH, "/v5/iot/proj-a/recordings", "/v5/iot/proj-a/recordings/s1"])
async def test_authentication_as_for_tunnels(relay, path):
    assert (await get(relay, token=None, path=path))[1]["error_code"] == errors.Unauthenticated.code
    status, body = await get(relay, token="unknown-token-0123456789abc", path=path)
    assert status == 401 and body["error_code"] == errors.Unauthenticated.code
    status, body = await get(relay, token=TOKEN_B, path=path)
    assert status == 403 and body["error_code"] == errors.Forbidden.code
    status, body = await relay.call("POST", path, json={})
    assert status == 405 and body["error_code"] == errors.MethodNotAllowed.code


# -- recordings -------------------------------------------------------------------------------

CAST = ('{"version": 2, "width": 128, "height": 30, "timestamp": 1750000000, "title": "pi@dev-1"}\n'
        '[0.0, "m", "login as pi"]\n[0.5, "o", "pi@dev-1:~$ "]\n[1.0, "i", "ls\\r"]\n[1.1, "o", "a  b\\u00e9\\r\\n"]\n')


def recording(session: str, project: str = "proj-a", started: float = 1_750_000_000.0, device: str = "dev-1",
              tunnel: str = TUNNEL_1) -> Recording:
    data = CAST.encode()
    return Recording(session_id=session, project_id=project, tunnel_id=tunnel, device_id=device, username="pi",
                     started=started, ended=started + 12.5, truncated=False, size=len(data), data=data)


async def test_a_recording_downloads_as_asciicast(relay):
    log = audit_log(relay)
    log.save_recording(recording("a1b2c3"))
    assert await log.flush()
    async with relay.client.get("/v5/iot/proj-a/recordings/a1b2c3", headers={"X-Auth-Token": TOKEN_A}) as resp:
        assert resp.status == 200 and resp.content_type == CAST_TYPE
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "a1b2c3.cast" in resp.headers["Content-Disposition"]
        data = await resp.read()
    assert data == CAST.encode()
    assert parse_cast(data)[1][3] == (1.1, "o", "a  b\u00e9\r\n")
    # the session_recorded event names it
    status, body = await get(relay, "?event_type=session_recorded")
    (event,) = body["events"]
    assert event["detail"]["session_id"] == "a1b2c3" and event["tunnel_id"] == TUNNEL_1


async def test_unknown_or_foreign_recordings_are_404(relay):
    log = audit_log(relay)
    log.save_recording(recording("theirs", project="proj-b"))
    assert await log.flush()
    for session in ("theirs", "nothing-here"):
        status, body = await get(relay, path=f"/v5/iot/proj-a/recordings/{session}")
        assert status == 404 and body["error_code"] == errors.RecordingNotFound.code == "TUNNEL.404002"
    status, _ = await get(relay, token=TOKEN_B, path="/v5/iot/proj-b/recordings/theirs")
    assert status == 200
    status, body = await get(relay, path="/v5/iot/proj-a/recordings/bad_id!")
    assert status == 400 and body["error_code"] == errors.InvalidParameter.code


async def test_recordings_are_listed_newest_first(relay):
    log = audit_log(relay)
    for n in range(5):
        log.save_recording(recording(f"s{n}", started=1_750_000_000.0 + n, device="dev-1" if n % 2 else "dev-2"))
    log.save_recording(recording("foreign", project="proj-b"))
    assert await log.flush()
    status, body = await get(relay, "?limit=3", path="/v5/iot/proj-a/recordings")
    assert status == 200 and [r["session_id"] for r in body["recordings"]] == ["s4", "s3", "s2"]
    first = body["recordings"][0]
    assert first == {"session_id": "s4", "tunnel_id": TUNNEL_1, "device_id": "dev-2", "username": "pi",
                     "started": format_time(1_750_000_004.0), "ended": format_time(1_750_000_016.5),
                     "duration": 12.5, "truncated": False, "size": len(CAST.encode())}
    status, body = await get(relay, f"?limit=3&marker={body['marker']}", path="/v5/iot/proj-a/recordings")
    assert [r["session_id"] for r in body["recordings"]] == ["s1", "s0"] and body["marker"] is None
    status, body = await get(relay, "?device_id=dev-1", path="/v5/iot/proj-a/recordings")
    assert [r["session_id"] for r in body["recordings"]] == ["s3", "s1"]
    status, body = await get(relay, "?limit=101", path="/v5/iot/proj-a/recordings")
    assert status == 400


async def test_metrics(relay):
    log = audit_log(relay)
    log.record("proj-a", EventType.TUNNEL_CREATED, actor="alice")
    assert await log.flush()
    log.record("proj-a", EventType.TUNNEL_CLOSED, actor="alice")    # still queued
    log.dropped += 2   # as if the queue had been full twice
    app = relay.client.server.app
    text = await metrics.render(app[sockets.HUB], app[rest.SERVICE].store)
    lines = set(text.splitlines())
    # prometheus_client writes every value as a float (relay/web/metrics.py)
    assert {"relay_audit_events_written_total 1.0", "relay_audit_events_dropped_total 2.0",
            "relay_audit_write_failures_total 0.0", "relay_audit_queue_depth 1.0",
            "relay_audit_recordings_saved_total 0.0", "relay_audit_recordings_dropped_total 0.0"} <= lines
    assert "# TYPE relay_audit_queue_depth gauge" in lines


async def test_the_openapi_document_names_the_paths(relay):
    status, doc = await relay.call("GET", "/openapi.json", token=None)
    assert status == 200
    for path in ("/v5/iot/{project_id}/audit", "/v5/iot/{project_id}/recordings",
                 "/v5/iot/{project_id}/recordings/{session_id}"):
        assert "get" in doc["paths"][path]
    assert doc["paths"]["/v5/iot/{project_id}/recordings/{session_id}"]["get"]["responses"]["200"]["content"] \
        == {CAST_TYPE: {"schema": {"type": "string"}}}
    assert orjson.dumps(doc)


async def test_batch_closes_of_unknown_ids_cannot_flood_the_trail(relay_factory):
    """The probe: batch closes of 100 unknown ids made 5,050 events (2.4 MB) in 0.3 s. Now a
    batch is one event, and a project over its rate (here 20 at once) is cut off, counted in
    the metrics, while other projects go on."""
    relay = await relay_factory(audit_burst=20, audit_rate=1.0)
    for _ in range(50):
        ids = [str(uuid.uuid4()) for _ in range(100)]
        status, body = await relay.call("POST", "/v5/iot/proj-a/tunnels/batch-close", json={"tunnel_ids": ids})
        assert status == 200 and body["failure_count"] == 100
    status, _ = await relay.call("POST", "/v5/iot/proj-b/tunnels/batch-close", token=TOKEN_B,
                                 json={"tunnel_ids": [str(uuid.uuid4())]})
    assert status == 200
    log = audit_log(relay)
    assert await log.flush(5)
    status, page = await relay.call("GET", AUDIT_PATH + "?limit=1000")
    assert status == 200 and page["count"] <= 20
    assert {e["event"] for e in page["events"]} == {"batch_close"}
    assert log.limited["proj-a"] == 50 - 20 and "proj-b" not in log.limited
    status, other = await relay.call("GET", "/v5/iot/proj-b/audit", token=TOKEN_B)
    assert status == 200 and other["count"] == 1
    app = relay.client.server.app
    text = await metrics.render(app[sockets.HUB], app[rest.SERVICE].store)
    assert 'relay_audit_events_limited_total{project_id="proj-a"} 30.0' in text.splitlines()
