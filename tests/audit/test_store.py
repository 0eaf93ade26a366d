"""One suite for the audit trail and recordings of every store: SQLite and Redis keep the
same promises (order, filters, paging, idempotence, isolation, retention)."""

from __future__ import annotations

import uuid

from relay.audit import AuditEvent, AuditQuery, EventType, Marker
from relay.recording import Recording, RecordingQuery

T0 = 1_750_000_000.0
TUNNEL_1 = str(uuid.UUID(int=1))
TUNNEL_2 = str(uuid.UUID(int=2))


def event(n: int, *, project: str = "p1", kind: EventType = EventType.TUNNEL_CREATED, device: str | None = "d1",
          tunnel: str | None = TUNNEL_1, at: float | None = None, actor: str = "alice") -> AuditEvent:
    return AuditEvent.new(project, kind, time=T0 + n if at is None else at, actor=actor, tunnel_id=tunnel,
                          device_id=device, detail={"n": n})


async def all_pages(store, project: str, **filters) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    found: list[AuditEvent] = []
    marker = None
    while True:
        page = await store.query_audit(project, AuditQuery(marker=marker, **filters))
        found += page.events
        if page.marker is None:
            return found
        assert len(page.events) == filters.get("limit", 50)
        marker = page.marker


def numbers(events: list[AuditEvent]) -> list[int]:
    return [e.detail["n"] for e in events]


async def test_append_and_read_back_every_field(store):
    e = AuditEvent.new("p1", EventType.SSH_LOGIN_FAILED, time=T0 + 0.123456, actor="source", tunnel_id=TUNNEL_1,
                       device_id="d1", outcome="401", detail={"username": "pi", "nested": {"a": [1, 2]}})
    await store.append_audit([e])
    page = await store.query_audit("p1", AuditQuery())
    assert page.events == [e] and page.marker is None
    assert page.events[0].time == T0 + 0.123456


async def test_newest_first_and_project_isolation(store):
    await store.append_audit([event(n) for n in (3, 1, 4, 0, 2)])
    await store.append_audit([event(9, project="p2")])
    page = await store.query_audit("p1", AuditQuery())
    assert numbers(page.events) == [4, 3, 2, 1, 0]
    assert numbers((await store.query_audit("p2", AuditQuery())).events) == [9]
    assert (await store.query_audit("p3", AuditQuery())).events == []


async def test_append_is_idempotent_by_event_id(store):
    batch = [event(n) for n in range(3)]
    await store.append_audit(batch)
    await store.append_audit(batch)    # a retried batch
    await store.append_audit(batch[1:])
    assert numbers(await all_pages(store, "p1")) == [2, 1, 0]


async def test_filters(store):
    await store.append_audit([
        event(0, device="d1", tunnel=TUNNEL_1, kind=EventType.TUNNEL_CREATED),
        event(1, device="d1", tunnel=TUNNEL_1, kind=EventType.SSH_LOGIN_SUCCEEDED),
        event(2, device="d2", tunnel=TUNNEL_2, kind=EventType.SSH_LOGIN_FAILED),
        event(3, device="d2", tunnel=TUNNEL_2, kind=EventType.TUNNEL_CLOSED),
        event(4, device=None, tunnel=None, kind=EventType.BATCH_CLOSE),
    ])
    q = store.query_audit
    assert numbers((await q("p1", AuditQuery(device_id="d1"))).events) == [1, 0]
    assert numbers((await q("p1", AuditQuery(tunnel_id=TUNNEL_2))).events) == [3, 2]
    logins = frozenset({EventType.SSH_LOGIN_SUCCEEDED, EventType.SSH_LOGIN_FAILED})
    assert numbers((await q("p1", AuditQuery(events=logins))).events) == [2, 1]
    assert numbers((await q("p1", AuditQuery(events=frozenset({EventType.BATCH_CLOSE})))).events) == [4]
    assert numbers((await q("p1", AuditQuery(events=logins, device_id="d2"))).events) == [2]
    assert numbers((await q("p1", AuditQuery(tunnel_id=TUNNEL_1, device_id="d2"))).events) == []
    # since is inclusive, until exclusive
    assert numbers((await q("p1", AuditQuery(since=T0 + 1, until=T0 + 3))).events) == [2, 1]
    assert numbers((await q("p1", AuditQuery(since=T0 + 3))).events) == [4, 3]
    assert numbers((await q("p1", AuditQuery(until=T0 + 1))).events) == [0]
    assert numbers((await q("p1", AuditQuery(device_id="d1", since=T0 + 0.5, until=T0 + 10))).events) == [1]


async def test_paging_is_stable_while_events_arrive(store):
    await store.append_audit([event(n) for n in range(25)])
    first = await store.query_audit("p1", AuditQuery(limit=10))
    assert numbers(first.events) == list(range(24, 14, -1)) and first.marker is not None
    # newer events and events older than the marker arrive between two pages
    await store.append_audit([event(n) for n in range(100, 105)])
    second = await store.query_audit("p1", AuditQuery(limit=10, marker=first.marker))
    assert numbers(second.events) == list(range(14, 4, -1))
    third = await store.query_audit("p1", AuditQuery(limit=10, marker=second.marker))
    assert numbers(third.events) == [4, 3, 2, 1, 0] and third.marker is None
    # a marker survives its text form
    again = await store.query_audit("p1", AuditQuery(limit=10, marker=Marker.decode(first.marker.encode())))
    assert again.events == second.events


async def test_paging_through_equal_times(store):
    """Events of one instant are ordered by event_id, and pages neither skip nor repeat them,
    even when a run of equal times is longer than what a store reads at once."""
    same = [event(n, at=T0) for n in range(450)]
    await store.append_audit(same[:200])
    await store.append_audit(same[200:])
    await store.append_audit([event(1000, at=T0 + 1), event(-1, at=T0 - 1)])
    found = await all_pages(store, "p1", limit=70)
    assert len(found) == 452
    assert found[0].detail["n"] == 1000 and found[-1].detail["n"] == -1
    middle = [e.event_id for e in found[1:-1]]
    assert middle == sorted((e.event_id for e in same), reverse=True)
    filtered = await all_pages(store, "p1", limit=33, device_id="d1", since=T0, until=T0 + 0.5)
    assert [e.event_id for e in filtered] == middle


async def test_filtered_paging_with_sparse_matches(store):
    events = [event(n, kind=EventType.SSH_LOGIN_FAILED if n % 50 == 0 else EventType.SOURCE_CONNECTED)
              for n in range(600)]
    await store.append_audit(events)
    failed = await all_pages(store, "p1", limit=4, events=frozenset({EventType.SSH_LOGIN_FAILED}))
    assert numbers(failed) == list(range(550, -1, -50))
    two = frozenset({EventType.SSH_LOGIN_FAILED, EventType.TUNNEL_CLOSED})
    assert numbers(await all_pages(store, "p1", limit=5, events=two)) == list(range(550, -1, -50))


async def test_purge(store):
    await store.append_audit([event(n) for n in range(10)] + [event(n, project="p2") for n in range(10)])
    assert await store.purge_audit(T0 + 5) == 10
    assert numbers(await all_pages(store, "p1")) == [9, 8, 7, 6, 5]
    assert numbers(await all_pages(store, "p2", device_id="d1")) == [9, 8, 7, 6, 5]
    assert numbers(await all_pages(store, "p2", tunnel_id=TUNNEL_1,
                                   events=frozenset({EventType.TUNNEL_CREATED}))) == [9, 8, 7, 6, 5]
    assert await store.purge_audit(T0 + 5) == 0
    assert await store.purge_audit(T0 + 100) == 10
    assert await all_pages(store, "p1") == []


# -- recordings -------------------------------------------------------------------------------


def recording(session: str, *, project: str = "p1", started: float = T0, device: str = "d1",
              tunnel: str = TUNNEL_1, data: bytes = b'{"version": 2}\n[0.5, "o", "h\xc3\xa9llo"]\n') -> Recording:
    return Recording(session_id=session, project_id=project, tunnel_id=tunnel, device_id=device, username="pi",
                     started=started, ended=started + 60, truncated=False, size=len(data), data=data)


async def test_recordings_round_trip_and_isolation(store):
    rec = recording("s1")
    await store.save_recording(rec)
    assert await store.get_recording("p1", "s1") == rec
    assert await store.get_recording("p2", "s1") is None     # another project's
    assert await store.get_recording("p1", "nope") is None
    nameless = recording("s2", project="p2")
    nameless = Recording(**{**{f: getattr(nameless, f) for f in nameless.__dataclass_fields__}, "username": None,
                            "truncated": True})
    await store.save_recording(nameless)
    assert await store.get_recording("p2", "s2") == nameless


async def test_recordings_list_newest_first_with_filters_and_paging(store):
    for n in range(7):
        await store.save_recording(recording(f"s{n}", started=T0 + n, device="d1" if n % 2 else "d2",
                                             tunnel=TUNNEL_1 if n < 4 else TUNNEL_2))
    await store.save_recording(recording("other", project="p2"))
    page = await store.list_recordings("p1", RecordingQuery(limit=3))
    assert [r.session_id for r in page.recordings] == ["s6", "s5", "s4"]
    assert all(r.data == b"" and r.size > 0 for r in page.recordings)
    page = await store.list_recordings("p1", RecordingQuery(limit=3, marker=page.marker))
    assert [r.session_id for r in page.recordings] == ["s3", "s2", "s1"]
    page = await store.list_recordings("p1", RecordingQuery(limit=3, marker=page.marker))
    assert [r.session_id for r in page.recordings] == ["s0"] and page.marker is None
    odd = await store.list_recordings("p1", RecordingQuery(device_id="d1"))
    assert [r.session_id for r in odd.recordings] == ["s5", "s3", "s1"]
    late = await store.list_recordings("p1", RecordingQuery(tunnel_id=TUNNEL_2, device_id="d2"))
    assert [r.session_id for r in late.recordings] == ["s6", "s4"]


async def test_recordings_purge_by_end(store):
    await store.save_recording(recording("old", started=T0))          # ended T0 + 60
    await store.save_recording(recording("new", started=T0 + 100))    # ended T0 + 160
    await store.save_recording(recording("elsewhere", project="p2", started=T0))
    assert await store.purge_recordings(T0 + 60) == 0
    assert await store.purge_recordings(T0 + 61) == 2
    assert await store.get_recording("p1", "old") is None and await store.get_recording("p2", "elsewhere") is None
    assert (await store.get_recording("p1", "new")) is not None
    assert [r.session_id for r in (await store.list_recordings("p1", RecordingQuery())).recordings] == ["new"]
