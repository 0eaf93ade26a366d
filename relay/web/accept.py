"""The one upgrade/accept path of the tunnel endpoints, both protocols' (relay/web/huawei_sockets.py,
relay/web/aws_sockets.py).

An endpoint opens with `begin_upgrade` (is the relay taking connections, is this a WebSocket
upgrade a page may make), reads and checks its protocol's credentials, authenticates them
through the service, and ends with `accept_tunnel`: the 101 answer, the transport handed from
aiohttp to the relay's own connection, and the connection attached to its tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable

from aiohttp import hdrs, web

from relay import errors
from relay.config import Settings, origin_key
from relay.model import Side, Tunnel
from relay.protocol import Pairing
from relay.protocol_aws import AwsPairing
from relay.web import rest
from relay.web.sockets import HUB, Hub, TunnelConnection, tune_transport
from relay.web.takeover import UpgradeResponse, hand_over_transport

log = logging.getLogger(__name__)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ACCESS_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,256}\Z")   # the shape of a tunnel access token, both protocols'


def begin_upgrade(request: web.Request) -> tuple[Hub, str]:
    """The hub, and the Sec-WebSocket-Accept value, once the relay takes connections and the
    request is a WebSocket upgrade it may serve."""
    hub = request.app[HUB]
    if not hub.accepting:
        raise errors.ShuttingDown("the relay is shutting down; connect again to reach another replica")
    return hub, check_upgrade(request)


def check_upgrade(request: web.Request) -> str:
    """The Sec-WebSocket-Accept value, once the request is a valid WebSocket upgrade from a
    client the relay may serve (`check_origin`)."""
    check_origin(request, request.app[rest.SETTINGS])
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket" or "upgrade" not in request.headers.get(hdrs.CONNECTION, "").lower():
        raise errors.NotWebSocket("this endpoint takes a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)")
    if request.headers.get(hdrs.SEC_WEBSOCKET_VERSION) != "13":
        raise errors.NotWebSocket("Sec-WebSocket-Version must be 13")
    key = request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise errors.NotWebSocket("Sec-WebSocket-Key must be 16 random bytes, base64-encoded")
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def check_origin(request: web.Request, settings: Settings) -> None:
    """Cross-site WebSocket hijacking: a browser sends the relay's cookie with a WebSocket
    that any page opens, and says which page in `Origin`. A handshake with an Origin must
    come from a trusted origin (--allowed-origins, by default the public URL's) or from the
    page's own server (its Origin names the Host it connects to: the relay's console, and
    Huawei's C SDK, which sends `Origin: http://HOST`). Clients that are not browsers send
    no Origin, and nothing changes for them."""
    values = request.headers.getall(hdrs.ORIGIN, [])
    if not values:
        return
    origin = values[0].strip()
    if len(values) == 1:
        if origin_key(origin) in settings.trusted_origins:
            return
        host = request.headers.get(hdrs.HOST, "").strip().lower()
        netloc = origin.partition("://")[2].rstrip("/").lower()
        if host and netloc == host and origin.lower().startswith(("http://", "https://")):
            return
    log.info("refused a WebSocket upgrade from a foreign origin", extra={"origin": origin[:200]})
    raise errors.OriginNotAllowed(
        f"pages of the origin {origin[:200]!r} may not open tunnel connections; the relay's operator can allow it "
        "with --allowed-origins (docs/security.md)")


def check_token_shape(token: str) -> None:
    """Refuse a token that no tunnel can have before the store is asked."""
    if not ACCESS_TOKEN_RE.match(token):
        raise errors.Unauthenticated("the access token must be 1-256 printable characters")


ConnectionMaker = Callable[[Pairing | AwsPairing, asyncio.Transport], TunnelConnection]


async def accept_tunnel(request: web.Request, hub: Hub, *, accept_key: str, subprotocol: str | None,
                        tunnel: Tunnel, side: Side, address: str, make: ConnectionMaker,
                        logger: logging.Logger, log_extra: dict[str, str]) -> web.StreamResponse:
    """After authentication: answer 101, hand the connection from aiohttp to the relay's own
    (`make`, given the tunnel's pairing and the transport) and attach it to its tunnel.
    `logger`/`log_extra`: the endpoint's, for its "connected" line."""
    response = UpgradeResponse(status=101, headers={
        hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade", hdrs.SEC_WEBSOCKET_ACCEPT: accept_key,
    })
    if subprotocol:
        response.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = subprotocol
    await response.prepare(request)
    if request.transport is None or request.transport.is_closing():
        return response
    hub.count_address(address)
    pairing = hub.pairing_for(tunnel)
    conn, early = hand_over_transport(request, lambda transport: make(pairing, transport))
    conn.address = address
    conn.actor = hub.audit.actor_of(tunnel, side)
    tune_transport(conn.transport, request.app[rest.SETTINGS])
    hub.attach(conn)
    logger.info("connected", extra=log_extra)
    if early:
        conn.data_received(early)
    conn.update_reading()  # aiohttp may have paused reading while it parsed the request
    conn.start_heartbeat(request.app[rest.SETTINGS].heartbeat_interval)
    response.force_close()  # the connection is the relay's now: aiohttp must not keep it alive
    return response
