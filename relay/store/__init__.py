"""Where tunnels are kept: an interface and its implementations (SQLite; Redis later)."""

from relay.store.base import TunnelStore
from relay.store.sqlite import SqliteStore

__all__ = ["TunnelStore", "SqliteStore", "open_store"]


def open_store(url: str) -> TunnelStore:
    """A store from a location: a SQLite file path (or `sqlite:///path`, `:memory:`)."""
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
    return SqliteStore(url)
