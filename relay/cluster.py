"""What one replica needs to know about the others.

A relay that runs alone uses `LocalCluster`: every end is here, and connection states go
straight to the store. Replicas sharing a Redis store use `relay.store.redis_cluster.
RedisCluster`, which keeps, for each end of each tunnel, a lease naming the replica that
holds it and an epoch that grows with every new connection, and passes hints between
replicas. Hints (Redis pub/sub) are at most once: every decision they prompt is also
reached by the periodic reconciliation, so a lost hint only delays it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from relay.clock import Clock
from relay.model import Side
from relay.store.base import TunnelStore


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


class Cluster:
    """The single-replica cluster: nothing to coordinate."""

    replica_id = "local"
    address = ""
    distributed = False

    def __init__(self, store: TunnelStore, clock: Clock) -> None:
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

    async def bridge_secret(self) -> str:
        return ""


