"""Bridges: when the two ends of a tunnel are held by different replicas.

The replica holding the device end opens one internal connection to the replica holding the
source end (an HTTP upgrade to `/internal/bridge` on its internal port, then a plain byte
stream). Each replica checks what its own end sends, with its own decoder, and writes the
resulting frames into the bridge; the other replica writes them to its end unchanged. So
order is kept in each direction, tunnel data never goes through Redis, and flow control is
the same as for a local pair: a full buffer anywhere stops the reading upstream.

A `BridgeEnd` stands in the `Pairing` for the end held elsewhere. Messages the protocol
addresses to it are dropped: the replica that holds that end tells it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket

from aiohttp import web

from relay import errors
from relay.cluster import (BRIDGE_CREDENTIAL_LIFETIME, BridgeClaim, Cluster, Hint, Lease, bridge_credential,
                           bridge_refusal)
from relay.model import Side
from relay.protocol import Pairing, Reasons
from relay.protocol_aws import AwsPairing
from relay.web.sockets import FlowControlledEnd, Hub, TunnelConnection
from relay.web.takeover import UpgradeResponse, hand_over_transport

log = logging.getLogger(__name__)

BRIDGE_PATH = "/internal/bridge"


class BridgeEnd(FlowControlledEnd):
    """The end of `side` that another replica holds, reached through the bridge."""

    __slots__ = ("side", "version", "pairing", "hub", "transport", "peer", "closing", "own_full", "peer_full",
                 "remote", "done")

    def __init__(self, side: Side, pairing: Pairing | AwsPairing, hub: Hub, transport: asyncio.Transport,
                 remote: Lease) -> None:
        self.side = side
        self.version = 0   # the relay tells it nothing: the replica holding its client does
        self.pairing = pairing
        self.hub = hub
        self.transport = transport
        self.remote = remote
        self.peer: FlowControlledEnd | None = None
        self.closing = False
        self.own_full = False
        self.peer_full = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _large_buffers(transport)

    def data_received(self, data: bytes) -> None:
        # Already checked and framed by the replica that read it from its client.
        if self.peer is not None and not self.peer.closing:
            self.peer.transport.write(data)

    def send_message(self, payload: bytes) -> None:
        pass

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.hub.detach(self)
        if not self.done.done():
            self.done.set_result(None)


BRIDGE_SOCKET_BUFFER = 1 << 20


def _large_buffers(transport: asyncio.Transport) -> None:
    """A bridge carries many tunnels' worth of data between two replicas: large socket
    buffers let each read and write move more of it, so fewer system calls per message."""
    transport.set_write_buffer_limits(high=BRIDGE_SOCKET_BUFFER, low=BRIDGE_SOCKET_BUFFER // 4)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, BRIDGE_SOCKET_BUFFER)


def _hold_device(device: TunnelConnection) -> None:
    """Stop reading the device while its bridge is being built. `peer_full` is the flow
    control's "the peer cannot take data now", which is what the half-built bridge is; the
    `link` that attaching the bridge makes recomputes it from the new peer.
    The heartbeat counts the hold as heard: an unread device cannot show it is alive (its
    pongs wait in the kernel too), and the hold is the relay's doing, not its silence. So it
    is dropped as silent only after two more intervals without a byte, which a hold of at most
    10 s cannot make up unless --heartbeat-interval is under 5 s."""
    device.heard = True
    device.peer_full = True
    device.update_reading()


def _end_hold(device: TunnelConnection) -> None:
    """End the hold unless the device is gone: read it as its current link (if any) allows."""
    if not device.closing:
        device.link(device.peer)


class _UpgradeAnswer(asyncio.Protocol):
    """Reads the answer to the bridge's upgrade request, then steps aside.

    The source's replica links its end as soon as it has answered 101, so its client's first
    messages may follow the answer at once, in the same read or in later ones, before `_open`
    has run again: everything after the answer's head stays in `buffer` until `_open` hands
    the transport to the bridge and takes it (`take_rest`), in the same step."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.head: bytes | None = None
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None and b"\r\n\r\n" in self.buffer:
            self.head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.answered(self.head)

    def answered(self, head: bytes) -> None:
        """The head of the answer is here: `_open` may go on."""
        self.answer.set_result(head)

    def take_rest(self) -> bytes:
        """What came after the answer so far; from now on the bridge reads the rest itself."""
        rest, self.buffer = self.buffer, b""
        return rest

    def connection_lost(self, exc):
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("the other replica closed the bridge"))


class Bridges:
    """This replica's bridges to the others: it opens one when it holds a tunnel's device end and
    another replica its source end, and accepts those the other replicas open (`accept_bridge`,
    on the internal port). Meets the hub's `ReplicaBridges`."""

    def __init__(self, hub: Hub, cluster: Cluster) -> None:
        self.hub = hub
        self.cluster = cluster
        self.connecting: set[str] = set()
        self.used: dict[str, int] = {}   # credentials accepted, until they expire: each opens one bridge

    # -- events ---------------------------------------------------------------------------

    async def attached_here(self, conn: TunnelConnection, epoch: int) -> None:
        tunnel_id = conn.pairing.tunnel_id
        await self.cluster.publish(Hint("attached", tunnel_id, (conn.side.value,), "", self.cluster.replica_id, epoch))
        if conn.side is Side.DEVICE:
            # inside the claim's own task: the epoch is known, though the task is not done
            await self.bridge_device(conn.pairing, epoch)
        else:
            # A device held here may have been bridged to an older source elsewhere.
            device = conn.pairing.ends[Side.DEVICE]
            if isinstance(device, BridgeEnd):
                pass  # the newer source is local: Pairing.attach already relinked the device bridge

    def on_attached(self, hint: Hint) -> None:
        """Another replica took an end of a tunnel that has an end here."""
        pairing = self.hub.pairings.get(hint.tunnel_id)
        if pairing is None or not hint.sides:
            return
        side = Side(hint.sides[0])
        local = pairing.ends[side]
        if isinstance(local, TunnelConnection) and (held := local.epoch) is not None and held < hint.epoch:
            self.hub.end_connection(local, Reasons.EVICTED)  # the newer connection on another replica wins
        if side is Side.SOURCE and isinstance(pairing.ends[Side.DEVICE], TunnelConnection):
            self.hub.spawn(self.bridge_device(pairing))

    def after_detach(self, pairing: Pairing | AwsPairing) -> None:
        """A bridge is only worth keeping while an end here uses it."""
        if not any(isinstance(e, TunnelConnection) for e in pairing.ends.values()):
            for end in list(pairing.ends.values()):
                if isinstance(end, BridgeEnd):
                    end.close()

    async def reconcile(self) -> None:
        for pairing in list(self.hub.pairings.values()):
            if isinstance(pairing.ends[Side.DEVICE], TunnelConnection):
                await self.bridge_device(pairing)

    # -- the device's replica opens the bridge ----------------------------------------------

    async def bridge_device(self, pairing: Pairing | AwsPairing, device_epoch: int | None = None) -> None:
        """Bridge the device held here to the source's replica, if that is elsewhere and not
        bridged yet. `device_epoch`: the device's lease, when its claim has just been made
        (otherwise the finished claim says it)."""
        tunnel_id = pairing.tunnel_id
        device = pairing.ends[Side.DEVICE]
        if not isinstance(device, TunnelConnection) or device.closing or tunnel_id in self.connecting:
            return
        lease = await self.cluster.owner(tunnel_id, Side.SOURCE)
        current = pairing.ends[Side.SOURCE]
        if lease is None or lease.replica_id == self.cluster.replica_id:
            return
        if isinstance(current, BridgeEnd) and current.remote == lease and not current.closing:
            return
        if device_epoch is None:
            device_epoch = device.epoch
            if device_epoch is None:
                return
        if tunnel_id in self.connecting:
            return  # another attempt began while this one asked the store (it holds the device)
        self.connecting.add(tunnel_id)
        try:
            await self._open(pairing, device, device_epoch, lease)
        except (TimeoutError, OSError, ConnectionError, ValueError) as exc:
            log.info("could not bridge to the source's replica; will retry",
                     extra={"tunnel_id": tunnel_id, "replica": lease.replica_id, "error": str(exc)})
        finally:
            self.connecting.discard(tunnel_id)

    async def _open(self, pairing: Pairing | AwsPairing, device: TunnelConnection, device_epoch: int, lease: Lease) -> None:
        host, _, port = lease.address.rpartition(":")
        claim = BridgeClaim(pairing.tunnel_id, self.cluster.replica_id, self.cluster.address, device_epoch,
                            lease.epoch, math.ceil(self.hub.service.clock.now() + BRIDGE_CREDENTIAL_LIFETIME),
                            secrets.token_hex(16))
        request = (
            f"GET {BRIDGE_PATH} HTTP/1.1\r\nHost: {lease.address}\r\nConnection: Upgrade\r\n"
            f"Upgrade: relay-bridge\r\nX-Relay-Tunnel: {claim.tunnel_id}\r\n"
            f"X-Relay-Side: device\r\nX-Relay-Epoch: {claim.epoch}\r\nX-Relay-Peer-Epoch: {claim.peer_epoch}\r\n"
            f"X-Relay-Replica: {claim.replica_id}\r\nX-Relay-Address: {claim.address}\r\n"
            f"X-Relay-Expires: {claim.expires}\r\nX-Relay-Nonce: {claim.nonce}\r\n"
            f"X-Relay-Credential: {bridge_credential(self.cluster.bridge_secret, claim)}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        # The other replica links its end as soon as it answers 101 (a Huawei source is told
        # `connect_tunnel` then), but the device is linked here only once that answer is read:
        # what the device sent in between would be answered "peer absent" (AWS: STREAM_RESET)
        # instead of relayed. So the device is not read while the bridge is built; its bytes
        # wait in the kernel until it is linked, or the attempt is over (10 s at most).
        _hold_device(device)
        try:
            transport, handshake = await asyncio.wait_for(
                loop.create_connection(lambda: _UpgradeAnswer(request), host.strip("[]"), int(port)), 5)
            try:
                head = await asyncio.wait_for(handshake.answer, 5)
            except BaseException:
                transport.close()
                raise
            if not head.startswith(b"HTTP/1.1 101"):
                transport.close()
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            if pairing.ends[Side.DEVICE] is not device or device.closing:
                transport.close()  # the device left while the bridge was being built
                return
            bridge = BridgeEnd(Side.SOURCE, pairing, self.hub, transport, lease)
            rest = handshake.take_rest()   # with set_protocol in one step: no read falls between
            transport.set_protocol(bridge)
            self.hub.apply(pairing, pairing.attach(bridge))  # links the device: `link` ends the hold
            log.info("bridged", extra={"tunnel_id": pairing.tunnel_id, "to": lease.replica_id})
            if rest:
                bridge.data_received(rest)
        finally:
            _end_hold(device)  # whatever happened (failure, timeout, cancellation, the device left)

    # -- the source's replica accepts it --------------------------------------------------------

    async def accept_bridge(self, request: web.Request) -> web.StreamResponse:
        """A bridge from the replica that holds the device end. What comes through it is
        relayed to the source unchecked (the other replica checked it), so the request must
        prove it comes from a replica: a credential made for this bridge with the replicas'
        secret (relay/cluster.py), not used before, from the holder of the device's lease."""
        try:
            claim = BridgeClaim(request.headers["X-Relay-Tunnel"], request.headers["X-Relay-Replica"],
                                request.headers["X-Relay-Address"], int(request.headers["X-Relay-Epoch"]),
                                int(request.headers["X-Relay-Peer-Epoch"]), int(request.headers["X-Relay-Expires"]),
                                request.headers["X-Relay-Nonce"])
            credential = request.headers["X-Relay-Credential"]
        except (KeyError, ValueError):
            raise errors.Forbidden("not a replica of this relay: incomplete bridge request") from None
        now = self.hub.service.clock.now()
        refusal = bridge_refusal(self.cluster.bridge_secret, claim, credential, now)
        if refusal is None and credential in self.used:
            refusal = "this bridge credential was used already"
        if refusal is not None:
            log.warning("refused a bridge request", extra={"tunnel_id": claim.tunnel_id[:64], "why": refusal,
                                                           "peer": request.remote or ""})
            raise errors.Forbidden(refusal)
        for old in [c for c, expires in self.used.items() if expires <= now]:
            del self.used[old]
        self.used[credential] = claim.expires
        tunnel_id, epoch, expected = claim.tunnel_id, claim.epoch, claim.peer_epoch
        remote = Lease(claim.replica_id, claim.address, epoch)
        if await self.cluster.owner(tunnel_id, Side.DEVICE) != remote:
            raise errors.TunnelNotFound("the device end is not held by the replica that asks for the bridge")
        pairing = self.hub.pairings.get(tunnel_id)
        source = pairing.ends[Side.SOURCE] if pairing is not None else None
        if pairing is None or not isinstance(source, TunnelConnection) or source.closing or source.epoch != expected:
            raise errors.TunnelNotFound("the source end is no longer here")
        device = pairing.ends[Side.DEVICE]
        device_held = device.epoch if isinstance(device, TunnelConnection) else None
        if device_held is not None and device_held > epoch:
            raise errors.DeviceBusy("a newer device connection is here")
        response = UpgradeResponse(status=101, headers={"Upgrade": "relay-bridge", "Connection": "Upgrade"})
        await response.prepare(request)
        if request.transport is None or request.transport.is_closing():
            return response
        bridge, early = hand_over_transport(request, lambda t: BridgeEnd(Side.DEVICE, pairing, self.hub, t, remote))
        self.hub.apply(pairing, pairing.attach(bridge))
        if early:
            bridge.data_received(early)
        response.force_close()
        return response
