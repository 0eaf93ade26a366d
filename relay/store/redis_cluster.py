"""Coordination of replicas through Redis: leases with epochs, and hints over pub/sub.

    lease:{tunnel}:{side}   hash {replica, address, epoch}, expires unless renewed
    epoch:{tunnel}:{side}   counter: grows with every new connection of that end
    hints                   pub/sub channel: JSON hints (never tunnel data)

The secret that authenticates bridges is not kept here: whoever reads Redis must not be able
to open one (relay/cluster.py, bridge_credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from relay.cluster import MIN_BRIDGE_SECRET, Cluster, Hint, HintHandler, Lease
from relay.clock import Clock
from relay.errors import ConfigError
from relay.model import Side
from relay.store.redis import RedisStore

log = logging.getLogger(__name__)

_CLAIM = """
local lease, counter, tkey = KEYS[1], KEYS[2], KEYS[3]
local replica, address, ttl, now, side = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local epoch = redis.call('INCR', counter)
redis.call('EXPIRE', counter, 172800)
redis.call('HSET', lease, 'replica', replica, 'address', address, 'epoch', epoch)
redis.call('PEXPIRE', lease, ttl)
if redis.call('EXISTS', tkey) == 1 then
  redis.call('HSET', tkey, side .. '_connected', '1', side .. '_state_time', now)
end
return epoch
"""

_RELEASE = """
local lease, tkey, epoch, now, side = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', lease, 'epoch')
if current and current ~= epoch then return 0 end
redis.call('DEL', lease)
if redis.call('EXISTS', tkey) == 1 then
  redis.call('HSET', tkey, side .. '_connected', '0', side .. '_state_time', now)
end
return 1
"""

# Keep the lease if it is still ours; recreate it if it vanished (a Redis restart) and no
# newer connection took the end meanwhile; otherwise the end was lost to a newer one.
_RENEW = """
local lease, counter = KEYS[1], KEYS[2]
local replica, address, epoch, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local current = redis.call('HGET', lease, 'epoch')
if current == epoch then redis.call('PEXPIRE', lease, ttl) return 1 end
if current then return 0 end
local latest = redis.call('GET', counter)
if latest and tonumber(latest) > tonumber(epoch) then return 0 end
redis.call('SET', counter, epoch, 'EX', 172800)
redis.call('HSET', lease, 'replica', replica, 'address', address, 'epoch', epoch)
redis.call('PEXPIRE', lease, ttl)
return 1
"""


class RedisCluster(Cluster):
    distributed = True

    def __init__(self, store: RedisStore, clock: Clock, replica_id: str, address: str, lease_ttl: float = 15.0,
                 bridge_secret: str = "") -> None:
        if len(bridge_secret) < MIN_BRIDGE_SECRET:
            raise ConfigError(
                "replicas need a shared bridge secret of at least 32 characters, to authenticate the bridges "
                "between them: put one in a file and give it with --bridge-secret-file (or RELAY_BRIDGE_SECRET), "
                "the same on every replica; e.g. `openssl rand -base64 48 > bridge-secret` (docs/scaling.md)")
        super().__init__(store, clock)
        self.bridge_secret = bridge_secret
        self.redis: aioredis.Redis = store.redis
        self.prefix = store.prefix
        self.replica_id = replica_id
        self.address = address
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._listener: asyncio.Task | None = None

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def start(self, handler: HintHandler) -> None:
        self.handler = handler
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._k("bridge-secret"))   # where earlier versions kept it, in clear
        self._listener = asyncio.create_task(self._listen(), name="cluster-hints")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        """Receive hints for as long as the relay runs, reconnecting after Redis outages."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._k("hints"))
                async for message in pubsub.listen():
                    try:
                        hint = Hint(**orjson.loads(message["data"]))
                    except (TypeError, ValueError, orjson.JSONDecodeError):
                        log.warning("ignoring a malformed cluster hint")
                        continue
                    if hint.replica_id != self.replica_id and self.handler is not None:
                        self.handler(hint)
            except (RedisError, OSError):
                log.warning("lost the cluster hint channel; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def claim(self, tunnel_id: str, side: Side) -> int:
        keys = [self._k("lease", tunnel_id, side.value), self._k("epoch", tunnel_id, side.value), self._k("t", tunnel_id)]
        args: list[str | int] = [self.replica_id, self.address, self.lease_ttl_ms, repr(self.clock.now()), side.value]
        return int(await self._claim(keys=keys, args=args))

    async def release(self, tunnel_id: str, side: Side, epoch: int) -> bool:
        keys = [self._k("lease", tunnel_id, side.value), self._k("t", tunnel_id)]
        try:
            return bool(int(await self._release(keys=keys, args=[str(epoch), repr(self.clock.now()), side.value])))
        except (RedisError, OSError):
            return False  # the lease expires by itself

    async def owner(self, tunnel_id: str, side: Side) -> Lease | None:
        h = cast(dict[str, str], await self.redis.hgetall(self._k("lease", tunnel_id, side.value)))  # decode_responses
        if not h:
            return None
        return Lease(h["replica"], h["address"], int(h["epoch"]))

    async def renew(self, ends: list[tuple[str, Side, int]]) -> list[tuple[str, Side, int]]:
        lost = []
        for tunnel_id, side, epoch in ends:
            keys = [self._k("lease", tunnel_id, side.value), self._k("epoch", tunnel_id, side.value)]
            kept = await self._renew(keys=keys, args=[self.replica_id, self.address, str(epoch), self.lease_ttl_ms])
            if not int(kept):
                lost.append((tunnel_id, side, epoch))
        return lost

    async def publish(self, hint: Hint) -> None:
        try:
            await self.redis.publish(self._k("hints"), orjson.dumps(_as_dict(hint)))
        except (RedisError, OSError):
            log.warning("could not publish a cluster hint; reconciliation will catch up")


def _as_dict(hint: Hint) -> dict:
    return {f: getattr(hint, f) for f in hint.__dataclass_fields__}
