"""The store's promises for AWS-protocol tunnels (docs/aws.md), on SQLite and Redis: the
protocol and services round trip, tunnels are found by token hash (following rotations), and
client tokens are claimed atomically."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3


from relay.model import Claim, CloseReason, ListQuery, Side, Status, TunnelProtocol
from relay.store.sqlite import SqliteStore
from tests.store.test_contract import store, tunnel  # noqa: F401  (the fixture over both stores)

S, D = "s" * 64, "d" * 64
C1, C2 = "1" * 64, "2" * 64


def aws_tunnel(device: str = "d1", **fields):  # type: ignore[no-untyped-def]
    return dataclasses.replace(tunnel(device), protocol=TunnelProtocol.AWS, services=("SSH", "tcp:8080"), **fields)


async def test_protocol_and_services_round_trip(store):  # noqa: F811
    aws, huawei = aws_tunnel("d1"), tunnel("d2")
    await store.insert(aws, 10)
    await store.insert(huawei, 10)
    got = await store.get(aws.tunnel_id)
    assert (got.protocol, got.services) == (TunnelProtocol.AWS, ("SSH", "tcp:8080"))
    assert (got.source_client_hash, got.device_client_hash) == (None, None)
    assert got.info()["protocol"] == "aws" and got.info()["services"] == ["SSH", "tcp:8080"]
    got = await store.get(huawei.tunnel_id)
    assert (got.protocol, got.services) == (TunnelProtocol.HUAWEI, ())
    assert got.info()["protocol"] == "huawei" and got.info()["services"] is None
    listed = (await store.list("p1", ListQuery())).tunnels
    assert {t.tunnel_id: t.protocol for t in listed} == {aws.tunnel_id: TunnelProtocol.AWS,
                                                         huawei.tunnel_id: TunnelProtocol.HUAWEI}


async def test_found_by_either_token_hash_until_deleted(store):  # noqa: F811
    t = aws_tunnel(source_token_hash="a" * 64, device_token_hash="b" * 64)
    await store.insert(t, 10)
    assert (await store.find_by_token_hash("a" * 64)).tunnel_id == t.tunnel_id
    assert (await store.find_by_token_hash("b" * 64)).tunnel_id == t.tunnel_id
    assert await store.find_by_token_hash("c" * 64) is None
    await store.close(t.tunnel_id, 1001.0, CloseReason.CLOSED)
    closed = await store.find_by_token_hash("a" * 64)   # a closed tunnel is still found: its clients get 410
    assert closed.tunnel_id == t.tunnel_id and closed.status is Status.CLOSED
    assert await store.delete(t.tunnel_id)
    assert await store.find_by_token_hash("a" * 64) is None
    assert await store.find_by_token_hash("b" * 64) is None


async def test_rotation_moves_the_lookup_and_frees_the_token(store):  # noqa: F811
    t = aws_tunnel(source_token_hash="a" * 64, device_token_hash="b" * 64)
    await store.insert(t, 10)
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, "a" * 64, C1) is Claim.OK
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, "b" * 64, "") is Claim.OK
    rotated = await store.replace_token_hashes(t.tunnel_id, "e" * 64, None)
    assert rotated.source_client_hash is None             # the new source token is unused
    assert rotated.device_client_hash == ""               # the device side was not rotated
    assert await store.find_by_token_hash("a" * 64) is None
    assert (await store.find_by_token_hash("e" * 64)).tunnel_id == t.tunnel_id
    assert (await store.find_by_token_hash("b" * 64)).tunnel_id == t.tunnel_id
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, "a" * 64, C1) is Claim.ROTATED
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, "e" * 64, "") is Claim.OK
    await store.replace_token_hashes(t.tunnel_id, None, "f" * 64)
    assert await store.find_by_token_hash("b" * 64) is None
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, "f" * 64, C2) is Claim.OK
    await store.close(t.tunnel_id, 1001.0, CloseReason.CLOSED)
    assert await store.delete(t.tunnel_id)
    assert await store.find_by_token_hash("e" * 64) is None and await store.find_by_token_hash("f" * 64) is None


async def test_without_a_client_token_an_access_token_opens_one_connection(store):  # noqa: F811
    t = aws_tunnel()
    await store.insert(t, 10)
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, S, "") is Claim.OK
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, S, "") is Claim.USED
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, S, C1) is Claim.USED   # too late to bind one
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, D, "") is Claim.OK     # the sides are apart
    assert (await store.get(t.tunnel_id)).source_client_hash == ""


async def test_a_client_token_binds_the_access_token(store):  # noqa: F811
    t = aws_tunnel()
    await store.insert(t, 10)
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, D, C1) is Claim.OK
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, D, C1) is Claim.OK     # a reconnection
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, D, C2) is Claim.USED
    assert await store.claim_access(t.tunnel_id, Side.DEVICE, D, "") is Claim.USED
    assert (await store.get(t.tunnel_id)).device_client_hash == C1


async def test_claims_of_closed_unknown_and_other_tokens(store):  # noqa: F811
    t = aws_tunnel()
    await store.insert(t, 10)
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, D, "") is Claim.ROTATED   # not this side's token
    await store.close(t.tunnel_id, 1001.0, CloseReason.EXPIRED)
    assert await store.claim_access(t.tunnel_id, Side.SOURCE, S, "") is Claim.GONE
    assert await store.claim_access(tunnel().tunnel_id, Side.SOURCE, S, "") is Claim.GONE


async def test_concurrent_first_uses_let_exactly_one_in(store):  # noqa: F811
    t = aws_tunnel()
    await store.insert(t, 10)
    claims = await asyncio.gather(*(store.claim_access(t.tunnel_id, Side.SOURCE, S, "") for _ in range(20)))
    assert claims.count(Claim.OK) == 1 and claims.count(Claim.USED) == 19
    claims = await asyncio.gather(*(store.claim_access(t.tunnel_id, Side.DEVICE, D, c)
                                    for c in [C1, C2] * 10))
    assert claims.count(Claim.OK) == 10 and claims.count(Claim.USED) == 10   # whichever came first, ten times


OLD_SCHEMA = """
CREATE TABLE tunnels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tunnel_id TEXT NOT NULL UNIQUE, project_id TEXT NOT NULL,
    device_id TEXT NOT NULL, status TEXT NOT NULL, create_time REAL NOT NULL, expires_at REAL NOT NULL,
    closed_time REAL, close_reason TEXT, description TEXT, custom_info TEXT, source_token_hash TEXT NOT NULL,
    device_token_hash TEXT NOT NULL, source_connected INTEGER NOT NULL DEFAULT 0, source_state_time REAL,
    device_connected INTEGER NOT NULL DEFAULT 0, device_state_time REAL
);
"""


async def test_sqlite_files_of_older_versions_are_migrated(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO tunnels (tunnel_id, project_id, device_id, status, create_time, expires_at,"
               " source_token_hash, device_token_hash) VALUES ('t-old', 'p1', 'd1', 'OPEN', 1000, 2000, ?, ?)", (S, D))
    db.commit()
    db.close()
    migrated = SqliteStore(path)
    try:
        old = await migrated.get("t-old")
        assert (old.protocol, old.services, old.source_client_hash) == (TunnelProtocol.HUAWEI, (), None)
        assert (await migrated.find_by_token_hash(D)).tunnel_id == "t-old"
        new = aws_tunnel("d2")
        await migrated.insert(new, 10)
        assert (await migrated.get(new.tunnel_id)).services == ("SSH", "tcp:8080")
    finally:
        await migrated.aclose()
    again = SqliteStore(path)   # opening a migrated file again changes nothing
    try:
        assert (await again.get(new.tunnel_id)).protocol is TunnelProtocol.AWS
    finally:
        await again.aclose()
