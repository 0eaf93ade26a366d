"""The AWS IoT Secure Tunneling endpoint: `GET /tunnel?local-proxy-mode=source|destination`
(docs/aws.md).

The same relay, tunnels, tokens and limits as the Huawei endpoints (relay/web/sockets.py),
another protocol on the wire: binary WebSocket frames carrying length-prefixed protobuf
messages, checked by the codec's `AwsDecoder` and relayed unchanged. The upgrade reuses the
Huawei endpoints' checks and raw-transport takeover; the connection is a `TunnelConnection`
(same hot path, flow control, heartbeats, counters) that frames the relay's own messages as
binary.

The token alone names the tunnel (AWS's URL has no tunnel id): the store finds the tunnel
by the token's hash, and a store step claims the token for the connection, atomically across
replicas, following AWS's client-token rules.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import hdrs, web

from relay import codec, errors
from relay.model import Claim, Side, Status, Tunnel, TunnelProtocol
from relay.protocol_aws import MODES, SUBPROTOCOLS, AwsPairing, choose_subprotocol
from relay.tokens import hash_token, token_matches
from relay.web import rest
from relay.web.sockets import HUB, Hub, TunnelConnection, _check_upgrade, tune_transport, _TOKEN_RE
from relay.web.takeover import UpgradeResponse, take_over

log = logging.getLogger(__name__)

PATH = "/tunnel"
TOKEN_HEADER = "access-token"
TOKEN_COOKIE = "awsiot-tunnel-token"
CLIENT_TOKEN_HEADER = "client-token"
CLIENT_TOKEN_RE = re.compile(r"^[a-zA-Z0-9-]{32,128}\Z")
_SUPPORTED = ", ".join(sorted(SUBPROTOCOLS, reverse=True))


class AwsConnection(TunnelConnection):
    """One upgraded WebSocket of an AWS-protocol tunnel. The hot path is TunnelConnection's:
    one `decoder.feed` per read, accepted messages written straight to the peer."""

    __slots__ = ("version",)

    def __init__(self, side: Side, hub: Hub, pairing: AwsPairing, transport: asyncio.Transport, token_hash: str,
                 version: int) -> None:
        super().__init__(side, hub, pairing, transport, token_hash)
        self.version = version   # the subprotocol's: 1, 2 or 3

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
    if not _TOKEN_RE.match(tokens[0]):
        raise errors.Unauthenticated("the access token must be 1-256 printable characters")
    return tokens[0]


def _client_token(request: web.Request) -> str | None:
    values = request.headers.getall(CLIENT_TOKEN_HEADER, [])
    if len(values) > 1:
        raise errors.InvalidParameter(f"send the {CLIENT_TOKEN_HEADER} header once")
    if not values:
        return None
    if not CLIENT_TOKEN_RE.match(values[0]):
        raise errors.InvalidParameter(f"the {CLIENT_TOKEN_HEADER} must be 32-128 letters, digits and '-'")
    return values[0]


def _mode(request: web.Request) -> Side:
    values = request.query.getall("local-proxy-mode", [])
    if len(values) != 1 or values[0] not in MODES:
        raise errors.InvalidParameter("local-proxy-mode must be given once, as source or destination")
    return MODES[values[0]]


async def authenticate(hub: Hub, token: str, side: Side, client_token: str | None) -> Tunnel:
    """The open AWS-protocol tunnel that `token` opens on `side`, once this connection has
    claimed the token (client-token rules, docs/aws.md); raises otherwise."""
    token_hash = hash_token(token)
    tunnel = await hub.service.store.find_by_token_hash(token_hash)
    if tunnel is None:
        raise errors.Unauthenticated("the access token is unknown (or was rotated)")
    if tunnel.protocol is not TunnelProtocol.AWS:
        raise errors.WrongProtocol(
            "this is a token of a Huawei-protocol tunnel: connect to /v5/iot/tunnels/{tunnel_id}/source-connect"
            " or device-connect (docs/protocol.md)")
    # Settle an expiry that is due (and tell the listeners) before answering.
    tunnel = await hub.service.get(tunnel.project_id, tunnel.tunnel_id)
    if not token_matches(token, tunnel.token_hash(side)):
        mode = "destination" if side is Side.SOURCE else "source"
        raise errors.Unauthenticated(f"this access token is for local-proxy-mode={mode}")
    if tunnel.status is not Status.OPEN:
        why = tunnel.close_reason.value if tunnel.close_reason else "closed"
        raise errors.TunnelGone(f"the tunnel is {why}")
    claim = await hub.service.store.claim_access(tunnel.tunnel_id, side, token_hash,
                                                 hash_token(client_token) if client_token else "")
    if claim is Claim.USED:
        raise errors.TokenUsed(
            "the access token was used already; an access token opens one connection, or, when its first"
            " connection sent a client-token header, the connections that send the same client token")
    if claim is Claim.ROTATED:
        raise errors.Unauthenticated("the access token was rotated")
    if claim is Claim.GONE:
        raise errors.TunnelGone("the tunnel is closed")
    return tunnel


async def aws_connect(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    settings = request.app[rest.SETTINGS]
    if not hub.accepting:
        raise errors.ShuttingDown("the relay is shutting down; connect again to reach another replica")
    accept = _check_upgrade(request)
    side = _mode(request)
    subprotocol = choose_subprotocol(_offered_subprotocols(request))
    if subprotocol is None:
        raise errors.UnsupportedSubprotocol(f"offer one of {_SUPPORTED} in Sec-WebSocket-Protocol")
    token = _access_token(request)
    client_token = _client_token(request)
    address = request.remote or ""
    hub.check_address(address)
    tunnel = await authenticate(hub, token, side, client_token)

    response = UpgradeResponse(status=101, headers={
        hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade", hdrs.SEC_WEBSOCKET_ACCEPT: accept,
        hdrs.SEC_WEBSOCKET_PROTOCOL: subprotocol,
    })
    await response.prepare(request)
    if request.transport is None or request.transport.is_closing():
        return response
    hub.count_address(address)
    pairing = hub.pairing_for(tunnel)
    assert isinstance(pairing, AwsPairing)
    version = SUBPROTOCOLS[subprotocol]
    conn, early = take_over(request, lambda t: AwsConnection(side, hub, pairing, t, hash_token(token), version))
    assert isinstance(conn, AwsConnection)
    conn.address = address
    conn.actor = hub.actor_of(tunnel, side)
    tune_transport(conn.transport, settings)
    hub.attach(conn)
    log.info("connected", extra={"tunnel_id": tunnel.tunnel_id, "side": side.value, "protocol": subprotocol})
    if early:
        conn.data_received(early)
    conn._update_reading()  # aiohttp may have paused reading while it parsed the request
    conn.start_heartbeat(settings.heartbeat_interval)
    response.force_close()  # the connection is the relay's now: aiohttp must not keep it alive
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, aws_connect, allow_head=False)
