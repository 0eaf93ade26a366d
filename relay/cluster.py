"""What one replica needs to know about the others.

A relay that runs alone uses `LocalCluster`: every end is here, and connection states go
straight to the store. Replicas sharing a Redis store use `relay.store.redis_cluster.
RedisCluster`, which keeps, for each end of each tunnel, a lease naming the replica that
holds it and an epoch that grows with every new connection, and passes hints between
replicas. Hints (Redis pub/sub) are at most once: every decision they prompt is also
reached by the periodic reconciliation, so a lost hint only delays it.

Bridges between replicas carry messages that the sending replica has checked and the
receiving one relays unchecked, so only a replica may open one: its request carries a
credential made for that one bridge (`bridge_credential`), an HMAC keyed with the replicas'
shared secret (--bridge-secret-file; never in Redis) over the tunnel, the replica and its
lease, and an expiry. It is accepted once, before its expiry, from the replica that holds
the device end's lease with that epoch.

What the replicas decide from their leases is here too, without I/O: the epoch an end holds
(`held_epoch`, the one lease-epoch check of the hub and the bridges) and what the periodic
reconciliation does with an end (`reconcile_verdict`). Tested without sockets
(tests/test_cluster.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol

from relay.clock import Clock
from relay.model import CloseReason, Side, Status, Tunnel
from relay.protocol import Reason, Reasons


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    replica_id: str
    address: str       # host:port of the replica's internal listener
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class Hint:
    """`ended`: the tunnel's `sides` must end with `reason` (closed, expired, rotated).
    `attached`: an end of the tunnel was attached on `replica_id` with `epoch`."""

    kind: str
    tunnel_id: str
    sides: tuple[str, ...] = ()
    reason: str = ""
    replica_id: str = ""
    epoch: int = 0


HintHandler = Callable[[Hint], None]


def held_epoch(claim: asyncio.Future[int] | None) -> int | None:
    """The epoch of the lease an end holds: its claim's result once the claim has succeeded;
    None while it runs, after it failed (the store was away), or without one."""
    if claim is None or not claim.done() or claim.cancelled() or claim.exception() is not None:
        return None
    return claim.result()


def reconcile_verdict(tunnel: Tunnel | None, side: Side, token_hash: str, now: float, *,
                      lease_lost: bool) -> Reason | None:
    """What the periodic reconciliation does with an end held here: None keeps it, otherwise
    it ends with the reason returned. `lease_lost`: another replica holds the side now (a
    newer connection, there); `tunnel`: the tunnel as the store has it (None: gone);
    `token_hash`: the hash of the token the end connected with."""
    if lease_lost:
        return Reasons.EVICTED
    if tunnel is None or tunnel.status is not Status.OPEN or tunnel.expires_at <= now:
        expired = tunnel is not None and tunnel.close_reason is CloseReason.EXPIRED
        return Reasons.TUNNEL_EXPIRED if expired else Reasons.TUNNEL_CLOSED
    if tunnel.token_hash(side) != token_hash:
        return Reasons.TOKEN_ROTATED   # rotated on another replica, whose hint was lost
    return None

BRIDGE_CREDENTIAL_LIFETIME = 30.0   # seconds; replicas' clocks must agree within it
MIN_BRIDGE_SECRET = 32              # characters of --bridge-secret-file


@dataclasses.dataclass(frozen=True, slots=True)
class BridgeClaim:
    """What the device's replica asserts when it opens a bridge."""

    tunnel_id: str
    replica_id: str
    address: str       # its internal address
    epoch: int         # its device end's lease
    peer_epoch: int    # the source end's lease it expects to find
    expires: int       # Unix time after which the credential is void
    nonce: str         # random: no two requests carry the same credential


def bridge_credential(secret: str, claim: BridgeClaim) -> str:
    """The credential of one bridge: only a holder of the replicas' secret can make it, and
    it opens nothing but the bridge of this claim."""
    fields = ("relay-bridge-v1", claim.tunnel_id, claim.replica_id, claim.address, str(claim.epoch),
              str(claim.peer_epoch), str(claim.expires), claim.nonce)
    return hmac.new(secret.encode(), "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def bridge_refusal(secret: str, claim: BridgeClaim, credential: str, now: float) -> str | None:
    """Why a bridge request must be refused, or None when its credential holds."""
    if not secret:
        return "this replica takes no bridges (no bridge secret)"
    if not hmac.compare_digest(credential.encode(), bridge_credential(secret, claim).encode()):
        return "not a replica of this relay"
    if not now < claim.expires <= now + 2 * BRIDGE_CREDENTIAL_LIFETIME:
        return "the bridge credential is expired (or the replicas' clocks disagree)"
    return None


class ConnectStates(Protocol):
    """Where a cluster records that an end connected or went away: the tunnel store
    (relay/store/base.py, which sits above this module and implements it)."""

    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool, when: float) -> None: ...


class Cluster:
    """The single-replica cluster: nothing to coordinate."""

    replica_id = "local"
    address = ""
    distributed = False

    def __init__(self, store: ConnectStates, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.handler: HintHandler | None = None
        self._epochs: dict[tuple[str, Side], int] = {}

    async def start(self, handler: HintHandler) -> None:
        self.handler = handler

    async def stop(self) -> None:
        pass

    async def claim(self, tunnel_id: str, side: Side) -> int:
        """This replica now holds `side` of the tunnel; returns the new epoch."""
        epoch = self._epochs.get((tunnel_id, side), 0) + 1
        self._epochs[(tunnel_id, side)] = epoch
        await self.store.set_connect_state(tunnel_id, side, True, self.clock.now())
        return epoch

    async def release(self, tunnel_id: str, side: Side, epoch: int) -> bool:
        """The end of that epoch went away. Only the holder of the newest epoch may mark the
        side disconnected: a stale replica cannot undo a newer connection (fencing)."""
        if self._epochs.get((tunnel_id, side)) != epoch:
            return False
        del self._epochs[(tunnel_id, side)]
        await self.store.set_connect_state(tunnel_id, side, False, self.clock.now())
        return True

    async def owner(self, tunnel_id: str, side: Side) -> Lease | None:
        return None

    async def renew(self, ends: list[tuple[str, Side, int]]) -> list[tuple[str, Side, int]]:
        """Extend the leases of the ends held here; returns those this replica lost."""
        return []

    async def publish(self, hint: Hint) -> None:
        """Tell the other replicas; alone, there is no one to tell."""

    bridge_secret = ""   # a single relay opens and takes no bridges


