"""The audit log: record never waits, the writer stores batches in the background, failures
and a full queue are counted and logged, nothing is lost while the store is away and the
queue has room, and retention purges events and recordings."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay import errors
from relay.audit import AuditQuery, EventType
from relay.auditlog import AuditLog
from relay.clock import ManualClock
from relay.config import Settings
from relay.recording import Recording, RecordingQuery
from relay.store.sqlite import SqliteStore

T0 = 1_750_000_000.0


class FlakyStore(SqliteStore):
    """A real SQLite store whose audit writes fail while `failing` is set."""

    failing = False

    async def append_audit(self, events):  # type: ignore[no-untyped-def]
        if self.failing:
            raise errors.StoreUnavailable("the store is away (test)")
        await super().append_audit(events)

    async def save_recording(self, recording):  # type: ignore[no-untyped-def]
        if self.failing:
            raise errors.StoreUnavailable("the store is away (test)")
        await super().save_recording(recording)


@pytest.fixture
async def store(tmp_path):
    s = FlakyStore(str(tmp_path / "audit.db"))
    yield s
    await s.aclose()


@pytest.fixture
def clock():
    return ManualClock(T0)


async def events_of(store, project: str = "p1", **filters) -> list:  # type: ignore[no-untyped-def]
    return (await store.query_audit(project, AuditQuery(limit=1000, **filters))).events


async def until(condition, rounds: int = 10_000) -> None:  # type: ignore[no-untyped-def]
    """Let the loop run until `condition()` holds (no wall-clock assertion)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def test_record_is_synchronous_and_needs_no_running_loop(store, clock):
    log = AuditLog(store, clock)
    assert log.record("p1", EventType.TUNNEL_CREATED, actor="alice", tunnel_id="t1", device_id="d1") is None
    assert log.queue_depth == 1


async def test_flush_writes_what_was_recorded(store, clock):
    log = AuditLog(store, clock, batch=3)
    for n in range(10):
        log.record("p1", EventType.SOURCE_CONNECTED, actor="source", tunnel_id="t1", device_id="d1",
                   detail={"n": n})
        clock.advance(1)
    log.record("p1", "tunnel_closed", actor="ci", tunnel_id="t1", outcome="ok")
    assert await log.flush()
    stored = await events_of(store)
    assert [e.event for e in stored] == [EventType.TUNNEL_CLOSED] + [EventType.SOURCE_CONNECTED] * 10
    assert [e.detail.get("n") for e in stored[1:]] == list(range(9, -1, -1))
    assert stored[0].time == T0 + 10 and stored[0].actor == "ci" and stored[0].device_id is None
    assert log.written == 11 and log.queue_depth == 0 and log.dropped == 0


async def test_the_background_writer(store, clock):
    log = AuditLog(store, clock)
    await log.start()
    try:
        log.record("p1", EventType.DEVICE_CONNECTED, actor="device", device_id="d1")
        await until(lambda: log.written == 1)
        assert [e.event for e in await events_of(store)] == [EventType.DEVICE_CONNECTED]
        for _ in range(5):
            log.record("p1", EventType.DEVICE_DISCONNECTED, actor="device", device_id="d1")
        await until(lambda: log.written == 6)
    finally:
        await log.aclose()
    assert log.dropped == 0


async def test_a_failing_store_is_counted_and_the_events_arrive_once_it_is_back(store, clock, caplog):
    log = AuditLog(store, clock, retry_initial=0.001, retry_max=0.01)
    store.failing = True
    await log.start()
    try:
        with caplog.at_level(logging.WARNING, logger="relay.auditlog"):
            for n in range(20):
                log.record("p1", EventType.SSH_LOGIN_FAILED, actor="source", device_id="d1", outcome="401",
                           detail={"n": n})
            await until(lambda: log.write_failures >= 3)   # retried, with backoff
        assert log.queue_depth == 20 and log.written == 0 and log.dropped == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1      # rate-limited: one warning, not one per retry
        assert "could not write 20 audit event(s)" in warnings[0].getMessage()
        assert "StoreUnavailable" in warnings[0].getMessage()
        store.failing = False
        await until(lambda: log.written == 20)
    finally:
        await log.aclose()
    assert sorted(e.detail["n"] for e in await events_of(store)) == list(range(20))
    assert log.queue_depth == 0 and log.dropped == 0


async def test_a_full_queue_counts_what_it_cannot_keep(store, clock, caplog):
    log = AuditLog(store, clock, queue_size=5, retry_initial=0.001)
    store.failing = True
    with caplog.at_level(logging.WARNING, logger="relay.auditlog"):
        for n in range(8):
            log.record("p1", EventType.TUNNEL_CREATED, actor="alice", detail={"n": n})
            clock.advance(1)
    assert log.queue_depth == 5 and log.dropped == 3
    full = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1 and "5 events" in full[0]
    assert not await log.flush(timeout=0.05)          # the store is still away
    store.failing = False
    assert await log.flush()
    assert [e.detail["n"] for e in await events_of(store)] == [4, 3, 2, 1, 0]   # the first five, kept in order
    log.record("p1", EventType.TUNNEL_CREATED, actor="alice", detail={"n": 99})   # room again
    assert await log.flush() and log.dropped == 3


async def test_shutdown_while_the_store_is_away_counts_the_loss(store, clock, caplog):
    log = AuditLog(store, clock, retry_initial=0.001)
    await log.start()
    store.failing = True
    log.record("p1", EventType.TUNNEL_CREATED, actor="alice")
    log.record("p1", EventType.TUNNEL_CLOSED, actor="alice")
    with caplog.at_level(logging.WARNING, logger="relay.auditlog"):
        await log.aclose(timeout=0.05)
    assert log.dropped == 2 and log.queue_depth == 0
    assert any("2 event(s) and 0 recording(s) were not written" in r.getMessage() for r in caplog.records)
    log.record("p1", EventType.TUNNEL_DELETED, actor="alice")    # after shutdown: counted, not kept
    assert log.dropped == 3 and log.queue_depth == 0


async def test_unknown_event_types_are_dropped_and_counted(store, clock, caplog):
    log = AuditLog(store, clock)
    with caplog.at_level(logging.WARNING, logger="relay.auditlog"):
        log.record("p1", "tunnel_teleported", actor="alice")
    assert log.dropped == 1 and log.queue_depth == 0
    assert "tunnel_teleported" in caplog.text


def recording(session: str, ended: float, truncated: bool = False) -> Recording:
    data = b'{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "hi"]\n'
    return Recording(session_id=session, project_id="p1", tunnel_id="t1", device_id="d1", username="pi",
                     started=ended - 5, ended=ended, truncated=truncated, size=len(data), data=data)


async def test_a_saved_recording_is_followed_by_its_event(store, clock):
    log = AuditLog(store, clock, retry_initial=0.001)
    store.failing = True
    log.save_recording(recording("s1", T0 + 5, truncated=True))
    assert not await log.flush(timeout=0.02)
    assert await events_of(store) == []            # no event before the recording is stored
    store.failing = False
    assert await log.flush()
    assert (await store.get_recording("p1", "s1")).data.startswith(b'{"version": 2')
    (event,) = await events_of(store, events=frozenset({EventType.SESSION_RECORDED}))
    assert event.time == T0 + 5 and event.tunnel_id == "t1" and event.device_id == "d1"
    assert event.actor == "source" and event.outcome == "truncated"
    assert event.detail == {"session_id": "s1", "username": "pi", "size": 59, "truncated": True, "duration": 5.0}
    assert log.recordings_saved == 1


async def test_the_recording_queue_is_bounded(store, clock):
    log = AuditLog(store, clock, recording_queue=2)
    for n in range(4):
        log.save_recording(recording(f"s{n}", T0))
    assert log.recordings_dropped == 2
    await log.flush()
    page = await store.list_recordings("p1", RecordingQuery())
    assert sorted(r.session_id for r in page.recordings) == ["s0", "s1"]


async def test_taps_only_for_recorded_projects(store, clock):
    log = AuditLog.from_settings(store, clock, Settings(record_projects=("p1",), recording_cap=5000))
    assert log.tap("p2", "t1", "d1") is None
    tap = log.tap("p1", "t1", "d1")
    assert tap is not None and tap.cap_bytes == 5000 and (tap.width, tap.height) == (128, 30)
    assert log.should_record("p1") and not log.should_record("p2")


async def test_retention_purges_events_and_recordings(store, clock):
    log = AuditLog(store, clock, retention=100)
    log.record("p1", EventType.TUNNEL_CREATED, actor="alice", detail={"n": "old"})
    log.save_recording(recording("old", T0))
    clock.advance(50)
    log.record("p1", EventType.TUNNEL_CREATED, actor="alice", detail={"n": "new"})
    log.save_recording(recording("new", T0 + 50))
    await log.flush()
    assert await log.purge(T0 + 100) == (0, 0)
    assert await log.purge(T0 + 120) == (2, 1)      # the old event, the old recording and its event
    assert sorted(e.detail.get("n", e.event.value) for e in await events_of(store)) == ["new", "session_recorded"]
    assert await store.get_recording("p1", "old") is None
    assert await store.get_recording("p1", "new") is not None
    clock.advance(1000)
    assert await log.purge() == (2, 1)


def test_settings_defaults():
    settings = Settings()
    assert settings.audit_retention == 30 * 86400 and settings.recording_cap == 1024 * 1024
    assert settings.record_projects == () and settings.audit_queue_size > 0


# -- one project cannot flood the trail (issue 15, finding 10) ---------------------------------


async def test_a_project_over_its_rate_is_bounded_counted_and_summed_up(store, clock):
    log = AuditLog(store, clock, rate=5.0, burst=10)
    for n in range(1000):
        log.record("p1", EventType.TUNNEL_CLOSED, actor="alice", outcome="TUNNEL.404000", detail={"n": n})
    log.record("p2", EventType.TUNNEL_CREATED, actor="bob")          # another project is not held back
    assert log.limited == {"p1": 990}
    clock.advance(1.0)                                               # 5 more a second
    for n in range(10):
        log.record("p1", EventType.TUNNEL_CREATED, actor="alice", detail={"later": n})
    assert log.limited == {"p1": 995}
    assert await log.flush(5)
    stored = await events_of(store, "p1")
    assert len(stored) == 10 + 1 + 5
    summary = [e for e in stored if e.event is EventType.EVENTS_LIMITED]
    assert len(summary) == 1 and summary[0].detail["dropped"] == 990 and summary[0].detail["since"] == T0
    assert summary[0].actor == "relay" and summary[0].time == T0 + 1.0
    assert len(await events_of(store, "p2")) == 1


def test_the_rate_bound_comes_from_the_settings(store, clock):
    log = AuditLog.from_settings(store, clock, Settings(audit_rate=2.5, audit_burst=7))
    assert (log.rate, log.burst) == (2.5, 7)
    for _ in range(20):
        log.record("p1", EventType.TUNNEL_CREATED, actor="alice")
    assert log.queue_depth == 7 and log.limited["p1"] == 13


def test_the_rate_bookkeeping_of_many_projects_is_bounded(store, clock, monkeypatch):
    import relay.auditlog as auditlog
    monkeypatch.setattr(auditlog, "MAX_BUCKETS", 3)
    log = AuditLog(store, clock, rate=1.0, burst=2)
    for n in range(10):
        clock.advance(5.0)   # each project's allowance refills before the next one comes
        log.record(f"p{n}", EventType.TUNNEL_CREATED, actor="alice")
    assert len(log._buckets) <= 3 and log.queue_depth == 10
