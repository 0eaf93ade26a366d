"""The store interface, one protocol per concern: `Tunnels` (the tunnel records and their
access tokens), `NotifyOutbox` (the notifies waiting for the MQTT broker), `AuditTrail` (audit
events) and `SessionRecordings`. `TunnelStore` is the four in one database: what `open_store`
returns and what the SQLite and Redis stores implement. A caller that needs less types against
what it uses (the audit log, the notifier; the cluster states its own `ConnectStates`).

Every method is atomic: the rules that span several records (one open tunnel per device, the
per-project quota) are enforced inside the store so that concurrent requests, or several
replicas sharing one store, cannot break them. The methods stay abstract in the protocols, so
a store that subclasses them and misses one cannot be made."""

from __future__ import annotations

import abc
import builtins
from typing import Protocol

from relay.audit import AuditEvent, AuditPage, AuditQuery
from relay.model import Claim, CloseReason, ListQuery, Page, PendingNotify, Side, Tunnel
from relay.recording import Recording, RecordingPage, RecordingQuery


class Tunnels(Protocol):
    """The tunnel records: their life (insert, close, delete, expiry, retention), their
    access tokens (rotation, the AWS protocol's lookups and client-token claims) and which of
    their ends are connected."""

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
        self, tunnel_id: str, source_hash: str | None, device_hash: str | None, source_issuer: str | None = None
    ) -> Tunnel | None:
        """Swap the token hashes of an OPEN tunnel (None leaves a side as it is). A new token
        is unused: the AWS client-token binding of each rotated side is forgotten. A new
        source token is kept with `source_issuer` (the API token name that asked for it)."""

    # AWS-protocol tunnels (docs/aws.md): clients present a token, no tunnel id

    @abc.abstractmethod
    async def find_by_token_hash(self, token_hash: str) -> Tunnel | None:
        """The tunnel (open or closed, not deleted) one of whose current access tokens hashes
        to `token_hash`; None when there is none. AWS clients present a token and no tunnel id.
        Follows rotations: an old token finds nothing."""

    @abc.abstractmethod
    async def claim_access(self, tunnel_id: str, side: Side, token_hash: str, client_hash: str) -> Claim:
        """One connection's use of the side's access token, atomically (replicas share it).
        `client_hash` is the SHA-256 of the client token, or "" when none was sent. The first
        use binds the token to `client_hash`; later uses are OK only with the same non-empty
        client token. GONE: the tunnel is not open; ROTATED: `token_hash` is not the side's
        token any more; USED: the token was used before and this use may not reuse it."""

    @abc.abstractmethod
    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool, when: float) -> None: ...

    @abc.abstractmethod
    async def due_for_expiry(self, now: float) -> builtins.list[str]:
        """Ids of OPEN tunnels whose lifetime has run out."""

    @abc.abstractmethod
    async def count_by_status(self) -> dict[str, int]:
        """How many tunnels are OPEN and CLOSED, across projects (for metrics)."""

    @abc.abstractmethod
    async def purge_closed(self, closed_before: float) -> int:
        """Delete tunnels closed before the given time; returns how many."""


class NotifyOutbox(Protocol):
    """The notify outbox: the device token of each OPEN tunnel the relay notified, marked
    waiting (to be published) or delivered (the broker acknowledged it). It lives with the
    tunnels so that it survives restarts and is shared by replicas (`Tunnels.insert` adds an
    entry, `Tunnels.close` drops it). An entry stays after delivery, because a broker's
    acknowledgement does not mean the device got it: when the device comes online while its
    end of the tunnel is not connected, the notify is queued again (`renotify`). It holds a
    secret (the device token): a store never logs it."""

    @abc.abstractmethod
    async def queue_notify(self, tunnel_id: str, device_token: str) -> Tunnel | None:
        """Put (or replace) the outbox entry of an OPEN tunnel and mark its notify PENDING;
        None when the tunnel is unknown or closed."""

    @abc.abstractmethod
    async def pending_notifies(self, limit: int) -> builtins.list[PendingNotify]:
        """Up to `limit` outbox entries waiting to be published, oldest first."""

    @abc.abstractmethod
    async def notify_delivered(self, tunnel_id: str, device_token: str) -> bool:
        """The broker acknowledged the notify: if the entry still holds this token (a newer
        token, queued by a rotation meanwhile, stays waiting) it stops waiting, and the notify
        is marked DELIVERED; False when nothing matched. The entry is kept (see `renotify`)."""

    @abc.abstractmethod
    async def renotify(self, device_id: str) -> builtins.list[str]:
        """The device came online: every OPEN tunnel of `device_id` (in any project) whose
        notify was delivered and whose device end is not connected gets its entry waiting again
        (notify PENDING). Returns their ids."""


class AuditTrail(Protocol):
    """The audit events (docs/audit.md); in the same database as the tunnels
    (relay/store/audit_sqlite.py, audit_redis.py)."""

    @abc.abstractmethod
    async def append_audit(self, events: builtins.list[AuditEvent]) -> None:
        """Add events, all or none. Idempotent by event_id: a batch retried after a failure
        adds nothing twice."""

    @abc.abstractmethod
    async def query_audit(self, project_id: str, query: AuditQuery) -> AuditPage:
        """The project's events that match, newest first (by time, then event_id); the
        page's marker, passed back in the query, gives the next page (None: no more)."""

    @abc.abstractmethod
    async def purge_audit(self, before: float) -> int:
        """Delete events older than `before` (every project); returns how many."""


class SessionRecordings(Protocol):
    """The recorded SSH sessions (asciicast, docs/audit.md), next to the audit events."""

    @abc.abstractmethod
    async def save_recording(self, recording: Recording) -> None:
        """Keep a session recording (replacing one of the same project and session_id)."""

    @abc.abstractmethod
    async def get_recording(self, project_id: str, session_id: str) -> Recording | None:
        """The recording with its data; None when unknown or another project's."""

    @abc.abstractmethod
    async def list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        """The project's recordings without their data, newest first (by started)."""

    @abc.abstractmethod
    async def purge_recordings(self, before: float) -> int:
        """Delete recordings that ended before `before` (every project); returns how many."""


class TunnelStore(Tunnels, NotifyOutbox, AuditTrail, SessionRecordings):
    """The whole store: every concern in one database (SQLite for one relay, Redis for
    several replicas), opened by `relay.store.open_store` and closed once."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
