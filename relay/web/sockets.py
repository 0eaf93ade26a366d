"""The data plane's hub and its connections. The endpoints (relay/web/huawei_sockets.py,
relay/web/aws_sockets.py) let aiohttp do the HTTP upgrade and accept through
relay/web/accept.py; then the connection's raw bytes go straight to the codec.

After the 101 answer the transport is handed to a `TunnelConnection` (an asyncio.Protocol):
each read is one call into the decoder, which returns every complete message re-framed for
the peer, written with one `transport.write`. No Python object is made per message.
Backpressure: when a connection's write buffer is over its high-water mark, the relay stops
reading from its peer (and from itself, since its own reads can produce replies), and
resumes when the buffer drains; so memory per tunnel is bounded by the buffer limits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from relay import codec, errors
from relay.cluster import Cluster, Hint, held_epoch, reconcile_verdict
from relay.config import Settings
from relay.model import CloseReason, Side, Tunnel, TunnelProtocol
from relay.closes import CloseCode
from relay.protocol import Action, Close, EndCause, Link, Pairing, Reason, Reasons, Send
from relay.protocol_aws import AwsPairing
from relay.service import TunnelService
from relay.web.connection_audit import ConnectionAudit
from relay.web.metrics import Counters

log = logging.getLogger(__name__)

Result = TypeVar("Result")

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
CLOSE_GRACE = 5.0  # seconds a closing connection may take to flush before it is cut


class FlowControlledEnd(asyncio.Protocol):
    """One end of a tunnel held by this relay: a client's connection (`TunnelConnection`) or a
    bridge to the replica that holds the client (relay/web/bridge.py). It meets the rules'
    `relay.protocol.End`, and relays to a peer end with end-to-end flow control: an end whose
    write buffer is full stops the reading of its peer (and of itself)."""

    side: Side
    version: int      # the subprotocol's (AWS: 1-3); 0: none, or told nothing (relay.protocol.End)
    pairing: Pairing | AwsPairing
    transport: asyncio.Transport
    closing: bool
    peer: FlowControlledEnd | None
    own_full: bool    # our write buffer is over the high-water mark
    peer_full: bool   # our peer's write buffer is
    if TYPE_CHECKING:   # every concrete end has these slots; mypy checks the methods against them
        __slots__ = ("side", "version", "pairing", "transport", "closing", "peer", "own_full", "peer_full")
    else:               # the concrete ends declare them (one slot list per class)
        __slots__ = ()

    def pause_writing(self) -> None:
        self.own_full = True
        self.update_reading()
        if self.peer is not None:
            self.peer.peer_full = True
            self.peer.update_reading()

    def resume_writing(self) -> None:
        self.own_full = False
        self.update_reading()
        if self.peer is not None:
            self.peer.peer_full = False
            self.peer.update_reading()

    def update_reading(self) -> None:
        """Read while both this end's buffer and its peer's have room (and it is not closing)."""
        if self.closing:
            return
        if self.own_full or self.peer_full:
            if self.transport.is_reading():
                self.transport.pause_reading()
        elif not self.transport.is_reading():
            self.transport.resume_reading()

    def link(self, peer: FlowControlledEnd | None) -> None:
        self.peer = peer
        self.peer_full = peer.own_full if peer is not None else False
        self.update_reading()

    def send_message(self, payload: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError


class TunnelConnection(FlowControlledEnd):
    """One upgraded WebSocket connection, one side of one tunnel."""

    __slots__ = ("side", "version", "hub", "pairing", "transport", "decoder", "peer", "closing", "done",
                 "heard", "pinged", "timer", "own_full", "peer_full", "token_hash", "claim", "address", "actor")

    def __init__(self, side: Side, hub: Hub, pairing: Pairing | AwsPairing, transport: asyncio.Transport,
                 token_hash: str, version: int = 0) -> None:
        self.side = side
        self.version = version   # AWS: the subprotocol's, 1-3 (relay/web/aws_sockets.py); Huawei: 0
        self.hub = hub
        self.pairing = pairing
        self.transport = transport
        self.decoder: codec.Decoder | codec.AwsDecoder = pairing.decoders[side]
        self.peer: FlowControlledEnd | None = None
        self.closing = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = True
        self.pinged = False
        self.timer: asyncio.TimerHandle | None = None
        self.own_full = False
        self.peer_full = False
        self.token_hash = token_hash          # to notice a rotation made on another replica
        self.claim: asyncio.Task[int] | None = None   # the cluster lease; its result is our epoch (`epoch`)
        self.address: str = ""                         # the client's IP, for the per-address limit
        self.actor: str = side.value                   # who acts through it, for the audit trail (ConnectionAudit.actor_of)

    @property
    def epoch(self) -> int | None:
        """The epoch of the lease this connection holds; None until its claim has succeeded."""
        return held_epoch(self.claim)

    # -- the hot path --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.heard = True
        to_peer, to_sender, close = self.decoder.feed(data)
        if to_peer:
            peer = self.peer
            assert peer is not None, "the decoder only produces bytes for the peer while one is linked"
            peer.transport.write(to_peer)
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
        self.hub.connection_lost(self)
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

    async def accept_bridge(self, request: web.Request) -> web.StreamResponse: ...


class Hub:
    """The tunnels that have live ends on this relay, and the adapter that carries out what
    the protocol decides. With several replicas, it also keeps this replica's leases and
    bridges ends held by different replicas (relay/web/bridge.py). The rules it follows are in
    the sans-I/O core: the pairing (relay/protocol.py, relay/protocol_aws.py), why the control
    plane ends connections (`EndCause`), the leases (relay/cluster.py: `held_epoch`,
    `reconcile_verdict`)."""

    def __init__(self, service: TunnelService, cluster: Cluster, settings: Settings) -> None:
        self.service = service
        self.cluster = cluster
        self.settings = settings
        self.pairings: dict[str, Pairing | AwsPairing] = {}   # a tunnel's kind of pairing (its protocol)
        self.accepting = True
        self.bridges: ReplicaBridges | None = None   # set when the relay runs as one of several replicas
        self.counters = Counters()
        self.per_address: dict[str, int] = {}
        self.audit = ConnectionAudit(service)
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Result]) -> asyncio.Task[Result]:
        """Run background work tied to an end; kept referenced until it finishes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the control plane's listener and the other replicas' hints: changes to a tunnel end
    # its sockets at once, here and, through a hint, on the other replicas ------------------

    def tunnel_created(self, tunnel: Tunnel, device_token: str) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel, reason: CloseReason) -> None:
        cause = EndCause.of_close(reason)
        self.end_sides(tunnel.tunnel_id, frozenset(Side), cause)
        self.spawn(self.cluster.publish(Hint("ended", tunnel.tunnel_id, ("source", "device"), cause.value,
                                             self.cluster.replica_id)))

    def tokens_rotated(self, tunnel: Tunnel, sides: frozenset[Side], device_token: str | None) -> None:
        self.end_sides(tunnel.tunnel_id, sides, EndCause.ROTATED)
        names = tuple(sorted(s.value for s in sides))
        self.spawn(self.cluster.publish(Hint("ended", tunnel.tunnel_id, names, EndCause.ROTATED.value,
                                             self.cluster.replica_id)))

    def end_sides(self, tunnel_id: str, sides: frozenset[Side], cause: EndCause) -> None:
        pairing = self.pairings.get(tunnel_id)
        if pairing is not None:
            self.apply(pairing, pairing.end_sides(sides, cause.reason))

    def on_hint(self, hint: Hint) -> None:
        """A hint from another replica."""
        if hint.kind == "ended":
            try:
                cause = EndCause.parse(hint.reason)
            except ValueError:
                # Not a cause this replica knows (a newer replica's?): the reconciliation ends
                # what the store says is over, so the hint is left to it rather than guessed at.
                log.warning("ignoring a cluster hint with an unknown reason",
                            extra={"tunnel_id": hint.tunnel_id[:64], "reason": hint.reason[:64]})
                return
            self.end_sides(hint.tunnel_id, frozenset(Side(s) for s in hint.sides), cause)
        elif hint.kind == "attached" and self.bridges is not None:
            self.bridges.on_attached(hint)

    # -- ends coming and going -------------------------------------------------------------

    def attach(self, conn: TunnelConnection) -> None:
        self.audit.source_acts(conn)
        self.audit.connection(conn, "connected")
        self.apply(conn.pairing, conn.pairing.attach(conn))
        conn.claim = self.spawn(self._claim(conn))

    async def _claim(self, conn: TunnelConnection) -> int:
        epoch = await self.cluster.claim(conn.pairing.tunnel_id, conn.side)
        if self.bridges is not None and not conn.closing:
            await self.bridges.attached_here(conn, epoch)
        return epoch

    def connection_lost(self, conn: TunnelConnection) -> None:
        """A connection of this relay is gone (closed by either side, or failed)."""
        self.audit.connection(conn, "disconnected")
        self.detach(conn)
        self.release(conn)
        self.forget_address(conn.address)

    def release(self, conn: TunnelConnection) -> None:
        async def release() -> None:
            try:
                epoch = await conn.claim if conn.claim is not None else None
            except Exception:
                return
            if epoch is not None:
                await self.cluster.release(conn.pairing.tunnel_id, conn.side, epoch)
        self.spawn(release())

    def detach(self, end: FlowControlledEnd) -> None:
        pairing = end.pairing
        self.apply(pairing, pairing.detach(end))
        if self.bridges is not None:
            self.bridges.after_detach(pairing)
        if pairing.empty and self.pairings.get(pairing.tunnel_id) is pairing:
            del self.pairings[pairing.tunnel_id]
            self.audit.tunnel_gone(pairing.tunnel_id)
            for side, decoder in pairing.decoders.items():
                self.counters.retired_messages[pairing.protocol, side.value] += decoder.messages
                self.counters.retired_bytes[pairing.protocol, side.value] += decoder.bytes

    def end_connection(self, conn: TunnelConnection, reason: Reason) -> None:
        if conn.pairing.ends[conn.side] is conn:
            self.apply(conn.pairing, conn.pairing.end_sides({conn.side}, reason))

    def pairing_for(self, tunnel: Tunnel) -> Pairing | AwsPairing:
        """The pairing of a tunnel with ends here, of its protocol's kind; made on first use."""
        pairing = self.pairings.get(tunnel.tunnel_id)
        if pairing is None:
            if tunnel.protocol is TunnelProtocol.AWS:
                pairing = AwsPairing(tunnel.tunnel_id, tunnel.services)
            else:
                pairing = Pairing(tunnel.tunnel_id, self.settings.max_message_size, self.audit.tunnel_audit(tunnel))
            self.pairings[tunnel.tunnel_id] = pairing
            self.audit.tunnel_here(tunnel, pairing)
        return pairing

    def apply(self, pairing: Pairing | AwsPairing, actions: list[Action]) -> None:
        """Carry out what the rules decided."""
        for action in actions:
            if isinstance(action, Send):
                action.end.send_message(action.message)
            elif isinstance(action, Close):
                if action.code == CloseCode.REPLACED and isinstance(action.end, TunnelConnection):
                    self.audit.connection(action.end, "evicted")
                action.end.close(action.code, action.reason)
            elif isinstance(action, Link):
                action.end.link(action.peer)
            # StateChange: connection states follow the cluster's claims and releases.

    def local_ends(self) -> list[TunnelConnection]:
        return [e for p in self.pairings.values() for e in p.ends.values() if isinstance(e, TunnelConnection)]

    # -- connections per address (--max-connections-per-address) ---------------------------

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
        held: list[tuple[TunnelConnection, int]] = []
        for end in self.local_ends():
            claim = end.claim
            if claim is None or not claim.done() or end.closing:
                continue
            epoch = held_epoch(claim)
            if epoch is None:
                # The store was away when this end claimed its lease: claim it again, and leave
                # it out of this round (it holds no lease to renew yet).
                failure = "CancelledError" if claim.cancelled() else type(claim.exception()).__name__
                log.warning("claiming the lease of a connection again", extra={
                    "tunnel_id": end.pairing.tunnel_id, "side": end.side.value, "error": failure})
                end.claim = self.spawn(self._claim(end))
                continue
            held.append((end, epoch))
        lost = set(await self.cluster.renew([(e.pairing.tunnel_id, e.side, epoch) for e, epoch in held]))
        for end, epoch in held:
            if end.closing:
                continue
            lease_lost = (end.pairing.tunnel_id, end.side, epoch) in lost
            tunnel = None if lease_lost else await self.service.store.get(end.pairing.tunnel_id)
            reason = reconcile_verdict(tunnel, end.side, end.token_hash, self.service.clock.now(), lease_lost=lease_lost)
            if reason is not None:
                self.end_connection(end, reason)
        if self.bridges is not None:
            await self.bridges.reconcile()

    # -- going away ------------------------------------------------------------------------

    async def shutdown(self, drain_seconds: float = 0.0) -> None:
        """Tell every end the relay is going away and close it, spread over `drain_seconds`
        so that clients do not all reconnect at the same instant."""
        self.accepting = False
        close_code = Reasons.SHUTTING_DOWN.close_code
        assert close_code is not None
        pairings = list(self.pairings.values())
        step = drain_seconds / len(pairings) if pairings and drain_seconds > 0 else 0.0
        for pairing in pairings:
            local = frozenset(s for s, e in pairing.ends.items() if isinstance(e, TunnelConnection))
            self.apply(pairing, pairing.end_sides(local, Reasons.SHUTTING_DOWN))
            for end in list(pairing.ends.values()):
                if end is not None:   # the ends of other replicas (bridges) here
                    end.close(int(close_code), "relay shutting down")
            if step:
                await asyncio.sleep(step)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
