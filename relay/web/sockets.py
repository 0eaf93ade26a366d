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
import socket
from typing import TYPE_CHECKING, Protocol

from aiohttp import hdrs, web

from relay import codec, errors
from relay.audit import ACTOR_SOURCE, EventType, source_actor
from relay.cluster import Cluster, Hint
from relay.config import Settings, origin_key
from relay.model import CloseReason, Side, Status, Tunnel, TunnelProtocol
from relay.protocol import Action, Close, CloseCode, Link, Pairing, Reasons, Send
from relay.protocol_aws import AwsPairing
from relay.service import TunnelService
from relay.sessions import SessionWatcher, TunnelAudit
from relay.tokens import hash_token
from relay.web import rest, validation
from relay.web.metrics import Counters
from relay.web.takeover import UpgradeResponse, take_over

if TYPE_CHECKING:
    from relay.recording import Recording

log = logging.getLogger(__name__)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "iot-tunnel.v1"
TOKEN_SUBPROTOCOL_PREFIX = "access-token."   # browsers: `new WebSocket(url, ["iot-tunnel.v1", "access-token." + token])`
TOKEN_COOKIE = "tunnel_access_token"
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
CLOSE_GRACE = 5.0  # seconds a closing connection may take to flush before it is cut


class End(asyncio.Protocol):
    """A connection that relays to a peer End, with end-to-end flow control: a connection
    whose write buffer is full stops the reading of its peer (and of itself)."""

    side: Side
    transport: asyncio.Transport
    closing: bool
    peer: End | None
    own_full: bool    # our write buffer is over the high-water mark
    peer_full: bool   # our peer's write buffer is
    if TYPE_CHECKING:   # every concrete end has these slots; mypy checks End's methods against them
        __slots__ = ("side", "transport", "closing", "peer", "own_full", "peer_full")
    else:               # the concrete ends declare them (one slot list per class)
        __slots__ = ()

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

    def link(self, peer: End | None) -> None:
        self.peer = peer
        self.peer_full = peer.own_full if peer is not None else False
        self._update_reading()

    def send_message(self, payload: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError


class TunnelConnection(End):
    """One upgraded WebSocket connection, one side of one tunnel."""

    __slots__ = ("side", "hub", "pairing", "transport", "decoder", "peer", "closing", "done",
                 "heard", "pinged", "timer", "own_full", "peer_full", "token_hash", "claim", "address", "actor")

    def __init__(self, side: Side, hub: Hub, pairing: Pairing | AwsPairing, transport: asyncio.Transport,
                 token_hash: str) -> None:
        self.side = side
        self.hub = hub
        self.pairing = pairing
        self.transport = transport
        self.decoder = pairing.decoders[side]
        self.peer: End | None = None
        self.closing = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = True
        self.pinged = False
        self.timer: asyncio.TimerHandle | None = None
        self.own_full = False
        self.peer_full = False
        self.token_hash = token_hash          # to notice a rotation made on another replica
        self.claim: asyncio.Task[int] | None = None   # the cluster lease; its result is our epoch
        self.address: str = ""                         # the client's IP, for the per-address limit
        self.actor: str = side.value                   # who acts through it, for the audit trail (Hub.actor_of)

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

    # -- lifecycle -----------------------------------------------------------------------

    def send_message(self, payload: bytes) -> None:
        if not self.closing:
            self.transport.write(codec.encode_text(payload))

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.hub.counters.closes[code] += 1
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
        self.hub.audit_end(self, "disconnected")
        self.hub.detach(self)
        self.hub.release(self)
        self.hub.forget_address(self.address)
        if not self.done.done():
            self.done.set_result(None)
        log.info("disconnected", extra={"tunnel_id": self.pairing.tunnel_id, "side": self.side.value})


def tune_transport(transport: asyncio.Transport, settings: Settings) -> None:
    """Buffers of a tunnel connection: the relay's write buffer (backpressure starts at its
    high-water mark) and, when --socket-buffer is set, the kernel's (which otherwise grow to
    several MB per socket when the other end reads slowly)."""
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
    sock = transport.get_extra_info("socket")
    if settings.socket_buffer and sock is not None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, settings.socket_buffer)


class ReplicaBridges(Protocol):
    """What the hub and the internal port ask of the bridges between replicas (relay/web/bridge.py,
    which imports this module)."""

    async def attached_here(self, conn: TunnelConnection, epoch: int) -> None: ...

    def on_attached(self, hint: Hint) -> None: ...

    def after_detach(self, pairing: Pairing | AwsPairing) -> None: ...

    async def reconcile(self) -> None: ...

    async def accept(self, request: web.Request) -> web.StreamResponse: ...


class Hub:
    """The tunnels that have live ends on this relay, and the adapter that carries out what
    the protocol decides. With several replicas, it also keeps this replica's leases and
    bridges ends held by different replicas (relay/web/bridge.py)."""

    def __init__(self, service: TunnelService, cluster: Cluster, settings: Settings) -> None:
        self.service = service
        self.cluster = cluster
        self.settings = settings
        self.pairings: dict[str, Pairing | AwsPairing] = {}   # a tunnel's kind of pairing (its protocol)
        self.accepting = True
        self.bridges: ReplicaBridges | None = None   # set when the relay runs as one of several replicas
        self.counters = Counters()
        self.per_address: dict[str, int] = {}
        self.owners: dict[str, tuple[str, str]] = {}   # tunnel id -> (project id, device id) of AWS tunnels, for the audit trail
        self._make_watcher = self._new_watcher          # one bound method, shared by every tunnel's TunnelAudit
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        """Run background work tied to an end; kept referenced until it finishes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # Listener of the control plane: changes to a tunnel end its sockets at once, here and,
    # through a hint, on the other replicas.
    def tunnel_created(self, tunnel: Tunnel, device_token: str) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel, reason: CloseReason) -> None:
        why = "expired" if reason is CloseReason.EXPIRED else "closed"
        self.end_sides(tunnel.tunnel_id, frozenset(Side), why)
        self.spawn(self.cluster.publish(Hint("ended", tunnel.tunnel_id, ("source", "device"), why, self.cluster.replica_id)))

    def tokens_rotated(self, tunnel: Tunnel, sides: frozenset[Side], device_token: str | None) -> None:
        self.end_sides(tunnel.tunnel_id, sides, "rotated")
        names = tuple(sorted(s.value for s in sides))
        self.spawn(self.cluster.publish(Hint("ended", tunnel.tunnel_id, names, "rotated", self.cluster.replica_id)))

    def end_sides(self, tunnel_id: str, sides: frozenset[Side], why: str) -> None:
        reason = {"expired": Reasons.TUNNEL_EXPIRED, "closed": Reasons.TUNNEL_CLOSED,
                  "rotated": Reasons.TOKEN_ROTATED}.get(why, Reasons.TUNNEL_CLOSED)
        pairing = self.pairings.get(tunnel_id)
        if pairing is not None:
            self.apply(pairing, pairing.end_sides(sides, reason))

    def on_hint(self, hint: Hint) -> None:
        """A hint from another replica."""
        if hint.kind == "ended":
            self.end_sides(hint.tunnel_id, frozenset(Side(s) for s in hint.sides), hint.reason)
        elif hint.kind == "attached" and self.bridges is not None:
            self.bridges.on_attached(hint)

    # -- ends coming and going -------------------------------------------------------------

    @staticmethod
    def actor_of(tunnel: Tunnel, side: Side) -> str:
        """The audit trail's actor for a connection of `side`: for the source, the API token
        that issued its source token (relay.audit.source_actor)."""
        return source_actor(tunnel.source_token_issuer) if side is Side.SOURCE else side.value

    def attach(self, conn: TunnelConnection) -> None:
        scope = getattr(conn.pairing, "watcher", None)
        if conn.side is Side.SOURCE and scope is not None:
            scope.source_actor = conn.actor   # logins and forwards from now on are this connection's
        self.audit_end(conn, "connected")
        self.apply(conn.pairing, conn.pairing.attach(conn))
        conn.claim = self.spawn(self._claim(conn))

    async def _claim(self, conn: TunnelConnection) -> int:
        epoch = await self.cluster.claim(conn.pairing.tunnel_id, conn.side)
        if self.bridges is not None and not conn.closing:
            await self.bridges.attached_here(conn, epoch)
        return epoch

    def release(self, conn: TunnelConnection) -> None:
        async def release() -> None:
            try:
                epoch = await conn.claim if conn.claim is not None else None
            except Exception:
                return
            if epoch is not None:
                await self.cluster.release(conn.pairing.tunnel_id, conn.side, epoch)
        self.spawn(release())

    def detach(self, end: End) -> None:
        pairing: Pairing | AwsPairing = end.pairing  # type: ignore[attr-defined]
        self.apply(pairing, pairing.detach(end))
        if self.bridges is not None:
            self.bridges.after_detach(pairing)
        if pairing.empty and self.pairings.get(pairing.tunnel_id) is pairing:
            del self.pairings[pairing.tunnel_id]
            self.owners.pop(pairing.tunnel_id, None)
            for side, decoder in pairing.decoders.items():
                self.counters.retired_messages[pairing.protocol, side.value] += decoder.messages
                self.counters.retired_bytes[pairing.protocol, side.value] += decoder.bytes

    def check_address(self, address: str) -> None:
        """Refuse a new connection from an address that holds the most allowed."""
        limit = self.settings.max_connections_per_address
        held = self.per_address.get(address, 0)
        if limit and held >= limit:
            raise errors.TooManyConnections(f"this address already holds {held} tunnel connections, the most allowed")

    def count_address(self, address: str) -> None:
        self.per_address[address] = self.per_address.get(address, 0) + 1

    def forget_address(self, address: str) -> None:
        held = self.per_address.get(address, 0)
        if held <= 1:
            self.per_address.pop(address, None)
        else:
            self.per_address[address] = held - 1

    def end_connection(self, conn: TunnelConnection, reason) -> None:
        if conn.pairing.ends[conn.side] is conn:
            self.apply(conn.pairing, conn.pairing.end_sides({conn.side}, reason))

    def pairing_for(self, tunnel: Tunnel) -> Pairing | AwsPairing:
        """The pairing of a tunnel with ends here, of its protocol's kind; made on first use."""
        pairing = self.pairings.get(tunnel.tunnel_id)
        if pairing is None:
            if tunnel.protocol is TunnelProtocol.AWS:
                pairing = AwsPairing(tunnel.tunnel_id, tunnel.services)
            else:
                pairing = Pairing(tunnel.tunnel_id, self.settings.max_message_size, self._tunnel_audit(tunnel))
            self.pairings[tunnel.tunnel_id] = pairing
            if not isinstance(pairing, Pairing) or pairing.watcher is None:
                self.owners[tunnel.tunnel_id] = (tunnel.project_id, tunnel.device_id)
        return pairing

    # -- the audit trail (docs/audit.md); never on the per-message path ---------------------

    def _tunnel_audit(self, tunnel: Tunnel) -> TunnelAudit | None:
        """What watches a Huawei tunnel's logins, forwards and (if on) recording; None without an audit log."""
        audit = self.service.audit
        if audit is None:
            return None
        record = tunnel.record_session or audit.should_record(tunnel.project_id)
        return TunnelAudit(tunnel.project_id, tunnel.tunnel_id, tunnel.device_id, record, self._make_watcher)

    def _new_watcher(self, scope: TunnelAudit) -> SessionWatcher:
        """The watcher of a tunnel, made when its first noted message comes."""
        service, audit = self.service, self.service.audit
        assert audit is not None
        project_id, tunnel_id, device_id = scope.project_id, scope.tunnel_id, scope.device_id

        def emit(event: EventType, actor: str, outcome: str, detail: dict) -> None:
            actor = scope.source_actor if actor == ACTOR_SOURCE else actor
            service.record(project_id, event, actor=actor, tunnel_id=tunnel_id, device_id=device_id,
                           outcome=outcome, detail=detail)

        def save(recording: Recording) -> None:
            audit.save_recording(recording, scope.source_actor)

        tap = audit.tap(project_id, tunnel_id, device_id, requested=scope.record)
        return SessionWatcher(project_id, tunnel_id, device_id, clock=service.clock, emit=emit, save=save, tap=tap)

    def audit_end(self, conn: TunnelConnection, what: str) -> None:
        """`{side}_connected`, `_disconnected` or `_evicted` for a connection of this relay."""
        scope = getattr(conn.pairing, "watcher", None)   # a Huawei tunnel's TunnelAudit knows its owner
        owner = (scope.project_id, scope.device_id) if scope is not None else self.owners.get(conn.pairing.tunnel_id)
        if owner is None or self.service.audit is None:
            return
        self.service.record(owner[0], EventType(f"{conn.side.value}_{what}"), actor=conn.actor,
                            tunnel_id=conn.pairing.tunnel_id, device_id=owner[1],
                            detail={"address": conn.address} if conn.address else None)

    def apply(self, pairing: Pairing | AwsPairing, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                action.end.send_message(action.message)  # type: ignore[attr-defined]
            elif isinstance(action, Close):
                if action.code == CloseCode.REPLACED and isinstance(action.end, TunnelConnection):
                    self.audit_end(action.end, "evicted")
                action.end.close(action.code, action.reason)  # type: ignore[attr-defined]
            elif isinstance(action, Link):
                action.end.link(action.peer)  # type: ignore[attr-defined]
            # StateChange: connection states follow the cluster's claims and releases.

    def local_ends(self) -> list[TunnelConnection]:
        return [e for p in self.pairings.values() for e in p.ends.values() if isinstance(e, TunnelConnection)]

    # -- keeping this replica's view true --------------------------------------------------

    async def reconcile_forever(self) -> None:
        """Renew leases, and end what the store or a newer connection says is over. Runs
        only with several replicas: it is how a lost hint is made good."""
        interval = self.settings.reconcile_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:
                log.warning("reconciliation failed; trying again", exc_info=True)

    async def reconcile(self) -> None:
        ends = [e for e in self.local_ends() if e.claim is not None and e.claim.done() and not e.closing]
        for end in [e for e in ends if e.claim.exception()]:  # type: ignore[union-attr]
            # The store was away when this end claimed its lease: claim it again, and leave it
            # out of this round (it holds no lease to renew yet).
            log.warning("claiming the lease of a connection again", extra={
                "tunnel_id": end.pairing.tunnel_id, "side": end.side.value,
                "error": type(end.claim.exception()).__name__})  # type: ignore[union-attr]
            end.claim = self.spawn(self._claim(end))
        ends = [e for e in ends if e.claim.done() and not e.claim.exception()]  # type: ignore[union-attr]
        held = [(e.pairing.tunnel_id, e.side, e.claim.result()) for e in ends]  # type: ignore[union-attr]
        lost = set(await self.cluster.renew(held))
        for end in ends:
            if end.closing:
                continue
            key = (end.pairing.tunnel_id, end.side, end.claim.result())  # type: ignore[union-attr]
            if key in lost:
                self.end_connection(end, Reasons.EVICTED)
                continue
            tunnel = await self.service.store.get(end.pairing.tunnel_id)
            if tunnel is None or tunnel.status is not Status.OPEN or tunnel.expires_at <= self.service.clock.now():
                expired = tunnel is not None and tunnel.close_reason is CloseReason.EXPIRED
                self.end_connection(end, Reasons.TUNNEL_EXPIRED if expired else Reasons.TUNNEL_CLOSED)
            elif tunnel.token_hash(end.side) != end.token_hash:
                self.end_connection(end, Reasons.TOKEN_ROTATED)
        if self.bridges is not None:
            await self.bridges.reconcile()

    async def shutdown(self, drain_seconds: float = 0.0) -> None:
        """Tell every end the relay is going away and close it, spread over `drain_seconds`
        so that clients do not all reconnect at the same instant."""
        self.accepting = False
        pairings = list(self.pairings.values())
        step = drain_seconds / len(pairings) if pairings and drain_seconds > 0 else 0.0
        for pairing in pairings:
            local = frozenset(s for s, e in pairing.ends.items() if isinstance(e, TunnelConnection))
            self.apply(pairing, pairing.end_sides(local, Reasons.SHUTTING_DOWN))
            for end in list(pairing.ends.values()):
                if end is not None:
                    end.close(int(Reasons.SHUTTING_DOWN.close_code), "relay shutting down")  # type: ignore[arg-type]
            if step:
                await asyncio.sleep(step)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


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


_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,256}\Z")


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
    address = request.remote or ""
    hub.check_address(address)
    tunnel = await hub.service.authenticate_socket(tunnel_id, side, token)
    if tunnel.protocol is not TunnelProtocol.HUAWEI:
        raise errors.WrongProtocol(
            "this is an AWS-protocol tunnel: connect to /tunnel?local-proxy-mode=source|destination (docs/aws.md)")

    response = UpgradeResponse(status=101, headers={
        hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade", hdrs.SEC_WEBSOCKET_ACCEPT: accept,
    })
    if subprotocol:
        response.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = subprotocol
    await response.prepare(request)

    if request.transport is None or request.transport.is_closing():
        return response
    hub.count_address(address)
    pairing = hub.pairing_for(tunnel)
    conn, early = take_over(request, lambda t: TunnelConnection(side, hub, pairing, t, hash_token(token)))
    assert isinstance(conn, TunnelConnection)
    conn.address = address
    conn.actor = hub.actor_of(tunnel, side)
    tune_transport(conn.transport, settings)
    hub.attach(conn)
    log.info("connected", extra={"tunnel_id": tunnel_id, "side": side.value})
    if early:
        conn.data_received(early)
    conn._update_reading()  # aiohttp may have paused reading while it parsed the request
    conn.start_heartbeat(settings.heartbeat_interval)
    response.force_close()  # the connection is the relay's now: aiohttp must not keep it alive
    return response


async def source_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.SOURCE)


async def device_connect(request: web.Request) -> web.StreamResponse:
    return await _connect(request, Side.DEVICE)


def add_routes(app: web.Application, hub: Hub) -> None:
    app[HUB] = hub
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/source-connect", source_connect, allow_head=False)
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/device-connect", device_connect, allow_head=False)
