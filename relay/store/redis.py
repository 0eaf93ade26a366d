"""The shared store for several replicas: Redis (redis-py's asyncio client).

Layout (every key under one prefix, default `relay:`):

    t:{tunnel_id}            hash: the tunnel's fields
    seq                      counter: insertion order, for paging markers
    p:{project_id}           sorted set: the project's tunnels (not deleted), by seq
    dev:{project}:{device}   the id of the device's OPEN tunnel
    expiry                   sorted set: OPEN tunnels by expires_at
    closed                   sorted set: CLOSED tunnels by closed_time
    outbox                   hash: tunnel_id -> device token of each notified OPEN tunnel, kept
                             until it closes (a device that comes online is notified again)
    outbox:order             sorted set: the entries waiting to be published, oldest first
    tok:{token_hash}         the id of the tunnel one of whose current tokens has this hash (AWS
                             clients present a token and no tunnel id; docs/aws.md)

Rules that span keys (one open tunnel per device, the quota, close, delete, the outbox) run
as Lua scripts, which Redis executes atomically, so replicas sharing the store cannot race.
"""

from __future__ import annotations

import builtins
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from relay import errors
from relay.audit import AuditEvent, AuditPage, AuditQuery
from relay.model import (Claim, CloseReason, ListQuery, NotifyStatus, Page, PendingNotify, Side, Status, Tunnel,
                         TunnelProtocol)
from relay.recording import Recording, RecordingPage, RecordingQuery
from relay.store.audit_redis import RedisAudit
from relay.store.base import TunnelStore

_INSERT = """
local tkey, pkey, dkey, seqkey, expkey, outbox, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local max, id, expires_at, token = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', dkey) == 1 then return -1 end
if redis.call('ZCARD', pkey) >= max then return -2 - redis.call('ZCARD', pkey) end
local seq = redis.call('INCR', seqkey)
for i = 5, #ARGV, 2 do redis.call('HSET', tkey, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', tkey, 'seq', seq)
redis.call('ZADD', pkey, seq, id)
redis.call('SET', dkey, id)
redis.call('ZADD', expkey, expires_at, id)
redis.call('SET', KEYS[8], id)
redis.call('SET', KEYS[9], id)
if token ~= '' then
  redis.call('HSET', tkey, 'notify_status', 'PENDING')
  redis.call('HSET', outbox, id, token)
  redis.call('ZADD', order, seq, id)
end
return seq
"""

_CLOSE = """
local tkey, expkey, closedkey, outbox, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, when, reason, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', tkey, 'status') ~= 'OPEN' then return 0 end
redis.call('HSET', tkey, 'status', 'CLOSED', 'closed_time', when, 'close_reason', reason)
for _, side in ipairs({'source', 'device'}) do
  if redis.call('HGET', tkey, side .. '_connected') == '1' then
    redis.call('HSET', tkey, side .. '_connected', '0', side .. '_state_time', when)
  end
end
redis.call('ZREM', expkey, id)
redis.call('ZADD', closedkey, when, id)
local dkey = prefix .. 'dev:' .. redis.call('HGET', tkey, 'project_id') .. ':' .. redis.call('HGET', tkey, 'device_id')
if redis.call('GET', dkey) == id then redis.call('DEL', dkey) end
if redis.call('HDEL', outbox, id) == 1 then redis.call('HDEL', tkey, 'notify_status') end
redis.call('ZREM', order, id)
return 1
"""

_DELETE = """
local tkey, closedkey, prefix, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
if redis.call('HGET', tkey, 'status') ~= 'CLOSED' then return 0 end
for _, field in ipairs({'source_token_hash', 'device_token_hash'}) do
  local tok = prefix .. 'tok:' .. (redis.call('HGET', tkey, field) or '')
  if redis.call('GET', tok) == id then redis.call('DEL', tok) end
end
redis.call('ZREM', prefix .. 'p:' .. redis.call('HGET', tkey, 'project_id'), id)
redis.call('ZREM', closedkey, id)
redis.call('DEL', tkey)
return 1
"""

_REPLACE_HASHES = """
local tkey, source, device, prefix, id, issuer = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', tkey, 'status') ~= 'OPEN' then return 0 end
if source ~= '' then
  if issuer ~= '' then redis.call('HSET', tkey, 'source_token_issuer', issuer)
  else redis.call('HDEL', tkey, 'source_token_issuer') end
end
for side, hash in pairs({source = source, device = device}) do
  if hash ~= '' then
    local old = prefix .. 'tok:' .. (redis.call('HGET', tkey, side .. '_token_hash') or '')
    if redis.call('GET', old) == id then redis.call('DEL', old) end
    redis.call('HSET', tkey, side .. '_token_hash', hash)
    redis.call('HDEL', tkey, side .. '_client_hash')
    redis.call('SET', prefix .. 'tok:' .. hash, id)
  end
end
return 1
"""

# 1: OK, 0: USED, -1: GONE, -2: ROTATED (relay.model.Claim)
_CLAIM_ACCESS = """
local tkey, side, hash, client = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', tkey, 'status') ~= 'OPEN' then return -1 end
if redis.call('HGET', tkey, side .. '_token_hash') ~= hash then return -2 end
local bound = redis.call('HGET', tkey, side .. '_client_hash')
if not bound then
  redis.call('HSET', tkey, side .. '_client_hash', client)
  return 1
end
if client ~= '' and bound == client then return 1 end
return 0
"""
_CLAIMS = {1: Claim.OK, 0: Claim.USED, -1: Claim.GONE, -2: Claim.ROTATED}

_SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. '_connected', ARGV[2], ARGV[1] .. '_state_time', ARGV[3])
return 1
"""

_QUEUE_NOTIFY = """
local tkey, outbox, order, seqkey, id, token = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]
if redis.call('HGET', tkey, 'status') ~= 'OPEN' then return 0 end
redis.call('HSET', tkey, 'notify_status', 'PENDING')
redis.call('HSET', outbox, id, token)
redis.call('ZADD', order, redis.call('INCR', seqkey), id)
return 1
"""

_NOTIFY_DELIVERED = """
local tkey, outbox, order, id, token = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
if redis.call('HGET', outbox, id) ~= token then return 0 end
redis.call('ZREM', order, id)
if redis.call('EXISTS', tkey) == 1 then redis.call('HSET', tkey, 'notify_status', 'DELIVERED') end
return 1
"""


# The device came online: its OPEN tunnels whose notify was delivered and whose device end is
# not connected are queued again. The outbox holds only open tunnels, so it is small.
_RENOTIFY = """
local outbox, order, seqkey, device, prefix = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local again = {}
for _, id in ipairs(redis.call('HKEYS', outbox)) do
  local tkey = prefix .. 't:' .. id
  if not redis.call('ZSCORE', order, id) and redis.call('HGET', tkey, 'device_id') == device
      and redis.call('HGET', tkey, 'status') == 'OPEN' and redis.call('HGET', tkey, 'device_connected') ~= '1' then
    redis.call('HSET', tkey, 'notify_status', 'PENDING')
    redis.call('ZADD', order, redis.call('INCR', seqkey), id)
    again[#again + 1] = id
  end
end
return again
"""


def _fields(tunnel: Tunnel) -> list[str]:
    values: dict[str, Any] = {
        "tunnel_id": tunnel.tunnel_id, "project_id": tunnel.project_id, "device_id": tunnel.device_id,
        "status": tunnel.status.value, "create_time": repr(tunnel.create_time),
        "expires_at": repr(tunnel.expires_at), "source_token_hash": tunnel.source_token_hash,
        "device_token_hash": tunnel.device_token_hash, "source_connected": "0", "device_connected": "0",
        "protocol": tunnel.protocol.value,
    }
    if tunnel.services:
        values["services"] = ",".join(tunnel.services)
    if tunnel.record_session:
        values["record_session"] = "1"
    if tunnel.source_token_issuer is not None:
        values["source_token_issuer"] = tunnel.source_token_issuer
    if tunnel.description is not None:
        values["description"] = tunnel.description
    if tunnel.custom_info is not None:
        values["custom_info"] = tunnel.custom_info
    return [item for pair in values.items() for item in pair]


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _tunnel(h: dict[str, str]) -> Tunnel:
    return Tunnel(
        tunnel_id=h["tunnel_id"], project_id=h["project_id"], device_id=h["device_id"],
        create_time=float(h["create_time"]), expires_at=float(h["expires_at"]),
        source_token_hash=h["source_token_hash"], device_token_hash=h["device_token_hash"],
        status=Status(h["status"]), closed_time=_float(h.get("closed_time")),
        close_reason=CloseReason(h["close_reason"]) if h.get("close_reason") else None,
        description=h.get("description"), custom_info=h.get("custom_info"),
        source_connected=h.get("source_connected") == "1", source_state_time=_float(h.get("source_state_time")),
        device_connected=h.get("device_connected") == "1", device_state_time=_float(h.get("device_state_time")),
        notify_status=NotifyStatus(h["notify_status"]) if h.get("notify_status") else None,
        protocol=TunnelProtocol(h.get("protocol") or TunnelProtocol.HUAWEI.value),
        services=tuple(h["services"].split(",")) if h.get("services") else (),
        source_client_hash=h.get("source_client_hash"), device_client_hash=h.get("device_client_hash"),
        record_session=h.get("record_session") == "1", source_token_issuer=h.get("source_token_issuer"),
        seq=int(h.get("seq", 0)),
    )


class RedisStore(TunnelStore):
    def __init__(self, url: str, prefix: str = "relay:") -> None:
        # After a Redis restart every pooled connection is stale: a command that meets one
        # reconnects and tries again (twice, quickly) instead of failing. Timeouts are not
        # retried: a Redis that does not answer is reported at once (503).
        self.redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5, health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(RedisConnectionError,)))
        self.prefix = prefix
        self._insert = self.redis.register_script(_INSERT)
        self._close = self.redis.register_script(_CLOSE)
        self._delete = self.redis.register_script(_DELETE)
        self._replace = self.redis.register_script(_REPLACE_HASHES)
        self._set_state = self.redis.register_script(_SET_STATE)
        self._claim_access = self.redis.register_script(_CLAIM_ACCESS)
        self._queue_notify = self.redis.register_script(_QUEUE_NOTIFY)
        self._delivered = self.redis.register_script(_NOTIFY_DELIVERED)
        self._renotify = self.redis.register_script(_RENOTIFY)
        self._audit = RedisAudit(self.redis, prefix, self._call)   # relay/store/audit_redis.py

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, coro):
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise errors.StoreUnavailable(f"the tunnel store (Redis) cannot be reached: {exc.__class__.__name__}") from exc

    async def insert(self, tunnel: Tunnel, max_per_project: int, notify_token: str | None = None) -> None:
        keys = [self._k("t", tunnel.tunnel_id), self._k("p", tunnel.project_id),
                self._k("dev", tunnel.project_id, tunnel.device_id), self._k("seq"), self._k("expiry"),
                self._k("outbox"), self._k("outbox:order"),
                self._k("tok", tunnel.source_token_hash), self._k("tok", tunnel.device_token_hash)]
        args: list[str | int] = [max_per_project, tunnel.tunnel_id, repr(tunnel.expires_at), notify_token or "", *_fields(tunnel)]
        result = int(await self._call(self._insert(keys=keys, args=args)))
        if result == -1:
            raise errors.DeviceBusy(f"device {tunnel.device_id!r} already has an open tunnel")
        if result < -1:
            raise errors.QuotaExceeded(
                f"project {tunnel.project_id!r} already holds {-2 - result} tunnels, the most allowed is"
                f" {max_per_project}; delete closed tunnels to make room")
        tunnel.seq = result
        if notify_token:
            tunnel.notify_status = NotifyStatus.PENDING

    async def get(self, tunnel_id: str) -> Tunnel | None:
        h = await self._call(self.redis.hgetall(self._k("t", tunnel_id)))
        return _tunnel(h) if h else None

    async def list(self, project_id: str, query: ListQuery) -> Page:
        if query.tunnel_id is not None:
            ids = [query.tunnel_id] if await self._call(self.redis.zscore(self._k("p", project_id), query.tunnel_id)) is not None else []
        else:
            ids = await self._call(self.redis.zrange(self._k("p", project_id), 0, -1))
        pipe = self.redis.pipeline(transaction=False)
        for tunnel_id in ids:
            pipe.hgetall(self._k("t", tunnel_id))
        rows = await self._call(pipe.execute()) if ids else []
        tunnels = [_tunnel(h) for h in rows if h]
        tunnels = [t for t in tunnels
                   if (query.device_id is None or t.device_id == query.device_id)
                   and (query.status is None or t.status is query.status)]
        tunnels.sort(key=lambda t: t.seq)
        count = len(tunnels)
        if query.marker is not None:
            tunnels = [t for t in tunnels if t.seq > query.marker]
        page = tunnels[query.offset: query.offset + query.limit]
        return Page(tunnels=page, count=count, marker=page[-1].seq if page else None)

    async def close(self, tunnel_id: str, when: float, reason: CloseReason) -> Tunnel | None:
        keys = [self._k("t", tunnel_id), self._k("expiry"), self._k("closed"), self._k("outbox"), self._k("outbox:order")]
        done = await self._call(self._close(keys=keys, args=[tunnel_id, repr(when), reason.value, self.prefix]))
        return await self.get(tunnel_id) if int(done) else None

    async def delete(self, tunnel_id: str) -> bool:
        done = await self._call(self._delete(keys=[self._k("t", tunnel_id), self._k("closed")], args=[self.prefix, tunnel_id]))
        return bool(int(done))

    async def replace_token_hashes(self, tunnel_id: str, source_hash: str | None, device_hash: str | None,
                                   source_issuer: str | None = None) -> Tunnel | None:
        done = await self._call(self._replace(keys=[self._k("t", tunnel_id)],
                                              args=[source_hash or "", device_hash or "", self.prefix, tunnel_id,
                                                    source_issuer or ""]))
        return await self.get(tunnel_id) if int(done) else None

    async def find_by_token_hash(self, token_hash: str) -> Tunnel | None:
        tunnel_id = await self._call(self.redis.get(self._k("tok", token_hash)))
        tunnel = await self.get(tunnel_id) if tunnel_id else None
        if tunnel is None or token_hash not in (tunnel.source_token_hash, tunnel.device_token_hash):
            return None
        return tunnel

    async def claim_access(self, tunnel_id: str, side: Side, token_hash: str, client_hash: str) -> Claim:
        result = await self._call(self._claim_access(keys=[self._k("t", tunnel_id)],
                                                     args=[side.value, token_hash, client_hash]))
        return _CLAIMS[int(result)]

    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool, when: float) -> None:
        await self._call(self._set_state(keys=[self._k("t", tunnel_id)], args=[side.value, "1" if connected else "0", repr(when)]))

    async def due_for_expiry(self, now: float) -> builtins.list[str]:
        return list(await self._call(self.redis.zrangebyscore(self._k("expiry"), "-inf", now)))

    async def count_by_status(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self._k("expiry"))
        pipe.zcard(self._k("closed"))
        open_, closed = await self._call(pipe.execute())
        return {"OPEN": int(open_), "CLOSED": int(closed)}

    async def purge_closed(self, closed_before: float) -> int:
        ids = await self._call(self.redis.zrangebyscore(self._k("closed"), "-inf", f"({closed_before!r}"))
        purged = 0
        for tunnel_id in ids:
            purged += await self.delete(tunnel_id)
        return purged

    async def queue_notify(self, tunnel_id: str, device_token: str) -> Tunnel | None:
        keys = [self._k("t", tunnel_id), self._k("outbox"), self._k("outbox:order"), self._k("seq")]
        done = await self._call(self._queue_notify(keys=keys, args=[tunnel_id, device_token]))
        return await self.get(tunnel_id) if int(done) else None

    async def pending_notifies(self, limit: int) -> builtins.list[PendingNotify]:
        ids = await self._call(self.redis.zrange(self._k("outbox:order"), 0, limit - 1))
        if not ids:
            return []
        tokens = await self._call(self.redis.hmget(self._k("outbox"), ids))
        return [PendingNotify(i, tok) for i, tok in zip(ids, tokens) if tok is not None]

    async def notify_delivered(self, tunnel_id: str, device_token: str) -> bool:
        keys = [self._k("t", tunnel_id), self._k("outbox"), self._k("outbox:order")]
        return bool(int(await self._call(self._delivered(keys=keys, args=[tunnel_id, device_token]))))

    async def renotify(self, device_id: str) -> builtins.list[str]:
        keys = [self._k("outbox"), self._k("outbox:order"), self._k("seq")]
        return list(await self._call(self._renotify(keys=keys, args=[device_id, self.prefix])))

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- the audit trail and session recordings (relay/store/audit_redis.py) -------------

    async def append_audit(self, events: builtins.list[AuditEvent]) -> None:
        await self._audit.append(events)

    async def query_audit(self, project_id: str, query: AuditQuery) -> AuditPage:
        return await self._audit.query(project_id, query)

    async def purge_audit(self, before: float) -> int:
        return await self._audit.purge(before)

    async def save_recording(self, recording: Recording) -> None:
        await self._audit.save_recording(recording)

    async def get_recording(self, project_id: str, session_id: str) -> Recording | None:
        return await self._audit.get_recording(project_id, session_id)

    async def list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        return await self._audit.list_recordings(project_id, query)

    async def purge_recordings(self, before: float) -> int:
        return await self._audit.purge_recordings(before)
