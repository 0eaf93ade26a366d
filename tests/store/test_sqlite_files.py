"""The SQLite store's files (issue 15, finding 6): readable by their owner only, and no copy
of a device token left in them once its tunnel is closed. (A delivered notify's token stays in
the outbox while its tunnel is open, to be published again when the device comes online:
issue 14, docs/device.md.)"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest

from relay.model import CloseReason, Tunnel
from relay.store.sqlite import SqliteStore


@pytest.fixture(autouse=True)
def usual_umask():
    """The umask of most services (022): files are world-readable unless made otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def tunnel(device: str) -> Tunnel:
    return Tunnel(tunnel_id=str(uuid.uuid4()), project_id="p1", device_id=device, create_time=1000.0,
                  expires_at=2000.0, source_token_hash="s" * 64, device_token_hash="d" * 64)


def files_of(db: Path) -> list[Path]:
    return sorted(p for p in db.parent.iterdir() if p.name.startswith(db.name))


def everything_in(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in files_of(db))


async def test_the_database_and_its_wal_are_readable_by_their_owner_only(tmp_path):
    db = tmp_path / "relay.db"
    store = SqliteStore(str(db))
    try:
        await store.insert(tunnel("d1"), 10, secrets.token_urlsafe(32))   # writes the WAL
        names = {p.name for p in files_of(db)}
        assert {"relay.db", "relay.db-wal", "relay.db-shm"} <= names
        for path in files_of(db):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        await store.aclose()


async def test_an_existing_world_readable_database_is_made_private(tmp_path):
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    store = SqliteStore(str(db))
    await store.aclose()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


async def test_the_device_token_of_a_closed_tunnel_leaves_no_copy_in_the_files(tmp_path):
    db = tmp_path / "relay.db"
    store = SqliteStore(str(db))
    try:
        delivered, dropped = tunnel("d1"), tunnel("d2")
        token_1, token_2 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        await store.insert(delivered, 10, token_1)
        await store.insert(dropped, 10, token_2)
        # while they wait for the broker, the tokens are in the files (so the search below can see them)
        assert token_1.encode() in everything_in(db) and token_2.encode() in everything_in(db)
        assert await store.notify_delivered(delivered.tunnel_id, token_1)
        await store.close(dropped.tunnel_id, 1500.0, CloseReason.CLOSED)   # never delivered: dropped
        assert await store.pending_notifies(10) == []
        await store.close(delivered.tunnel_id, 1500.0, CloseReason.CLOSED)   # delivered, then closed
        # within about a second (SCRUB_DELAY), while the store stays open
        deadline = asyncio.get_running_loop().time() + 20
        while token_1.encode() in everything_in(db) or token_2.encode() in everything_in(db):
            assert asyncio.get_running_loop().time() < deadline, "a device token stayed in the store's files"
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()
