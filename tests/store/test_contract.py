"""One suite for every store: SQLite and Redis keep the same promises."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from relay import errors
from relay.model import CloseReason, ListQuery, NotifyStatus, Side, Status, Tunnel
from relay.store.redis import RedisStore
from relay.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "store.db"))
    else:
        server = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield s
    await s.aclose()


def tunnel(device: str = "d1", project: str = "p1", created: float = 1000.0, lifetime: float = 60.0) -> Tunnel:
    return Tunnel(tunnel_id=str(uuid.uuid4()), project_id=project, device_id=device, create_time=created,
                  expires_at=created + lifetime, source_token_hash="s" * 64, device_token_hash="d" * 64,
                  description="desc", custom_info="info")


async def test_insert_and_get_round_trip(store):
    t = tunnel()
    await store.insert(t, 10)
    got = await store.get(t.tunnel_id)
    assert got is not None and got.seq == t.seq > 0
    for field in ("tunnel_id", "project_id", "device_id", "create_time", "expires_at", "source_token_hash",
                  "device_token_hash", "description", "custom_info", "status", "closed_time", "notify_status"):
        assert getattr(got, field) == getattr(t, field), field
    assert await store.get(str(uuid.uuid4())) is None


async def test_one_open_tunnel_per_device_and_project_quota(store):
    await store.insert(tunnel("d1"), 2)
    with pytest.raises(errors.DeviceBusy):
        await store.insert(tunnel("d1"), 2)
    await store.insert(tunnel("d1", project="p2"), 2)
    second = tunnel("d2")
    await store.insert(second, 2)
    with pytest.raises(errors.QuotaExceeded) as err:
        await store.insert(tunnel("d3"), 2)
    assert "2 tunnels" in err.value.message
    await store.close(second.tunnel_id, 1010.0, CloseReason.CLOSED)
    with pytest.raises(errors.QuotaExceeded):  # closed tunnels count
        await store.insert(tunnel("d3"), 2)
    assert await store.delete(second.tunnel_id)
    await store.insert(tunnel("d2"), 2)


async def test_concurrent_creates_for_one_device_admit_one(store):
    results = await asyncio.gather(*(store.insert(tunnel("same"), 100) for _ in range(10)), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, errors.DeviceBusy) for r in results if r is not None)


async def test_close_is_once_and_frees_the_device(store):
    t = tunnel()
    await store.insert(t, 10)
    await store.set_connect_state(t.tunnel_id, Side.SOURCE, True, 1001.0)
    closed = await store.close(t.tunnel_id, 1005.0, CloseReason.CLOSED)
    assert closed.status is Status.CLOSED and closed.closed_time == 1005.0 and closed.close_reason is CloseReason.CLOSED
    assert closed.source_connected is False and closed.source_state_time == 1005.0
    assert await store.close(t.tunnel_id, 1006.0, CloseReason.CLOSED) is None
    await store.insert(tunnel(), 10)


async def test_delete_only_closed(store):
    t = tunnel()
    await store.insert(t, 10)
    assert not await store.delete(t.tunnel_id)
    await store.close(t.tunnel_id, 1001.0, CloseReason.CLOSED)
    assert await store.delete(t.tunnel_id)
    assert await store.get(t.tunnel_id) is None
    assert not await store.delete(t.tunnel_id)


async def test_token_hashes_replaced_only_while_open(store):
    t = tunnel()
    await store.insert(t, 10)
    updated = await store.replace_token_hashes(t.tunnel_id, "n" * 64, None)
    assert updated.source_token_hash == "n" * 64 and updated.device_token_hash == "d" * 64
    await store.close(t.tunnel_id, 1001.0, CloseReason.CLOSED)
    assert await store.replace_token_hashes(t.tunnel_id, None, "m" * 64) is None


async def test_the_source_token_keeps_the_name_of_who_issued_it(store):
    t = tunnel()
    t.source_token_issuer = "alice"
    await store.insert(t, 10)
    assert (await store.get(t.tunnel_id)).source_token_issuer == "alice"
    device_only = await store.replace_token_hashes(t.tunnel_id, None, "m" * 64, "ci")
    assert device_only.source_token_issuer == "alice"   # a device token says nothing about the source's
    rotated = await store.replace_token_hashes(t.tunnel_id, "n" * 64, None, "ci")
    assert rotated.source_token_issuer == "ci" and (await store.get(t.tunnel_id)).source_token_issuer == "ci"
    unnamed = await store.replace_token_hashes(t.tunnel_id, "o" * 64, None)
    assert unnamed.source_token_issuer is None


async def test_connect_state(store):
    t = tunnel()
    await store.insert(t, 10)
    await store.set_connect_state(t.tunnel_id, Side.DEVICE, True, 1002.5)
    got = await store.get(t.tunnel_id)
    assert got.device_connected and got.device_state_time == 1002.5 and not got.source_connected
    await store.set_connect_state(t.tunnel_id, Side.DEVICE, False, 1003.0)
    assert not (await store.get(t.tunnel_id)).device_connected


async def test_expiry_and_purge(store):
    short, long_ = tunnel("a", lifetime=10), tunnel("b", lifetime=100)
    await store.insert(short, 10)
    await store.insert(long_, 10)
    assert await store.due_for_expiry(1005.0) == []
    assert await store.due_for_expiry(1010.0) == [short.tunnel_id]
    await store.close(short.tunnel_id, 1010.0, CloseReason.EXPIRED)
    assert await store.due_for_expiry(1200.0) == [long_.tunnel_id]
    assert await store.purge_closed(1010.0) == 0
    assert await store.purge_closed(1010.5) == 1
    assert await store.get(short.tunnel_id) is None


async def test_list_filters_count_and_paging(store):
    made = [tunnel(f"d{i}") for i in range(6)]
    for t in made:
        await store.insert(t, 100)
    await store.insert(tunnel("d0", project="other"), 100)
    await store.close(made[2].tunnel_id, 1001.0, CloseReason.CLOSED)
    page = await store.list("p1", ListQuery(limit=4))
    assert [t.tunnel_id for t in page.tunnels] == [t.tunnel_id for t in made[:4]] and page.count == 6
    page = await store.list("p1", ListQuery(limit=4, marker=page.marker))
    assert [t.tunnel_id for t in page.tunnels] == [t.tunnel_id for t in made[4:]]
    assert [t.tunnel_id for t in (await store.list("p1", ListQuery(status=Status.CLOSED))).tunnels] == [made[2].tunnel_id]
    assert (await store.list("p1", ListQuery(device_id="d3"))).tunnels[0].tunnel_id == made[3].tunnel_id
    assert (await store.list("p1", ListQuery(tunnel_id=made[1].tunnel_id))).count == 1
    assert (await store.list("p2", ListQuery())).count == 0
    assert [t.tunnel_id for t in (await store.list("p1", ListQuery(offset=5))).tunnels] == [made[5].tunnel_id]


async def test_notify_outbox(store):
    t = tunnel()
    await store.insert(t, 10, notify_token="tok-1")
    assert (await store.get(t.tunnel_id)).notify_status is NotifyStatus.PENDING
    assert [(p.tunnel_id, p.device_token) for p in await store.pending_notifies(10)] == [(t.tunnel_id, "tok-1")]
    await store.queue_notify(t.tunnel_id, "tok-2")  # a rotation replaces the pending token
    assert not await store.notify_delivered(t.tunnel_id, "tok-1")
    assert await store.notify_delivered(t.tunnel_id, "tok-2")
    assert (await store.get(t.tunnel_id)).notify_status is NotifyStatus.DELIVERED
    assert await store.pending_notifies(10) == []


async def test_a_device_that_comes_online_gets_its_delivered_notify_queued_again(store):
    """The broker's acknowledgement does not mean the device got the notify (it may not have
    subscribed yet): when it comes online with its end of the tunnel not connected, the
    notify waits to be published again, with the same token."""
    t, other, quiet = tunnel("d1"), tunnel("d2"), tunnel("d3", project="p2")
    await store.insert(t, 10, notify_token="tok-1")
    await store.insert(other, 10, notify_token="tok-2")
    await store.insert(quiet, 10)   # no broker at its creation: no entry, nothing to send again
    assert await store.renotify("d1") == []   # not delivered yet: it is waiting anyway
    assert await store.notify_delivered(t.tunnel_id, "tok-1")
    assert await store.notify_delivered(other.tunnel_id, "tok-2")
    assert await store.pending_notifies(10) == []

    assert await store.renotify("d1") == [t.tunnel_id]
    assert [(p.tunnel_id, p.device_token) for p in await store.pending_notifies(10)] == [(t.tunnel_id, "tok-1")]
    assert (await store.get(t.tunnel_id)).notify_status is NotifyStatus.PENDING
    assert (await store.get(other.tunnel_id)).notify_status is NotifyStatus.DELIVERED
    assert await store.renotify("d3") == []
    assert await store.notify_delivered(t.tunnel_id, "tok-1")
    assert (await store.get(t.tunnel_id)).notify_status is NotifyStatus.DELIVERED

    # a device whose end is connected has its token: nothing to send
    await store.set_connect_state(t.tunnel_id, Side.DEVICE, True, 1001.0)
    assert await store.renotify("d1") == []
    await store.set_connect_state(t.tunnel_id, Side.DEVICE, False, 1002.0)
    assert await store.renotify("d1") == [t.tunnel_id]
    # a closed tunnel's token is gone
    await store.close(t.tunnel_id, 1003.0, CloseReason.CLOSED)
    assert await store.renotify("d1") == []
    assert await store.pending_notifies(10) == []


async def test_closing_drops_an_undelivered_notify(store):
    t = tunnel()
    await store.insert(t, 10, notify_token="tok")
    await store.close(t.tunnel_id, 1001.0, CloseReason.CLOSED)
    assert await store.pending_notifies(10) == []
    assert (await store.get(t.tunnel_id)).notify_status is None
    assert await store.queue_notify(t.tunnel_id, "tok2") is None


async def test_count_by_status(store):
    a, b = tunnel("a"), tunnel("b")
    await store.insert(a, 10)
    await store.insert(b, 10)
    await store.close(a.tunnel_id, 1001.0, CloseReason.CLOSED)
    assert await store.count_by_status() == {"OPEN": 1, "CLOSED": 1}
