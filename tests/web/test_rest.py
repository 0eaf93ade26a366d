"""The REST API of the control plane: every endpoint, rule and error."""

from __future__ import annotations

import re
import uuid

import pytest

from relay import errors
from tests.conftest import TOKEN_A, TOKEN_A2, TOKEN_B

BASE = "/v5/iot/proj-a/tunnels"
TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")


def assert_error(status: int, body: dict, expected: type[errors.ApiError]) -> None:
    assert status == expected.status, body
    assert body["error_code"] == expected.code, body
    assert isinstance(body["error_msg"], str) and body["error_msg"]


# -- create ------------------------------------------------------------------------------

async def test_create_returns_source_token_and_uri(relay):
    body = await relay.create("dev-1")
    assert set(body) >= {"tunnel_id", "tunnel_access_token", "expires_in", "tunnel_uri"}
    assert uuid.UUID(body["tunnel_id"])
    assert body["expires_in"] == 86400
    assert body["tunnel_uri"] == f"ws://127.0.0.1:{relay.settings.port}/v5/iot/tunnels/{body['tunnel_id']}/source-connect"
    assert body["device_tunnel_uri"].endswith(f"/v5/iot/tunnels/{body['tunnel_id']}/device-connect")
    # two distinct tokens of at least 128 bits
    assert body["tunnel_access_token"] != body["device_access_token"]
    assert len(body["tunnel_access_token"]) >= 22


async def test_create_uses_wss_for_https_public_url(relay_factory):
    relay = await relay_factory(public_url="https://relay.example.com/base/")
    body = await relay.create("dev-1")
    assert body["tunnel_uri"] == f"wss://relay.example.com/base/v5/iot/tunnels/{body['tunnel_id']}/source-connect"


async def test_hidden_device_token(relay_factory):
    relay = await relay_factory(expose_device_token=False)
    body = await relay.create("dev-1")
    assert "device_access_token" not in body


async def test_create_with_optional_fields_and_shorter_lifetime(relay):
    body = await relay.create("dev-2", description="field unit 7", custom_info="rack=3", expires_in=60)
    assert body["expires_in"] == 60
    status, info = await relay.call("GET", f"{BASE}/{body['tunnel_id']}")
    assert status == 200
    assert info["description"] == "field unit 7"
    assert info["custom_info"] == "rack=3"
    assert info["status"] == "OPEN"
    assert info["closed_time"] is None
    assert TIME_RE.match(info["create_time"]) and TIME_RE.match(info["expires_at"])
    assert info["source_connect_state"] == {"status": "DISCONNECTED", "last_update_time": None}
    assert info["device_connect_state"] == {"status": "DISCONNECTED", "last_update_time": None}
    assert "source_token_hash" not in info and "device_token_hash" not in info


@pytest.mark.parametrize("body, fragment", [
    ({}, "device_id is required"),
    ({"device_id": ""}, "device_id"),
    ({"device_id": "a" * 129}, "device_id"),
    ({"device_id": "bad id"}, "device_id"),
    ({"device_id": "dev/../x"}, "device_id"),
    ({"device_id": 42}, "device_id"),
    ({"device_id": "d", "expires_in": 59}, "expires_in"),
    ({"device_id": "d", "expires_in": 86401}, "expires_in"),
    ({"device_id": "d", "expires_in": "60"}, "expires_in"),
    ({"device_id": "d", "expires_in": True}, "expires_in"),
    ({"device_id": "d", "expires_in": 60.5}, "expires_in"),
    ({"device_id": "d", "description": 3}, "description"),
    ({"device_id": "d", "description": "x" * 1025}, "description"),
    ({"device_id": "d", "custom_info": {"a": 1}}, "custom_info"),
    ({"device_id": "d", "colour": "red"}, "unknown field"),
    ([1, 2], "JSON object"),
])
async def test_create_rejects_bad_fields(relay, body, fragment):
    status, answer = await relay.call("POST", BASE, json=body)
    assert_error(status, answer, errors.InvalidParameter)
    assert fragment in answer["error_msg"]
    # nothing was created
    status, page = await relay.call("GET", BASE)
    assert page["page"]["count"] == 0


async def test_device_id_accepts_huawei_alphabet(relay):
    await relay.create("A-z_0-9" + "x" * 121)


async def test_invalid_json_and_content_type(relay):
    status, body = await relay.call("POST", BASE, data=b'{"device_id": ', headers={"Content-Type": "application/json"})
    assert_error(status, body, errors.InvalidJson)
    status, body = await relay.call("POST", BASE, data=b'device_id=x', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(status, body, errors.UnsupportedContentType)
    deep = b"[" * 5000 + b"]" * 5000
    status, body = await relay.call("POST", BASE, data=deep, headers={"Content-Type": "application/json"})
    assert_error(status, body, errors.InvalidJson)


async def test_body_over_limit(relay):
    big = b'{"device_id": "d", "description": "' + b"x" * 70_000 + b'"}'
    status, body = await relay.call("POST", BASE, data=big, headers={"Content-Type": "application/json"})
    assert_error(status, body, errors.BodyTooLarge)


async def test_one_open_tunnel_per_device(relay):
    first = await relay.create("dev-1")
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-1"})
    assert_error(status, body, errors.DeviceBusy)
    # another project may use the same device id
    await relay.create("dev-1", project="proj-b", token=TOKEN_B)
    # once closed, the device may get a new tunnel
    assert (await relay.call("PUT", f"{BASE}/{first['tunnel_id']}"))[0] == 204
    await relay.create("dev-1")


async def test_quota_counts_every_tunnel_not_deleted(relay_factory):
    relay = await relay_factory(max_tunnels_per_project=3)
    ids = [(await relay.create(f"dev-{i}"))["tunnel_id"] for i in range(3)]
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-9"})
    assert_error(status, body, errors.QuotaExceeded)
    assert "3" in body["error_msg"]
    await relay.call("PUT", f"{BASE}/{ids[0]}")
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-9"})
    assert_error(status, body, errors.QuotaExceeded)  # closed tunnels still count
    assert (await relay.call("DELETE", f"{BASE}/{ids[0]}"))[0] == 204
    await relay.create("dev-9")
    # the quota is per project
    await relay.create("dev-1", project="proj-b", token=TOKEN_B)


# -- authentication --------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", BASE), ("GET", BASE), ("GET", f"{BASE}/{uuid.uuid4()}"), ("PUT", f"{BASE}/{uuid.uuid4()}"),
    ("DELETE", f"{BASE}/{uuid.uuid4()}"), ("POST", f"{BASE}/batch-close"), ("POST", f"{BASE}/batch-delete"),
    ("POST", f"{BASE}/{uuid.uuid4()}/rotate-token"),
])
async def test_every_endpoint_requires_a_token(relay, method, path):
    status, body = await relay.call(method, path, token=None, json={"device_id": "d"})
    assert_error(status, body, errors.Unauthenticated)
    status, body = await relay.call(method, path, token="not-a-known-token-at-all", json={"device_id": "d"})
    assert_error(status, body, errors.Unauthenticated)
    status, body = await relay.call(method, path, token=TOKEN_B, json={"device_id": "d"})
    assert_error(status, body, errors.Forbidden)


async def test_two_tokens_of_one_project_share_its_tunnels(relay):
    created = await relay.create("dev-1", token=TOKEN_A)
    status, info = await relay.call("GET", f"{BASE}/{created['tunnel_id']}", token=TOKEN_A2)
    assert status == 200 and info["device_id"] == "dev-1"


async def test_projects_cannot_see_each_others_tunnels(relay):
    theirs = await relay.create("dev-1", project="proj-b", token=TOKEN_B)
    tid = theirs["tunnel_id"]
    for method in ("GET", "PUT", "DELETE"):
        status, body = await relay.call(method, f"{BASE}/{tid}")
        assert_error(status, body, errors.TunnelNotFound)
    status, body = await relay.call("POST", f"{BASE}/{tid}/rotate-token", json={"side": "all"})
    assert_error(status, body, errors.TunnelNotFound)
    status, page = await relay.call("GET", BASE)
    assert page["tunnels"] == []
    status, body = await relay.call("POST", f"{BASE}/batch-close", json={"tunnel_ids": [tid]})
    assert body["results"][0]["error_code"] == errors.TunnelNotFound.code
    status, info = await relay.call("GET", f"/v5/iot/proj-b/tunnels/{tid}", token=TOKEN_B)
    assert info["status"] == "OPEN"


async def test_instance_id_enforced_when_configured(relay_factory):
    relay = await relay_factory(instance_id="inst-1")
    status, body = await relay.call("GET", BASE)
    assert_error(status, body, errors.InstanceMismatch)
    status, body = await relay.call("GET", BASE, headers={"Instance-Id": "inst-2"})
    assert_error(status, body, errors.InstanceMismatch)
    status, body = await relay.call("GET", BASE, headers={"Instance-Id": "inst-1"})
    assert status == 200


async def test_instance_id_accepted_when_not_configured(relay):
    status, _ = await relay.call("GET", BASE, headers={"Instance-Id": "anything"})
    assert status == 200


# -- show, close, delete -------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["not-a-uuid", "..%2F..%2Fetc", "D144A524-1997-4B99-94BF-F27128DA8A34"])
async def test_bad_tunnel_ids(relay, bad):
    status, body = await relay.call("GET", f"{BASE}/{bad}")
    assert_error(status, body, errors.InvalidParameter)


async def test_unknown_tunnel(relay):
    tid = str(uuid.uuid4())
    for method in ("GET", "PUT", "DELETE"):
        status, body = await relay.call(method, f"{BASE}/{tid}")
        assert_error(status, body, errors.TunnelNotFound)


async def test_close_then_delete(relay):
    tid = (await relay.create("dev-1"))["tunnel_id"]
    status, body = await relay.call("DELETE", f"{BASE}/{tid}")
    assert_error(status, body, errors.TunnelNotClosed)
    relay.clock.advance(5)
    status, body = await relay.call("PUT", f"{BASE}/{tid}")
    assert status == 204 and body == b""
    status, info = await relay.call("GET", f"{BASE}/{tid}")
    assert info["status"] == "CLOSED"
    assert info["close_reason"] == "closed"
    assert TIME_RE.match(info["closed_time"])
    # closing again is harmless
    assert (await relay.call("PUT", f"{BASE}/{tid}"))[0] == 204
    assert (await relay.call("DELETE", f"{BASE}/{tid}"))[0] == 204
    status, body = await relay.call("GET", f"{BASE}/{tid}")
    assert_error(status, body, errors.TunnelNotFound)


# -- list ------------------------------------------------------------------------------------

async def test_list_filters_and_paging(relay):
    ids = [(await relay.create(f"dev-{i}"))["tunnel_id"] for i in range(7)]
    await relay.call("PUT", f"{BASE}/{ids[1]}")
    status, page = await relay.call("GET", BASE)
    assert status == 200 and page["page"]["count"] == 7
    assert [t["tunnel_id"] for t in page["tunnels"]] == ids

    status, page = await relay.call("GET", f"{BASE}?device_id=dev-3")
    assert [t["tunnel_id"] for t in page["tunnels"]] == [ids[3]]
    status, page = await relay.call("GET", f"{BASE}?status=CLOSED")
    assert [t["tunnel_id"] for t in page["tunnels"]] == [ids[1]]
    status, page = await relay.call("GET", f"{BASE}?status=OPEN")
    assert page["page"]["count"] == 6
    status, page = await relay.call("GET", f"{BASE}?tunnel_id={ids[5]}")
    assert [t["tunnel_id"] for t in page["tunnels"]] == [ids[5]]

    # marker paging walks every tunnel once
    seen, marker = [], None
    while True:
        query = "?limit=3" + (f"&marker={marker}" if marker else "")
        status, page = await relay.call("GET", BASE + query)
        seen += [t["tunnel_id"] for t in page["tunnels"]]
        marker = page["page"]["marker"]
        if not page["tunnels"]:
            break
    assert seen == ids
    # offset paging
    status, page = await relay.call("GET", f"{BASE}?limit=2&offset=4")
    assert [t["tunnel_id"] for t in page["tunnels"]] == ids[4:6]


@pytest.mark.parametrize("query, fragment", [
    ("limit=0", "limit"), ("limit=51", "limit"), ("limit=x", "limit"), ("offset=-1", "offset"),
    ("marker=abc", "marker"), ("status=open", "status"), ("device_id=a%20b", "device_id"),
    ("tunnel_id=nope", "tunnel_id"), ("colour=red", "unknown query parameter"),
])
async def test_list_rejects_bad_queries(relay, query, fragment):
    status, body = await relay.call("GET", f"{BASE}?{query}")
    assert_error(status, body, errors.InvalidParameter)
    assert fragment in body["error_msg"]


# -- batch -----------------------------------------------------------------------------------

async def test_batch_close_and_delete_report_each_id(relay):
    ids = [(await relay.create(f"dev-{i}"))["tunnel_id"] for i in range(3)]
    missing = str(uuid.uuid4())
    status, body = await relay.call("POST", f"{BASE}/batch-delete", json={"tunnel_ids": [ids[0], missing]})
    assert status == 200
    assert body["success_count"] == 0 and body["failure_count"] == 2
    assert body["results"][0]["error_code"] == errors.TunnelNotClosed.code
    assert body["results"][1]["error_code"] == errors.TunnelNotFound.code

    status, body = await relay.call("POST", f"{BASE}/batch-close", json={"tunnel_ids": [ids[0], ids[1], missing]})
    assert [r["result"] for r in body["results"]] == ["SUCCESS", "SUCCESS", "FAILED"]
    assert body["success_count"] == 2 and body["failure_count"] == 1

    status, body = await relay.call("POST", f"{BASE}/batch-delete", json={"tunnel_ids": ids})
    assert [r["result"] for r in body["results"]] == ["SUCCESS", "SUCCESS", "FAILED"]
    status, page = await relay.call("GET", BASE)
    assert [t["tunnel_id"] for t in page["tunnels"]] == [ids[2]]


@pytest.mark.parametrize("body", [
    {}, {"tunnel_ids": []}, {"tunnel_ids": "x"}, {"tunnel_ids": ["nope"]},
    {"tunnel_ids": [str(uuid.UUID(int=1))] * 2}, {"tunnel_ids": [str(uuid.uuid4()) for _ in range(101)]},
    {"tunnel_ids": [str(uuid.uuid4())], "extra": 1},
])
async def test_batch_rejects_bad_bodies(relay, body):
    for action in ("batch-close", "batch-delete"):
        status, answer = await relay.call("POST", f"{BASE}/{action}", json=body)
        assert_error(status, answer, errors.InvalidParameter)


# -- rotation -------------------------------------------------------------------------------

@pytest.mark.parametrize("side, source, device", [("source", True, False), ("device", False, True), ("all", True, True)])
async def test_rotate_tokens(relay, side, source, device):
    created = await relay.create("dev-1", expires_in=600)
    relay.clock.advance(100)
    status, body = await relay.call("POST", f"{BASE}/{created['tunnel_id']}/rotate-token", json={"side": side})
    assert status == 200
    assert body["expires_in"] == 500  # the lifetime is not extended
    assert ("tunnel_access_token" in body) is source
    assert ("device_access_token" in body) is device
    if source:
        assert body["tunnel_access_token"] != created["tunnel_access_token"]
    if device:
        assert body["device_access_token"] != created["device_access_token"]


async def test_rotate_without_body_rotates_both(relay):
    created = await relay.create("dev-1")
    status, body = await relay.call("POST", f"{BASE}/{created['tunnel_id']}/rotate-token")
    assert status == 200 and "tunnel_access_token" in body and "device_access_token" in body


async def test_rotate_errors(relay):
    created = await relay.create("dev-1")
    tid = created["tunnel_id"]
    status, body = await relay.call("POST", f"{BASE}/{tid}/rotate-token", json={"side": "both"})
    assert_error(status, body, errors.InvalidParameter)
    await relay.call("PUT", f"{BASE}/{tid}")
    status, body = await relay.call("POST", f"{BASE}/{tid}/rotate-token", json={"side": "all"})
    assert_error(status, body, errors.TunnelClosed)


# -- expiry and retention ---------------------------------------------------------------------

async def test_expired_tunnel_reads_as_closed_at_its_expiry(relay):
    created = await relay.create("dev-1", expires_in=60)
    tid = created["tunnel_id"]
    relay.clock.advance(59)
    assert (await relay.call("GET", f"{BASE}/{tid}"))[1]["status"] == "OPEN"
    relay.clock.advance(2)
    status, info = await relay.call("GET", f"{BASE}/{tid}")
    assert info["status"] == "CLOSED" and info["close_reason"] == "expired"
    assert info["closed_time"] == info["expires_at"]
    # the device may get a new tunnel at once
    await relay.create("dev-1")


async def test_sweeper_expires_and_purges_without_requests(relay_factory):
    import asyncio
    relay = await relay_factory(closed_retention=3600)
    tid = (await relay.create("dev-1", expires_in=60))["tunnel_id"]
    service = relay.client.server.app[__import__("relay.web.rest", fromlist=["SERVICE"]).SERVICE]
    relay.clock.advance(61)
    for _ in range(100):
        if (await service.store.get(tid)).status.value == "CLOSED":
            break
        await asyncio.sleep(0.02)
    assert (await service.store.get(tid)).status.value == "CLOSED"
    relay.clock.advance(3601)
    for _ in range(100):
        if await service.store.get(tid) is None:
            break
        await asyncio.sleep(0.02)
    assert await service.store.get(tid) is None


# -- unknown routes ---------------------------------------------------------------------------

async def test_unknown_path_and_method(relay):
    status, body = await relay.call("GET", "/v5/iot/proj-a/nothing")
    assert_error(status, body, errors.RouteNotFound)
    status, body = await relay.call("PATCH", f"{BASE}/{uuid.uuid4()}")
    assert_error(status, body, errors.MethodNotAllowed)


async def test_openapi_document_is_served(relay):
    status, doc = await relay.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert "/v5/iot/{project_id}/tunnels" in doc["paths"]


@pytest.mark.parametrize("path", [
    f"{BASE}/%0d%0aSet-Cookie:%20stolen=1",
    f"{BASE}/x%0d%0a%0d%0a<html>",
    "/v5/iot/proj-a%0d%0aSet-Cookie:%20stolen=1/tunnels",
])
async def test_header_injection_through_the_path_goes_nowhere(relay, path):
    async with relay.client.request("GET", path, headers={"X-Auth-Token": TOKEN_A}) as resp:
        body = await resp.json()
        assert resp.status in (400, 403, 404), body
        assert "Set-Cookie" not in resp.headers and "stolen" not in "".join(resp.headers.values())
        assert set(body) == {"error_code", "error_msg"}


async def test_a_second_auth_header_does_not_widen_access(relay):
    theirs = await relay.create("dev-1", project="proj-b", token=TOKEN_B)
    async with relay.client.request("GET", f"/v5/iot/proj-b/tunnels/{theirs['tunnel_id']}",
                                    headers=[("X-Auth-Token", TOKEN_A), ("X-Auth-Token", TOKEN_B)]) as resp:
        assert resp.status == 403  # the first header decides; a smuggled second one is ignored


async def test_an_id_with_a_trailing_newline_is_refused(relay):
    # `$` matches before a final newline: ids are checked to their very end
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-1\n"})
    assert_error(status, body, errors.InvalidParameter)
    status, body = await relay.call("GET", f"{BASE}?device_id=dev-1%0A")
    assert_error(status, body, errors.InvalidParameter)
    status, body = await relay.call("GET", "/v5/iot/proj-a%0A/tunnels")
    assert status in (400, 403, 404) and status != 200, body
