"""AWS-protocol tunnels through the same REST API: create, show, list, rotate, close, delete."""

from __future__ import annotations

import pytest

from tests.aws.conftest import BASE


async def test_create_answers_both_names_of_both_tokens(relay):
    body = await relay.create("dev-1", protocol="aws", services=["SSH", "HTTP"], expires_in=600)
    assert body["protocol"] == "aws" and body["services"] == ["SSH", "HTTP"]
    assert body["source_access_token"] == body["tunnel_access_token"]
    assert body["destination_access_token"] == body["device_access_token"]
    assert body["source_access_token"] != body["destination_access_token"]
    assert len(body["source_access_token"]) >= 43
    assert body["expires_in"] == 600
    port = relay.settings.port
    assert body["tunnel_uri"] == f"ws://127.0.0.1:{port}/tunnel?local-proxy-mode=source"
    assert body["device_tunnel_uri"] == f"ws://127.0.0.1:{port}/tunnel?local-proxy-mode=destination"


async def test_huawei_stays_the_default_and_answers_as_before(relay):
    body = await relay.create("dev-1")
    assert body["protocol"] == "huawei"
    assert "services" not in body and "source_access_token" not in body and "destination_access_token" not in body
    assert body["tunnel_uri"].endswith(f"/v5/iot/tunnels/{body['tunnel_id']}/source-connect")
    info = (await relay.call("GET", f"{BASE}/{body['tunnel_id']}"))[1]
    assert info["protocol"] == "huawei" and info["services"] is None
    explicit = await relay.create("dev-2", protocol="huawei", services=None)
    assert explicit["protocol"] == "huawei"


async def test_show_list_close_delete(relay):
    body = await relay.create("dev-1", protocol="aws", services=["SSH"])
    tunnel_id = body["tunnel_id"]
    status, info = await relay.call("GET", f"{BASE}/{tunnel_id}")
    assert status == 200
    assert info["protocol"] == "aws" and info["services"] == ["SSH"]
    assert info["status"] == "OPEN" and info["source_connect_state"]["status"] == "DISCONNECTED"
    assert "source_client_hash" not in info and "source_token_hash" not in info
    status, page = await relay.call("GET", f"{BASE}?device_id=dev-1")
    assert [t["protocol"] for t in page["tunnels"]] == ["aws"]
    assert (await relay.call("PUT", f"{BASE}/{tunnel_id}"))[0] == 204
    status, info = await relay.call("GET", f"{BASE}/{tunnel_id}")
    assert info["status"] == "CLOSED" and info["close_reason"] == "closed" and info["protocol"] == "aws"
    assert (await relay.call("DELETE", f"{BASE}/{tunnel_id}"))[0] == 204
    assert (await relay.call("GET", f"{BASE}/{tunnel_id}"))[0] == 404


async def test_one_open_tunnel_per_device_whatever_the_protocol(relay):
    await relay.create("dev-1", protocol="aws", services=["SSH"])
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-1"})
    assert status == 409 and body["error_code"] == "TUNNEL.409000"


async def test_rotation_answers_aws_names_too(relay):
    body = await relay.create("dev-1", protocol="aws", services=["SSH"])
    status, rotated = await relay.call("POST", f"{BASE}/{body['tunnel_id']}/rotate-token", json={"side": "all"})
    assert status == 200
    assert rotated["source_access_token"] == rotated["tunnel_access_token"] != body["source_access_token"]
    assert rotated["destination_access_token"] == rotated["device_access_token"] != body["destination_access_token"]
    status, rotated = await relay.call("POST", f"{BASE}/{body['tunnel_id']}/rotate-token", json={"side": "source"})
    assert "source_access_token" in rotated and "destination_access_token" not in rotated


async def test_hidden_device_token_hides_the_destination_token(relay_factory):
    relay = await relay_factory(expose_device_token=False)
    body = await relay.create("dev-1", protocol="aws", services=["SSH"])
    assert "destination_access_token" not in body and "device_access_token" not in body
    assert body["source_access_token"]


async def test_the_longest_and_the_most_services(relay):
    services = ["a" * 128, "b:c_d-e", "3"]
    body = await relay.create("dev-1", protocol="aws", services=services)
    assert body["services"] == services


@pytest.mark.parametrize("fields, fragment", [
    ({"protocol": "mqtt"}, "protocol must be 'huawei'"),
    ({"protocol": 1}, "protocol must be"),
    ({"protocol": "AWS", "services": ["SSH"]}, "protocol must be"),
    ({"protocol": "aws"}, "services is required for protocol 'aws'"),
    ({"protocol": "aws", "services": None}, "services is required"),
    ({"protocol": "aws", "services": []}, "1 to 3 service ids"),
    ({"protocol": "aws", "services": ["a", "b", "c", "d"]}, "1 to 3 service ids"),
    ({"protocol": "aws", "services": "SSH"}, "must be a list"),
    ({"protocol": "aws", "services": [""]}, "services[0] must be 1-128"),
    ({"protocol": "aws", "services": ["SSH", "a" * 129]}, "services[1] must be 1-128"),
    ({"protocol": "aws", "services": ["S S H"]}, "services[0]"),
    ({"protocol": "aws", "services": ["SSH,HTTP"]}, "services[0]"),
    ({"protocol": "aws", "services": [22]}, "services[0]"),
    ({"protocol": "aws", "services": ["SSH", "SSH"]}, "more than once"),
    ({"services": ["SSH"]}, "services is only for tunnels of protocol 'aws'"),
    ({"protocol": "huawei", "services": ["SSH"]}, "services is only for"),
])
async def test_bad_protocol_and_services_are_refused(relay, fields, fragment):
    status, body = await relay.call("POST", BASE, json={"device_id": "dev-1", **fields})
    assert status == 400, body
    assert body["error_code"] == "TUNNEL.400001"
    assert fragment in body["error_msg"]
    status, page = await relay.call("GET", BASE)
    assert page["tunnels"] == []


async def test_openapi_describes_the_new_fields(relay):
    status, doc = await relay.call("GET", "/openapi.json")
    schemas = doc["components"]["schemas"]
    create = schemas["CreateTunnelRequest"]
    assert set(create["properties"]) >= {"protocol", "services"}
    assert create["then"]["required"] == ["services"]
    assert {"source_access_token", "destination_access_token", "protocol"} <= set(schemas["CreateTunnelResponse"]["properties"])
    assert {"protocol", "services"} <= set(schemas["TunnelInfo"]["properties"])
