"""Where tunnels are kept: an interface and its implementations (SQLite for one relay,
Redis for several replicas)."""

from relay.store.base import TunnelStore
from relay.store.sqlite import SqliteStore

__all__ = ["TunnelStore", "SqliteStore", "open_store"]


def open_store(url: str, sqlite_cache_kib: int = 2048) -> TunnelStore:
    """A store from a location: `redis://` / `rediss://` / `unix://` for Redis, otherwise a
    SQLite file path (or `sqlite://PATH`, `:memory:`)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from relay.store.redis import RedisStore  # redis-py is needed only by replicated deployments
        return RedisStore(url)
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
    return SqliteStore(url, cache_kib=sqlite_cache_kib)
