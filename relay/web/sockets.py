"""The WebSocket endpoints: aiohttp does the HTTP upgrade, then the connection's raw bytes
go straight to the codec.

After the 101 answer the transport is handed to a `TunnelConnection` (an asyncio.Protocol):
each read is one call into the decoder, which returns every complete message re-framed for
the peer, written with one `transport.write`. No Python object is made per message.
Backpressure: when a connection's write buffer is over its high-water mark, the relay stops
reading from its peer (and from itself, since its own reads can produce replies), and
resumes when the buffer drains; so memory per tunnel is bounded by the buffer limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re

from aiohttp import hdrs, web

from relay import codec, errors
from relay.model import CloseReason, Side, Tunnel
from relay.protocol import Action, Close, Link, Pairing, Reasons, Send, StateChange
from relay.service import TunnelService
from relay.web import rest, validation

log = logging.getLogger(__name__)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "iot-tunnel.v1"
TOKEN_SUBPROTOCOL_PREFIX = "access-token."   # browsers: `new WebSocket(url, ["iot-tunnel.v1", "access-token." + token])`
TOKEN_COOKIE = "tunnel_access_token"
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
CLOSE_GRACE = 5.0  # seconds a closing connection may take to flush before it is cut


class TunnelConnection(asyncio.Protocol):
    """One upgraded WebSocket connection, one side of one tunnel."""

    __slots__ = ("side", "hub", "pairing", "transport", "decoder", "peer", "closing", "done",
                 "heard", "pinged", "timer", "own_full", "peer_full", "_aiohttp_protocol")

    def __init__(self, side: Side, hub: Hub, pairing: Pairing, transport: asyncio.Transport,
                 aiohttp_protocol: asyncio.BaseProtocol) -> None:
        self.side = side
        self.hub = hub
        self.pairing = pairing
        self.transport = transport
        self.decoder = pairing.decoders[side]
        self.peer: TunnelConnection | None = None
        self.closing = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = True
        self.pinged = False
        self.timer: asyncio.TimerHandle | None = None
        self.own_full = False    # our write buffer is over the high-water mark
        self.peer_full = False   # our peer's write buffer is
        self._aiohttp_protocol = aiohttp_protocol

    # -- the hot path --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.heard = True
        to_peer, to_sender, close = self.decoder.feed(data)
        if to_peer:
            # The decoder only produces bytes for the peer while one is linked.
            self.peer.transport.write(to_peer)  # type: ignore[union-attr]
        if to_sender:
            self.transport.write(to_sender)
        if close is not None:
            self.close(close[0], close[1])

    # -- flow control --------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.own_full = True
        self._update_reading()
        if self.peer is not None:
            self.peer.peer_full = True
            self.peer._update_reading()

    def resume_writing(self) -> None:
        self.own_full = False
        self._update_reading()
        if self.peer is not None:
            self.peer.peer_full = False
            self.peer._update_reading()

    def _update_reading(self) -> None:
        if self.closing:
            return
        if self.own_full or self.peer_full:
            if self.transport.is_reading():
                self.transport.pause_reading()
        elif not self.transport.is_reading():
            self.transport.resume_reading()

    def link(self, peer: TunnelConnection | None) -> None:
        self.peer = peer
        self.peer_full = peer.own_full if peer is not None else False
        self._update_reading()

    # -- lifecycle -----------------------------------------------------------------------

    def send_message(self, payload: bytes) -> None:
        if not self.closing:
            self.transport.write(codec.encode_text(payload))

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.transport.write(codec.encode_close(code, reason))
        self.transport.close()
        # A reader that never drains its buffer cannot hold the connection open.
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.abort)

    def start_heartbeat(self, interval: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(interval, self._heartbeat, interval)

    def _heartbeat(self, interval: float) -> None:
        if self.closing:
            return
        if self.heard:
            self.heard, self.pinged = False, False
        elif self.pinged:
            log.info("dropping a silent connection", extra={"tunnel_id": self.pairing.tunnel_id, "side": self.side.value})
            self.hub.end_connection(self, Reasons.HEARTBEAT)
            return
        else:
            self.transport.write(codec.encode_ping(b"hb"))
            self.pinged = True
        self.timer = asyncio.get_running_loop().call_later(interval, self._heartbeat, interval)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.hub.detach(self)
        if not self.done.done():
            self.done.set_result(None)
        # Let aiohttp release its side of the connection and finish the request handler.
        self._aiohttp_protocol.connection_lost(exc)


class _TailCatcher:
    """Receives bytes aiohttp already read past the upgrade request (a client may send its
    first frame without waiting for the 101)."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class _UpgradeResponse(web.StreamResponse):
    """The 101 answer. After it the socket belongs to the relay: aiohttp writes nothing more."""

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class Hub:
    """The tunnels that have live connections on this relay, and the adapter that carries
    out what the protocol decides."""

    def __init__(self, service: TunnelService) -> None:
        self.service = service
        self.pairings: dict[str, Pairing] = {}
        self.accepting = True

    # Listener of the control plane: changes to a tunnel end its sockets at once.
    def tunnel_created(self, tunnel: Tunnel, device_token: str) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel, reason: CloseReason) -> None:
        why = Reasons.TUNNEL_EXPIRED if reason is CloseReason.EXPIRED else Reasons.TUNNEL_CLOSED
        self._end(tunnel.tunnel_id, frozenset(Side), why)

    def tokens_rotated(self, tunnel: Tunnel, sides: frozenset[Side], device_token: str | None) -> None:
        self._end(tunnel.tunnel_id, sides, Reasons.TOKEN_ROTATED)

    def _end(self, tunnel_id: str, sides: frozenset[Side], reason) -> None:  # type: ignore[no-untyped-def]
        pairing = self.pairings.get(tunnel_id)
        if pairing is not None:
            self.apply(pairing, pairing.end_sides(sides, reason))

    def attach(self, conn: TunnelConnection) -> None:
        self.apply(conn.pairing, conn.pairing.attach(conn))

    def detach(self, conn: TunnelConnection) -> None:
        pairing = conn.pairing
        self.apply(pairing, pairing.detach(conn))
        if pairing.empty and self.pairings.get(pairing.tunnel_id) is pairing:
            del self.pairings[pairing.tunnel_id]

    def end_connection(self, conn: TunnelConnection, reason) -> None:  # type: ignore[no-untyped-def]
        self.apply(conn.pairing, conn.pairing.end_sides({conn.side}, reason) if conn.pairing.ends[conn.side] is conn else [])

    def pairing_for(self, tunnel_id: str, max_message_size: int) -> Pairing:
        pairing = self.pairings.get(tunnel_id)
        if pairing is None:
            pairing = self.pairings[tunnel_id] = Pairing(tunnel_id, max_message_size)
        return pairing

    def apply(self, pairing: Pairing, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                action.end.send_message(action.message)  # type: ignore[attr-defined]
            elif isinstance(action, Close):
                action.end.close(action.code, action.reason)  # type: ignore[attr-defined]
            elif isinstance(action, Link):
                action.end.link(action.peer)  # type: ignore[attr-defined]
            elif isinstance(action, StateChange):
                asyncio.ensure_future(self._record_state(pairing.tunnel_id, action.side, action.connected))

    async def _record_state(self, tunnel_id: str, side: Side, connected: bool) -> None:
        try:
            await self.service.set_connect_state(tunnel_id, side, connected)
        except Exception:
            log.exception("could not record a connection state", extra={"tunnel_id": tunnel_id})

    async def shutdown(self) -> None:
        """Tell every connection the relay is going away, then close them."""
        self.accepting = False
        for pairing in list(self.pairings.values()):
            self.apply(pairing, pairing.end_sides(frozenset(Side), Reasons.SHUTTING_DOWN))


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


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


def _check_upgrade(request: web.Request) -> str:
    """The Sec-WebSocket-Accept value, once the request is a valid WebSocket upgrade."""
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


_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,256}$")


async def _connect(request: web.Request, side: Side) -> web.StreamResponse:
    hub = request.app[HUB]
    settings = request.app[rest.SETTINGS]
    if not hub.accepting:
        raise errors.ShuttingDown("the relay is shutting down; connect again to reach another replica")
    accept = _check_upgrade(request)
    try:
        tunnel_id = validation.tunnel_id(request.match_info["tunnel_id"])
    except errors.InvalidParameter:
        raise errors.TunnelNotFound("no tunnel has this id") from None
    token, subprotocol = _access_token(request)
    if token is None:
        raise errors.Unauthenticated(
            "send the tunnel's access token in the tunnel_access_token header (or Authorization: Bearer)")
    if not _TOKEN_RE.match(token):
        raise errors.Unauthenticated("the access token must be 1-256 printable characters")
    await hub.service.authenticate_socket(tunnel_id, side, token)

    response = _UpgradeResponse(status=101, headers={
        hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade", hdrs.SEC_WEBSOCKET_ACCEPT: accept,
    })
    if subprotocol:
        response.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = subprotocol
    await response.prepare(request)

    transport = request.transport
    aiohttp_protocol = request.protocol
    if transport is None or transport.is_closing():
        return response
    tail = _TailCatcher()
    aiohttp_protocol.set_parser(tail)  # type: ignore[arg-type]
    pairing = hub.pairing_for(tunnel_id, settings.max_message_size)
    conn = TunnelConnection(side, hub, pairing, transport, aiohttp_protocol)  # type: ignore[arg-type]
    transport.set_protocol(conn)
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
    hub.attach(conn)
    log.info("connected", extra={"tunnel_id": tunnel_id, "side": side.value})
    if tail.data:
        conn.data_received(tail.data)
    conn._update_reading()  # aiohttp may have paused reading while it parsed the request
    conn.start_heartbeat(settings.heartbeat_interval)
    await conn.done
    log.info("disconnected", extra={"tunnel_id": tunnel_id, "side": side.value})
    return response


async def source_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.SOURCE)


async def device_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.DEVICE)


def add_routes(app: web.Application, hub: Hub) -> None:
    app[HUB] = hub
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/source-connect", source_connect, allow_head=False)
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", device_connect, allow_head=False)
