"""The control plane's rules: create, list, show, close, delete, rotate, expire.

Sans-I/O with respect to the network: it takes validated arguments and returns records; the
web layer parses requests, the store keeps the records, and listeners (the data plane, the
MQTT notifier) hear about changes that concern open sockets or devices.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from relay import errors
from relay.audit import ACTOR_RELAY, EventType, token_actor
from relay.clock import Clock
from relay.config import Settings
from relay.model import Claim, CloseReason, ListQuery, Page, Side, Status, Tunnel, TunnelProtocol
from relay.presence import Presence
from relay.store.base import TunnelStore
from relay.tokens import hash_token, new_token, token_matches

if TYPE_CHECKING:
    from relay.auditlog import AuditLog

log = logging.getLogger(__name__)



class TunnelListener(Protocol):
    """Told about changes after they are stored. Methods must not block."""

    def tunnel_created(self, tunnel: Tunnel, device_token: str) -> None: ...
    def tunnel_closed(self, tunnel: Tunnel, reason: CloseReason) -> None: ...
    def tokens_rotated(self, tunnel: Tunnel, sides: frozenset[Side], device_token: str | None) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedTunnel:
    tunnel: Tunnel
    source_token: str
    device_token: str
    expires_in: int


@dataclasses.dataclass(frozen=True, slots=True)
class RotatedTokens:
    tunnel: Tunnel
    source_token: str | None
    device_token: str | None
    expires_in: int


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    tunnel_id: str
    error: errors.ApiError | None


class TunnelService:
    def __init__(self, store: TunnelStore, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.listeners: list[TunnelListener] = []
        # The device side (set by the app when the relay has an MQTT broker, docs/device.md):
        self.presence: Presence | None = None   # asked before a create; None: no presence check
        self.notify_devices = False             # queue a notify (in the store's outbox) on create and rotation
        self.audit: AuditLog | None = None      # the audit trail (docs/audit.md); None: not kept

    def record(self, project_id: str, event: EventType, *, actor: str, tunnel: Tunnel | None = None,
               tunnel_id: str | None = None, device_id: str | None = None, outcome: str = "ok",
               detail: dict[str, Any] | None = None) -> None:
        """Add an event to the audit trail; never blocks (the audit log writes in the background)."""
        if self.audit is None:
            return
        if tunnel is not None:
            tunnel_id, device_id = tunnel.tunnel_id, tunnel.device_id
        self.audit.record(project_id, event, actor=actor, tunnel_id=tunnel_id, device_id=device_id,
                          outcome=outcome, detail=detail)

    # -- queries -------------------------------------------------------------------------

    async def get(self, project_id: str, tunnel_id: str) -> Tunnel:
        tunnel = await self.store.get(tunnel_id)
        if tunnel is None or tunnel.project_id != project_id:
            # Another project's tunnel is reported as missing, not forbidden: ids are not leaked.
            raise errors.TunnelNotFound(f"tunnel {tunnel_id!r} does not exist in project {project_id!r}")
        return await self._settle(tunnel)

    async def list(self, project_id: str, query: ListQuery) -> Page:
        await self.expire_due()
        return await self.store.list(project_id, query)

    async def authenticate_socket(self, tunnel_id: str, side: Side, token: str) -> Tunnel:
        """The tunnel that `token` opens on `side`; raises if it does not."""
        tunnel = await self.store.get(tunnel_id)
        if tunnel is None:
            raise errors.TunnelNotFound(f"tunnel {tunnel_id!r} does not exist")
        tunnel = await self._settle(tunnel)
        if not token_matches(token, tunnel.token_hash(side)):
            raise errors.Unauthenticated(f"the access token is not valid for the {side.value} side of this tunnel")
        if tunnel.status is not Status.OPEN:
            why = tunnel.close_reason.value if tunnel.close_reason else "closed"
            raise errors.TunnelGone(f"tunnel {tunnel_id!r} is {why}")
        return tunnel

    async def authenticate_aws_socket(self, token: str, side: Side, client_token: str | None) -> Tunnel:
        """The open AWS-protocol tunnel that `token` opens on `side`, once this connection has
        claimed the token; raises otherwise. AWS's URL names no tunnel: the token's hash finds
        it. An access token opens one connection, or, when its first connection sent a client
        token, the connections that send the same client token (docs/aws.md); the claim is a
        store step, atomic across replicas."""
        token_hash = hash_token(token)
        tunnel = await self.store.find_by_token_hash(token_hash)
        if tunnel is None:
            raise errors.Unauthenticated("the access token is unknown (or was rotated)")
        if tunnel.protocol is not TunnelProtocol.AWS:
            raise errors.WrongProtocol(
                "this is a token of a Huawei-protocol tunnel: connect to /v5/iot/tunnels/{tunnel_id}/source-connect"
                " or device-connect (docs/protocol.md)")
        # Settle an expiry that is due (and tell the listeners) before answering.
        tunnel = await self.get(tunnel.project_id, tunnel.tunnel_id)
        if not token_matches(token, tunnel.token_hash(side)):
            mode = "destination" if side is Side.SOURCE else "source"
            raise errors.Unauthenticated(f"this access token is for local-proxy-mode={mode}")
        if tunnel.status is not Status.OPEN:
            why = tunnel.close_reason.value if tunnel.close_reason else "closed"
            raise errors.TunnelGone(f"the tunnel is {why}")
        claim = await self.store.claim_access(tunnel.tunnel_id, side, token_hash,
                                              hash_token(client_token) if client_token else "")
        if claim is Claim.USED:
            raise errors.TokenUsed(
                "the access token was used already; an access token opens one connection, or, when its first"
                " connection sent a client-token header, the connections that send the same client token")
        if claim is Claim.ROTATED:
            raise errors.Unauthenticated("the access token was rotated")
        if claim is Claim.GONE:
            raise errors.TunnelGone("the tunnel is closed")
        return tunnel

    # -- changes -------------------------------------------------------------------------

    async def create(self, project_id: str, device_id: str, *, actor: str = ACTOR_RELAY, **fields: Any) -> CreatedTunnel:
        try:
            created = await self._create(project_id, device_id, source_token_issuer=token_actor(actor), **fields)
        except errors.ApiError as exc:
            self.record(project_id, EventType.TUNNEL_CREATED, actor=actor, device_id=device_id, outcome=exc.code)
            raise
        self.record(project_id, EventType.TUNNEL_CREATED, actor=actor, tunnel=created.tunnel,
                    detail={"expires_in": created.expires_in})
        return created

    async def _create(
        self,
        project_id: str,
        device_id: str,
        *,
        description: str | None = None,
        custom_info: str | None = None,
        expires_in: int | None = None,
        protocol: TunnelProtocol = TunnelProtocol.HUAWEI,
        services: tuple[str, ...] = (),
        record_session: bool = False,
        source_token_issuer: str | None = None,
    ) -> CreatedTunnel:
        if self.presence is not None:
            self.presence.require_online(device_id)
        lifetime = self.settings.default_lifetime if expires_in is None else expires_in
        now = self.clock.now()
        source_token, device_token = new_token(), new_token()
        tunnel = Tunnel(
            tunnel_id=str(uuid.uuid4()),
            project_id=project_id,
            device_id=device_id,
            create_time=now,
            expires_at=now + lifetime,
            source_token_hash=hash_token(source_token),
            device_token_hash=hash_token(device_token),
            description=description,
            custom_info=custom_info,
            protocol=protocol,
            services=services,
            record_session=record_session,
            source_token_issuer=source_token_issuer,
        )
        # A tunnel of this device that expired but was not swept yet must not block the new one.
        await self.expire_due()
        await self.store.insert(tunnel, self.settings.max_tunnels_per_project,
                                device_token if self.notify_devices else None)
        log.info("tunnel created", extra={"tunnel_id": tunnel.tunnel_id, "device_id": device_id})
        for listener in self.listeners:
            listener.tunnel_created(tunnel, device_token)
        return CreatedTunnel(tunnel, source_token, device_token, lifetime)

    async def close(self, project_id: str, tunnel_id: str, *, actor: str = ACTOR_RELAY,
                    audit_refusal: bool = True) -> Tunnel:
        try:
            tunnel = await self.get(project_id, tunnel_id)
        except errors.ApiError as exc:
            if audit_refusal:
                self.record(project_id, EventType.TUNNEL_CLOSED, actor=actor, tunnel_id=tunnel_id, outcome=exc.code)
            raise
        if tunnel.status is Status.CLOSED:
            return tunnel  # closing is idempotent, like Huawei's
        closed = await self._close(tunnel_id, CloseReason.CLOSED, actor=actor)
        return closed or await self.get(project_id, tunnel_id)

    async def delete(self, project_id: str, tunnel_id: str, *, actor: str = ACTOR_RELAY,
                     audit_refusal: bool = True) -> None:
        tunnel: Tunnel | None = None
        try:
            tunnel = await self.get(project_id, tunnel_id)
            if tunnel.status is not Status.CLOSED:
                raise errors.TunnelNotClosed(f"tunnel {tunnel_id!r} is open; close it before deleting it")
            if not await self.store.delete(tunnel_id):
                raise errors.TunnelNotFound(f"tunnel {tunnel_id!r} does not exist in project {project_id!r}")
        except errors.ApiError as exc:
            if audit_refusal:
                self.record(project_id, EventType.TUNNEL_DELETED, actor=actor, tunnel=tunnel, tunnel_id=tunnel_id,
                            outcome=exc.code)
            raise
        log.info("tunnel deleted", extra={"tunnel_id": tunnel_id})
        self.record(project_id, EventType.TUNNEL_DELETED, actor=actor, tunnel=tunnel)

    async def rotate(self, project_id: str, tunnel_id: str, sides: frozenset[Side], *,
                     actor: str = ACTOR_RELAY) -> RotatedTokens:
        detail = {"sides": sorted(s.value for s in sides)}
        try:
            rotated = await self._rotate(project_id, tunnel_id, sides, token_actor(actor))
        except errors.ApiError as exc:
            self.record(project_id, EventType.TOKENS_ROTATED, actor=actor, tunnel_id=tunnel_id, outcome=exc.code,
                        detail=detail)
            raise
        self.record(project_id, EventType.TOKENS_ROTATED, actor=actor, tunnel=rotated.tunnel, detail=detail)
        return rotated

    async def _rotate(self, project_id: str, tunnel_id: str, sides: frozenset[Side],
                      issuer: str | None = None) -> RotatedTokens:
        tunnel = await self.get(project_id, tunnel_id)
        if tunnel.status is not Status.OPEN:
            raise errors.TunnelClosed(f"tunnel {tunnel_id!r} is closed; its tokens cannot be rotated")
        source_token = new_token() if Side.SOURCE in sides else None
        device_token = new_token() if Side.DEVICE in sides else None
        updated = await self.store.replace_token_hashes(
            tunnel_id,
            hash_token(source_token) if source_token else None,
            hash_token(device_token) if device_token else None,
            issuer,
        )
        if updated is None:
            raise errors.TunnelClosed(f"tunnel {tunnel_id!r} was closed meanwhile; its tokens cannot be rotated")
        if device_token and self.notify_devices:
            # The device learns its new token the way it learnt the first one.
            updated = await self.store.queue_notify(tunnel_id, device_token) or updated
        log.info("tunnel tokens rotated", extra={"tunnel_id": tunnel_id, "sides": sorted(s.value for s in sides)})
        for listener in self.listeners:
            listener.tokens_rotated(updated, sides, device_token)
        return RotatedTokens(updated, source_token, device_token, updated.remaining_lifetime(self.clock.now()))

    async def batch(self, project_id: str, tunnel_ids: builtins.list[str], action: str, *,
                    actor: str = ACTOR_RELAY) -> builtins.list[BatchResult]:
        operation = self.close if action == "close" else self.delete
        results = []
        for tunnel_id in tunnel_ids:
            try:
                # A refused id is in the batch event's results: one event per batch, not one per id
                # (100 ids of nothing made 101 events).
                await operation(project_id, tunnel_id, actor=actor, audit_refusal=False)
                results.append(BatchResult(tunnel_id, None))
            except errors.ApiError as exc:
                results.append(BatchResult(tunnel_id, exc))
        failed = sum(1 for r in results if r.error is not None)
        self.record(project_id, EventType.BATCH_CLOSE if action == "close" else EventType.BATCH_DELETE,
                    actor=actor, outcome="ok" if not failed else f"{failed} failed",
                    detail={"results": {r.tunnel_id: r.error.code if r.error else "ok" for r in results}})
        return results

    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool) -> None:
        await self.store.set_connect_state(tunnel_id, side, connected, self.clock.now())

    # -- time ----------------------------------------------------------------------------

    async def expire_due(self) -> int:
        """Close every open tunnel whose lifetime has passed; returns how many."""
        expired = 0
        for tunnel_id in await self.store.due_for_expiry(self.clock.now()):
            if await self._close(tunnel_id, CloseReason.EXPIRED):
                expired += 1
        return expired

    async def purge_old(self) -> int:
        purged = await self.store.purge_closed(self.clock.now() - self.settings.closed_retention)
        if purged:
            log.info("closed tunnels purged", extra={"count": purged})
        return purged

    async def run_sweeper(self) -> None:
        """Expiry and retention, forever; started by the app, cancelled on shutdown."""
        failing = False
        while True:
            try:
                await self.expire_due()
                await self.purge_old()
            except Exception as exc:  # the store may be briefly unavailable; try again next round
                # one line when it starts failing and one when it works again, not a traceback
                # every sweep_interval (a Redis outage would fill the log)
                if not failing:
                    log.warning("expiry sweep failed (retrying every %g s): %s: %s",
                                self.settings.sweep_interval, type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("expiry sweep works again")
                failing = False
            await asyncio.sleep(self.settings.sweep_interval)

    async def _settle(self, tunnel: Tunnel) -> Tunnel:
        """Bring an open tunnel whose lifetime has passed to CLOSED before anyone sees it."""
        if tunnel.status is Status.OPEN and tunnel.expires_at <= self.clock.now():
            return await self._close(tunnel.tunnel_id, CloseReason.EXPIRED) or tunnel
        return tunnel

    async def _close(self, tunnel_id: str, reason: CloseReason, *, actor: str = ACTOR_RELAY) -> Tunnel | None:
        when = self.clock.now()
        if reason is CloseReason.EXPIRED:
            current = await self.store.get(tunnel_id)
            if current is not None:
                when = min(when, current.expires_at)
        tunnel = await self.store.close(tunnel_id, when, reason)
        if tunnel is None:
            return None
        log.info("tunnel closed", extra={"tunnel_id": tunnel_id, "reason": reason.value})
        self.record(tunnel.project_id, EventType.TUNNEL_EXPIRED if reason is CloseReason.EXPIRED else EventType.TUNNEL_CLOSED,
                    actor=actor, tunnel=tunnel)
        for listener in self.listeners:
            listener.tunnel_closed(tunnel, reason)
        return tunnel
