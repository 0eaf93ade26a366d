"""The Huawei IoTDA v5 tunnel endpoints: `/v5/iot/tunnels/{tunnel_id}/source-connect` and
`device-connect` (docs/protocol.md).

What is Huawei's here is where the credentials come from (the tunnel id in the path, the token
in a header, a subprotocol or a cookie); the upgrade and the accept are the one path of both
protocols (relay/web/accept.py), the authentication is the service's
(`TunnelService.authenticate_socket`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web

from relay import errors
from relay.model import Side, TunnelProtocol
from relay.protocol import Pairing
from relay.protocol_aws import AwsPairing
from relay.tokens import hash_token
from relay.web import validation
from relay.web.accept import accept_tunnel, begin_upgrade, check_token_shape
from relay.web.sockets import HUB, Hub, TunnelConnection

log = logging.getLogger(__name__)

SUBPROTOCOL = "iot-tunnel.v1"
TOKEN_SUBPROTOCOL_PREFIX = "access-token."   # browsers: `new WebSocket(url, ["iot-tunnel.v1", "access-token." + token])`
TOKEN_COOKIE = "tunnel_access_token"


def _access_token(request: web.Request) -> tuple[str | None, str | None]:
    """The token, from (in order) the `tunnel_access_token` header, `Authorization: Bearer`,
    the `access-token.` subprotocol, or the cookie; and the subprotocol to answer with."""
    offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()]
    answer = SUBPROTOCOL if SUBPROTOCOL in offered else None
    token = request.headers.get("tunnel_access_token")
    if token is None:
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    if token is None:
        for proto in offered:
            if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                token = proto[len(TOKEN_SUBPROTOCOL_PREFIX):]
                answer = answer or SUBPROTOCOL
                break
    if token is None:
        token = request.cookies.get(TOKEN_COOKIE)
    if token is not None:
        token = token.strip()
    return token or None, answer


async def _connect(request: web.Request, side: Side) -> web.StreamResponse:
    hub, accept_key = begin_upgrade(request)
    try:
        tunnel_id = validation.tunnel_id(request.match_info["tunnel_id"])
    except errors.InvalidParameter:
        raise errors.TunnelNotFound("no tunnel has this id") from None
    token, subprotocol = _access_token(request)
    if token is None:
        raise errors.Unauthenticated(
            "send the tunnel's access token in the tunnel_access_token header (or Authorization: Bearer)")
    check_token_shape(token)
    address = request.remote or ""
    hub.check_address(address)
    tunnel = await hub.service.authenticate_socket(tunnel_id, side, token)
    if tunnel.protocol is not TunnelProtocol.HUAWEI:
        raise errors.WrongProtocol(
            "this is an AWS-protocol tunnel: connect to /tunnel?local-proxy-mode=source|destination (docs/aws.md)")
    token_hash = hash_token(token)

    def make(pairing: Pairing | AwsPairing, transport: asyncio.Transport) -> TunnelConnection:
        return TunnelConnection(side, hub, pairing, transport, token_hash)

    return await accept_tunnel(request, hub, accept_key=accept_key, subprotocol=subprotocol, tunnel=tunnel,
                               side=side, address=address, make=make,
                               logger=log, log_extra={"tunnel_id": tunnel_id, "side": side.value})


async def source_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.SOURCE)


async def device_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.DEVICE)


def add_routes(app: web.Application, hub: Hub) -> None:
    app[HUB] = hub
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/source-connect", source_connect, allow_head=False)
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", device_connect, allow_head=False)
