"""The REST client against a real relay app (no broker)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from relay.client.api import ApiError, RelayApi, Unreachable, source_uri
from tests.conftest import TOKEN_A, TOKEN_B
from tests.device.conftest import eventually


async def test_every_call(relay):
    async with RelayApi(relay.url, TOKEN_A, "proj-a") as api:
        made = await api.create("dev-1", description="d", expires_in=600)
        assert made["tunnel_uri"] == source_uri(relay.url, made["tunnel_id"])
        listed = await api.list_page(device_id="dev-1", status="OPEN")
        assert [t["tunnel_id"] for t in listed["tunnels"]] == [made["tunnel_id"]]
        assert (await api.show(made["tunnel_id"]))["description"] == "d"
        rotated = await api.rotate(made["tunnel_id"])
        assert rotated["tunnel_access_token"] != made["tunnel_access_token"] and "device_access_token" not in rotated
        await api.close(made["tunnel_id"])
        await api.delete(made["tunnel_id"])
        with pytest.raises(ApiError) as caught:
            await api.show(made["tunnel_id"])
        assert caught.value.status == 404 and caught.value.code == "TUNNEL.404000"


async def test_list_all_follows_pages_and_batches_merge(relay):
    async with RelayApi(relay.url, TOKEN_A, "proj-a") as api:
        ids = [(await api.create(f"dev-{i}"))["tunnel_id"] for i in range(57)]
        assert sorted(t["tunnel_id"] for t in await api.list_all()) == sorted(ids)
        closed = await api.batch("close", ids + ids[:3])   # duplicates are sent once
        assert closed["success_count"] == 57 and closed["failure_count"] == 0
        deleted = await api.batch("delete", ids[:2] + ["00000000-0000-4000-8000-000000000000"])
        assert deleted["success_count"] == 2 and deleted["failure_count"] == 1
        assert await api.list_all(status="CLOSED") != []


async def test_errors_name_their_code_and_never_the_token(relay):
    async with RelayApi(relay.url, "wrong-token-0123456789", "proj-a") as api:
        with pytest.raises(ApiError) as caught:
            await api.list_page()
    assert caught.value.code == "TUNNEL.401000" and "wrong-token" not in str(caught.value)
    async with RelayApi(relay.url, TOKEN_B, "proj-a") as api:
        with pytest.raises(ApiError, match="TUNNEL.403000"):
            await api.list_page()
    assert TOKEN_A not in repr(RelayApi(relay.url, TOKEN_A, "proj-a"))


async def test_no_relay_is_unreachable():
    async with RelayApi(f"http://127.0.0.1:{unused_port()}", TOKEN_A, "p", timeout=5) as api:
        with pytest.raises(Unreachable, match="cannot reach the relay"):
            await api.list_page()


def test_source_uri_keeps_scheme_host_and_prefix():
    assert source_uri("https://relay.example.com/base/", "t 1") == \
        "wss://relay.example.com/base/v5/iot/tunnels/t%201/source-connect"
    assert source_uri("http://127.0.0.1:8080", "t") == "ws://127.0.0.1:8080/v5/iot/tunnels/t/source-connect"


async def test_taking_over_a_tunnel_sends_the_device_a_new_token_only_when_its_end_is_not_connected(relay_factory,
                                                                                                     mosquitto):
    """`relay forward --tunnel ID` (take_over_tunnel) and every reuse: the source token is always
    rotated; the device token too, and published again, when the device end is not connected."""
    from relay.client.remote import take_over_tunnel
    from relay.notify import parse_notifies

    relay = await relay_factory(mqtt_url=mosquitto.url)
    created = await relay.create("dev-take")
    notices: list[str] = []

    async def delivered() -> bool:
        return (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}"))[1]["notify_status"] \
            == "DELIVERED"

    await eventually(delivered)   # the create's notify is behind us: the subscriber sees only what follows
    sub = await mosquitto.subscribe("$oc/devices/dev-take/sys/events/down")
    async with RelayApi(relay.url, TOKEN_A, "proj-a") as api:
        opened = await take_over_tunnel(api, created["tunnel_id"], notices.append)
        [(_, payload)] = await sub.messages()
        [notify] = parse_notifies(payload)
        assert notify.tunnel_id == created["tunnel_id"] and notify.token != created["device_access_token"]
        assert opened.token != created["tunnel_access_token"]
        assert "its device end is not connected" in notices[-1]

        # the device connects with its new token: a take-over leaves its token alone
        async with aiohttp.ClientSession() as http:
            device = await http.ws_connect(relay.settings.tunnel_uri(created["tunnel_id"], "device"),
                                           headers={"tunnel_access_token": notify.token})
            try:
                for _ in range(200):
                    if (await api.show(created["tunnel_id"]))["device_connect_state"]["status"] == "CONNECTED":
                        break
                    await asyncio.sleep(0.05)
                again = await take_over_tunnel(api, created["tunnel_id"], notices.append)
                assert "rotating its source token" in notices[-1]
                assert again.token != opened.token
                assert not device.closed
                assert (await api.show(created["tunnel_id"]))["device_connect_state"]["status"] == "CONNECTED"
            finally:
                await device.close()
