"""The AWS IoT Secure Tunneling endpoint: `GET /tunnel?local-proxy-mode=source|destination`
(docs/aws.md).

The same relay, tunnels, tokens and limits as the Huawei endpoints (relay/web/sockets.py),
another protocol on the wire: binary WebSocket frames carrying length-prefixed protobuf
messages, checked by the codec's `AwsDecoder` and relayed unchanged. The upgrade and the accept
are the one path of both protocols (relay/web/accept.py); the connection is a `TunnelConnection`
(same hot path, flow control, heartbeats, counters) that frames the relay's own messages as
binary.

The token alone names the tunnel (AWS's URL has no tunnel id): the service finds the tunnel
by the token's hash, and a store step claims the token for the connection, atomically across
replicas, following AWS's client-token rules (`TunnelService.authenticate_aws_socket`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web

from relay import codec, errors
from relay.aws_messages import valid_client_token
from relay.model import Side
from relay.protocol import Pairing
from relay.protocol_aws import MODES, SUBPROTOCOLS, AwsPairing, choose_subprotocol
from relay.tokens import hash_token
from relay.web.accept import accept_tunnel, begin_upgrade, check_token_shape
from relay.web.sockets import Hub, TunnelConnection

log = logging.getLogger(__name__)

PATH = "/tunnel"
TOKEN_HEADER = "access-token"
TOKEN_COOKIE = "awsiot-tunnel-token"
CLIENT_TOKEN_HEADER = "client-token"
_SUPPORTED = ", ".join(sorted(SUBPROTOCOLS, reverse=True))


class AwsConnection(TunnelConnection):
    """One upgraded WebSocket of an AWS-protocol tunnel. The hot path is TunnelConnection's:
    one `decoder.feed` per read, accepted messages written straight to the peer."""

    __slots__ = ()

    def __init__(self, side: Side, hub: Hub, pairing: AwsPairing, transport: asyncio.Transport, token_hash: str,
                 version: int) -> None:
        super().__init__(side, hub, pairing, transport, token_hash, version)   # version: the subprotocol's, 1-3

    def send_message(self, payload: bytes) -> None:
        """`payload`: complete framed tunnel messages (aws_messages.frame), sent as one binary frame."""
        if not self.closing:
            self.transport.write(codec.encode_binary(payload))


def _offered_subprotocols(request: web.Request) -> list[str]:
    return [p.strip() for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
            for p in value.split(",") if p.strip()]


def _cookie_values(request: web.Request, name: str) -> list[str]:
    """Every value of cookie `name` in every Cookie header (aiohttp's `cookies` keeps one)."""
    found = []
    for header in request.headers.getall(hdrs.COOKIE, []):
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                found.append(value.strip().strip('"'))
    return found


def _access_token(request: web.Request) -> str:
    """AWS's rule: exactly one token, in the `access-token` header or the cookie."""
    tokens = [t.strip() for t in request.headers.getall(TOKEN_HEADER, [])] + _cookie_values(request, TOKEN_COOKIE)
    if not tokens:
        raise errors.Unauthenticated(
            f"send the tunnel's access token in the {TOKEN_HEADER} header or the {TOKEN_COOKIE} cookie")
    if len(tokens) > 1:
        raise errors.InvalidParameter(f"send the access token once: {len(tokens)} were given")
    check_token_shape(tokens[0])
    return tokens[0]


def _client_token(request: web.Request) -> str | None:
    values = request.headers.getall(CLIENT_TOKEN_HEADER, [])
    if len(values) > 1:
        raise errors.InvalidParameter(f"send the {CLIENT_TOKEN_HEADER} header once")
    if not values:
        return None
    if not valid_client_token(values[0]):
        raise errors.InvalidParameter(f"the {CLIENT_TOKEN_HEADER} must be 32-128 letters, digits and '-'")
    return values[0]


def _mode(request: web.Request) -> Side:
    values = request.query.getall("local-proxy-mode", [])
    if len(values) != 1 or values[0] not in MODES:
        raise errors.InvalidParameter("local-proxy-mode must be given once, as source or destination")
    return MODES[values[0]]


async def aws_connect(request: web.Request) -> web.StreamResponse:
    hub, accept_key = begin_upgrade(request)
    side = _mode(request)
    subprotocol = choose_subprotocol(_offered_subprotocols(request))
    if subprotocol is None:
        raise errors.UnsupportedSubprotocol(f"offer one of {_SUPPORTED} in Sec-WebSocket-Protocol")
    token = _access_token(request)
    client_token = _client_token(request)
    address = request.remote or ""
    hub.check_address(address)
    tunnel = await hub.service.authenticate_aws_socket(token, side, client_token)
    token_hash, version = hash_token(token), SUBPROTOCOLS[subprotocol]

    def make(pairing: Pairing | AwsPairing, transport: asyncio.Transport) -> TunnelConnection:
        assert isinstance(pairing, AwsPairing)   # an AWS tunnel's (authenticate_aws_socket)
        return AwsConnection(side, hub, pairing, transport, token_hash, version)

    return await accept_tunnel(request, hub, accept_key=accept_key, subprotocol=subprotocol, tunnel=tunnel,
                               side=side, address=address, make=make, logger=log,
                               log_extra={"tunnel_id": tunnel.tunnel_id, "side": side.value, "protocol": subprotocol})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, aws_connect, allow_head=False)
