"""The store interface. Every method is atomic: the rules that span several records (one
open tunnel per device, the per-project quota) are enforced inside the store so that
concurrent requests, or several replicas sharing one store, cannot break them.

The store also keeps the notify outbox: the device token of each tunnel whose MQTT notify
has not been acknowledged by the broker yet. It lives with the tunnels so that it survives
restarts and is shared by replicas; an entry goes when its notify is delivered or when its
tunnel closes. It holds a secret (the device token): a store never logs it."""

from __future__ import annotations

import abc

from relay.model import CloseReason, ListQuery, Page, PendingNotify, Side, Tunnel


class TunnelStore(abc.ABC):
    @abc.abstractmethod
    async def insert(self, tunnel: Tunnel, max_per_project: int, notify_token: str | None = None) -> None:
        """Add a tunnel. Raises DeviceBusy when the device has an open tunnel, QuotaExceeded
        when the project already holds `max_per_project` tunnels (open or closed). With
        `notify_token`, an outbox entry for it is added in the same step (notify PENDING)."""

    @abc.abstractmethod
    async def get(self, tunnel_id: str) -> Tunnel | None: ...

    @abc.abstractmethod
    async def list(self, project_id: str, query: ListQuery) -> Page: ...

    @abc.abstractmethod
    async def close(self, tunnel_id: str, when: float, reason: CloseReason) -> Tunnel | None:
        """Close an OPEN tunnel; None when it is unknown or already closed. Drops its outbox
        entry: a closed tunnel's notify is never delivered (its notify_status becomes None)."""

    @abc.abstractmethod
    async def delete(self, tunnel_id: str) -> bool:
        """Delete a CLOSED tunnel; False when it is unknown or still open."""

    @abc.abstractmethod
    async def replace_token_hashes(
        self, tunnel_id: str, source_hash: str | None, device_hash: str | None
    ) -> Tunnel | None:
        """Swap the token hashes of an OPEN tunnel (None leaves a side as it is)."""

    @abc.abstractmethod
    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool, when: float) -> None: ...

    @abc.abstractmethod
    async def due_for_expiry(self, now: float) -> list[str]:
        """Ids of OPEN tunnels whose lifetime has run out."""

    @abc.abstractmethod
    async def count_by_status(self) -> dict[str, int]:
        """How many tunnels are OPEN and CLOSED, across projects (for metrics)."""

    @abc.abstractmethod
    async def purge_closed(self, closed_before: float) -> int:
        """Delete tunnels closed before the given time; returns how many."""

    # -- the notify outbox ---------------------------------------------------------------

    @abc.abstractmethod
    async def queue_notify(self, tunnel_id: str, device_token: str) -> Tunnel | None:
        """Put (or replace) the outbox entry of an OPEN tunnel and mark its notify PENDING;
        None when the tunnel is unknown or closed."""

    @abc.abstractmethod
    async def pending_notifies(self, limit: int) -> list[PendingNotify]:
        """Up to `limit` outbox entries, oldest first."""

    @abc.abstractmethod
    async def notify_delivered(self, tunnel_id: str, device_token: str) -> bool:
        """Remove the entry if it still holds this token (a newer token, queued by a rotation
        meanwhile, stays) and mark the notify DELIVERED; False when nothing matched."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
