"""The audit trail of the tunnels' connections (docs/audit.md), kept by the hub
(relay/web/sockets.py): `{side}_connected`, `_disconnected` and `_evicted`, who acts through
each connection, and the watcher of a Huawei tunnel's logins, forwards and recordings
(relay/sessions.py). Never on the per-message path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from relay.audit import ACTOR_SOURCE, EventType, source_actor
from relay.model import Side, Tunnel
from relay.protocol import Pairing
from relay.protocol_aws import AwsPairing
from relay.service import TunnelService
from relay.sessions import SessionWatcher, TunnelAudit

if TYPE_CHECKING:
    from relay.recording import Recording


class AuditedConnection(Protocol):
    """What the audit trail reads of a connection (relay.web.sockets.TunnelConnection)."""

    side: Side
    pairing: Pairing | AwsPairing
    actor: str     # who acts through it
    address: str   # the client's IP


class ConnectionAudit:
    """What the hub tells the audit trail of its connections, and the tunnels' watchers."""

    def __init__(self, service: TunnelService) -> None:
        self.service = service
        self.owners: dict[str, tuple[str, str]] = {}   # tunnel id -> (project id, device id) of AWS tunnels
        self._make_watcher = self._new_watcher          # one bound method, shared by every tunnel's TunnelAudit

    @staticmethod
    def actor_of(tunnel: Tunnel, side: Side) -> str:
        """The audit trail's actor for a connection of `side`: for the source, the API token
        that issued its source token (relay.audit.source_actor)."""
        return source_actor(tunnel.source_token_issuer) if side is Side.SOURCE else side.value

    def tunnel_audit(self, tunnel: Tunnel) -> TunnelAudit | None:
        """What watches a Huawei tunnel's logins, forwards and (if on) recording; None without an audit log."""
        audit = self.service.audit
        if audit is None:
            return None
        record = tunnel.record_session or audit.should_record(tunnel.project_id)
        return TunnelAudit(tunnel.project_id, tunnel.tunnel_id, tunnel.device_id, record, self._make_watcher)

    def tunnel_here(self, tunnel: Tunnel, pairing: Pairing | AwsPairing) -> None:
        """A tunnel has its first end here: whose it is, unless its watcher knows."""
        if not isinstance(pairing, Pairing) or pairing.watcher is None:
            self.owners[tunnel.tunnel_id] = (tunnel.project_id, tunnel.device_id)

    def tunnel_gone(self, tunnel_id: str) -> None:
        self.owners.pop(tunnel_id, None)

    def _new_watcher(self, scope: TunnelAudit) -> SessionWatcher:
        """The watcher of a tunnel, made when its first noted message comes."""
        service, audit = self.service, self.service.audit
        assert audit is not None
        project_id, tunnel_id, device_id = scope.project_id, scope.tunnel_id, scope.device_id

        def emit(event: EventType, actor: str, outcome: str, detail: dict[str, Any]) -> None:
            actor = scope.source_actor if actor == ACTOR_SOURCE else actor
            service.record(project_id, event, actor=actor, tunnel_id=tunnel_id, device_id=device_id,
                           outcome=outcome, detail=detail)

        def save(recording: Recording) -> None:
            audit.save_recording(recording, scope.source_actor)

        tap = audit.tap(project_id, tunnel_id, device_id, requested=scope.record)
        return SessionWatcher(project_id, tunnel_id, device_id, clock=service.clock, emit=emit, save=save, tap=tap)

    def source_acts(self, conn: AuditedConnection) -> None:
        """Logins and forwards of a Huawei tunnel are this new source connection's from now on."""
        scope = conn.pairing.watcher if isinstance(conn.pairing, Pairing) else None
        if conn.side is Side.SOURCE and isinstance(scope, TunnelAudit):
            scope.source_actor = conn.actor

    def connection(self, conn: AuditedConnection, what: str) -> None:
        """`{side}_connected`, `_disconnected` or `_evicted` for a connection of this relay."""
        scope = conn.pairing.watcher if isinstance(conn.pairing, Pairing) else None   # knows its owner
        owner = (scope.project_id, scope.device_id) if isinstance(scope, TunnelAudit) \
            else self.owners.get(conn.pairing.tunnel_id)
        if owner is None or self.service.audit is None:
            return
        self.service.record(owner[0], EventType(f"{conn.side.value}_{what}"), actor=conn.actor,
                            tunnel_id=conn.pairing.tunnel_id, device_id=owner[1],
                            detail={"address": conn.address} if conn.address else None)
