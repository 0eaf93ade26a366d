"""The store interface. Every method is atomic: the rules that span several records (one
open tunnel per device, the per-project quota) are enforced inside the store so that
concurrent requests, or several replicas sharing one store, cannot break them."""

from __future__ import annotations

import abc

from relay.model import ListQuery, Page, Side, Tunnel, CloseReason


class TunnelStore(abc.ABC):
    @abc.abstractmethod
    async def insert(self, tunnel: Tunnel, max_per_project: int) -> None:
        """Add a tunnel. Raises DeviceBusy when the device has an open tunnel, QuotaExceeded
        when the project already holds `max_per_project` tunnels (open or closed)."""

    @abc.abstractmethod
    async def get(self, tunnel_id: str) -> Tunnel | None: ...

    @abc.abstractmethod
    async def list(self, project_id: str, query: ListQuery) -> Page: ...

    @abc.abstractmethod
    async def close(self, tunnel_id: str, when: float, reason: CloseReason) -> Tunnel | None:
        """Close an OPEN tunnel; None when it is unknown or already closed."""

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
    async def purge_closed(self, closed_before: float) -> int:
        """Delete tunnels closed before the given time; returns how many."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
