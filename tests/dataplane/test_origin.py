"""Cross-site WebSocket hijacking (issue 15, finding 5): a page of another origin must not open
a tunnel with the token a browser holds in the relay's cookie. Both protocols' endpoints."""

from __future__ import annotations

import base64
import os

import aiohttp
import orjson
import pytest

from relay.config import origin_key, parse_origins
from relay.errors import ConfigError

FOREIGN = "https://evil.example"
AWS_V3 = "aws.iot.securetunneling-3.0"


def upgrade_headers(**extra: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **extra}


async def huawei_tunnel(relay) -> tuple[str, dict]:
    body = await relay.create(f"dev-{os.urandom(4).hex()}")
    return f"{relay.url}/v5/iot/tunnels/{body['tunnel_id']}/source-connect", {
        "Cookie": f"tunnel_access_token={body['tunnel_access_token']}"}


async def aws_tunnel(relay) -> tuple[str, dict]:
    body = await relay.create(f"dev-{os.urandom(4).hex()}", protocol="aws", services=["SSH"])
    return f"{relay.url}/tunnel?local-proxy-mode=source", {
        "Cookie": f"awsiot-tunnel-token={body['source_access_token']}", "Sec-WebSocket-Protocol": AWS_V3}


ENDPOINTS = {"huawei": huawei_tunnel, "aws": aws_tunnel}


async def handshake(url: str, **headers: str) -> tuple[int, dict | None]:
    """A raw upgrade: (status, the JSON error body or None)."""
    async with aiohttp.ClientSession() as session, session.get(url, headers=upgrade_headers(**headers)) as resp:
        if resp.status == 101:
            return 101, None
        return resp.status, orjson.loads(await resp.read())


async def source_state(relay, tunnel_url: str) -> str | None:
    if "/tunnels/" not in tunnel_url:
        return None
    tunnel_id = tunnel_url.split("/tunnels/")[1].split("/")[0]
    status, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}")
    assert status == 200
    return body["source_connect_state"]["status"]


@pytest.mark.parametrize("protocol", ENDPOINTS)
async def test_a_foreign_page_with_the_cookie_is_refused(relay, protocol):
    url, cookie = await ENDPOINTS[protocol](relay)
    status, body = await handshake(url, Origin=FOREIGN, **cookie)
    assert status == 403, body
    assert body["error_code"] == "TUNNEL.403004"
    assert FOREIGN in body["error_msg"] and "--allowed-origins" in body["error_msg"]
    assert await source_state(relay, url) in (None, "DISCONNECTED")
    # nor with several Origin headers, one of them ours, nor an opaque origin
    for origin in ("null", f"{FOREIGN}, {relay.url}"):
        status, body = await handshake(url, Origin=origin, **cookie)
        assert status == 403 and body["error_code"] == "TUNNEL.403004", origin


@pytest.mark.parametrize("protocol", ENDPOINTS)
async def test_the_relay_s_own_pages_and_clients_without_origin_are_served(relay, protocol):
    url, cookie = await ENDPOINTS[protocol](relay)
    # The console's page: its Origin is the relay's own (here also the public URL's).
    assert (await handshake(url, Origin=relay.url, **cookie))[0] == 101
    url, cookie = await ENDPOINTS[protocol](relay) if protocol == "aws" else (url, cookie)
    # A client that is no browser sends no Origin.
    assert (await handshake(url, **cookie))[0] == 101


async def test_same_origin_follows_the_host_the_page_was_served_from(relay_factory):
    """Behind a proxy the relay is reached under the public URL's name, which the default
    allow-list holds; a page served under another name of the same relay (the Host it
    connects to) is same-origin. Huawei's C SDK sends `Origin: http://HOST` for Host HOST."""
    relay = await relay_factory(public_url="https://relay.example.com")
    url, cookie = await huawei_tunnel(relay)
    assert (await handshake(url, Origin="https://relay.example.com", **cookie))[0] == 101
    url, cookie = await huawei_tunnel(await relay_factory())
    status, _ = await handshake(url, Origin="http://relay.example.com", Host="relay.example.com", **cookie)
    assert status == 101
    # the same host on another port is another origin (cookies are not bound to ports)
    url, cookie = await huawei_tunnel(await relay_factory())
    host = url.split("/")[2]
    status, _ = await handshake(url, Origin=f"http://{host.split(':')[0]}:1", **cookie)
    assert status == 403


async def test_allowed_origins_replace_the_default(relay_factory):
    relay = await relay_factory(allowed_origins=parse_origins("https://console.example.com:8443"))
    url, cookie = await huawei_tunnel(relay)
    assert (await handshake(url, Origin="https://CONSOLE.example.com:8443", **cookie))[0] == 101
    url, cookie = await huawei_tunnel(await relay_factory(allowed_origins=parse_origins("https://console.example.com")))
    assert (await handshake(url, Origin=FOREIGN, **cookie))[0] == 403


def test_origins_are_normalized_and_checked():
    assert origin_key("HTTPS://Relay.Example.com:443/") == "https://relay.example.com"
    assert origin_key("http://[::1]:8080") == "http://[::1]:8080"
    assert origin_key("null") == "" and origin_key("file:///x") == ""
    assert parse_origins(" https://a.example , http://b.example:8080,") == ("https://a.example", "http://b.example:8080")
    for bad in ("a.example", "https://a.example/console", "ftp://a.example", "https://a.example:99999"):
        with pytest.raises(ConfigError, match="--allowed-origins"):
            parse_origins(bad)
