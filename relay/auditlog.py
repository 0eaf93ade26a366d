"""The audit log: events and session recordings written to the store off the hot path.

`record` and `save_recording` are synchronous and never wait: they are called from the
relay's socket callbacks and REST handlers. They append to bounded in-memory queues; a
background task (`run`, started by `start`) writes batches to the store. When the store
fails, the batch stays queued and the write is retried with backoff; events that arrive
while the queue is full are not written, and that is never silent: it is counted
(`dropped`, `relay_audit_events_dropped_total`) and logged (at most one warning a minute
per kind). `flush` writes everything queued (shutdown, tests); `purge` applies retention.

One project cannot flood the trail (docs/security.md): each project may add `rate` events a
second, sustained, and `burst` at once (a token bucket on the relay's clock). Events over
that are not stored; they are counted (`limited`, `relay_audit_events_limited_total` by
project), logged (one warning a minute per project), and summed up in the trail itself: the
project's next event that fits comes after one `audit_events_limited` event saying how many
were left out since when.

Which sessions are recorded: those of the projects in `record_projects`. The data plane
asks `tap(...)` for a TunnelTap per tunnel (None when the project is not recorded), feeds it
the messages, and hands each finished Recording to `save_recording`; the `session_recorded`
event follows once the recording is stored (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from relay.audit import ACTOR_RELAY, ACTOR_SOURCE, OK, AuditEvent, EventType
from relay.clock import Clock
from relay.config import Settings
from relay.recording import Recording, TunnelTap
from relay.store.base import AuditTrail, SessionRecordings

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH = 200
DEFAULT_RECORDING_QUEUE = 16       # recordings waiting to be stored (each up to the cap)
DEFAULT_RETENTION = 30 * 86400
WARN_EVERY = 60.0                  # seconds between two warnings of one kind
DEFAULT_RATE = 100.0               # events a second one project may add, sustained ...
DEFAULT_BURST = 2000               # ... and at once
MAX_BUCKETS = 10_000               # projects whose rate is followed; full buckets are forgotten first


class AuditStore(AuditTrail, SessionRecordings, Protocol):
    """What the audit log writes to: the store's audit events and its session recordings."""


class _Bucket:
    """One project's allowance: `tokens` events may be added now; `dropped` were not since `since`."""

    __slots__ = ("tokens", "stamp", "dropped", "since")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.dropped = 0
        self.since = 0.0


class AuditLog:
    def __init__(self, store: AuditStore, clock: Clock, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 batch: int = DEFAULT_BATCH, retention: float = DEFAULT_RETENTION,
                 record_projects: Iterable[str] = (), recording_cap: int = 1024 * 1024,
                 recording_queue: int = DEFAULT_RECORDING_QUEUE, retry_initial: float = 0.1,
                 retry_max: float = 10.0, purge_interval: float = 3600.0, rate: float = DEFAULT_RATE,
                 burst: int = DEFAULT_BURST) -> None:
        if queue_size < 1 or batch < 1 or burst < 1 or rate <= 0:
            raise ValueError("queue_size, batch and burst must be at least 1, rate above 0")
        self.store = store
        self.clock = clock
        self.queue_size = queue_size
        self.batch = batch
        self.retention = retention
        self.record_projects = frozenset(record_projects)
        self.recording_cap = recording_cap
        self.recording_queue = recording_queue
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.purge_interval = purge_interval
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        # what the metrics show (relay/web/metrics.py)
        self.written = 0                 # events stored
        self.dropped = 0                 # events not stored: the queue was full (or shutdown came first)
        self.write_failures = 0          # store calls that failed (each retried)
        self.recordings_saved = 0
        self.recordings_dropped = 0
        self.limited: Counter[str] = Counter()   # events over a project's rate bound, by project
        self._queue: deque[AuditEvent] = deque()
        self._recordings: deque[tuple[Recording, str]] = deque()   # and the actor of its session_recorded
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._warned: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, store: AuditStore, clock: Clock, settings: Settings, **overrides: Any) -> AuditLog:
        options: dict[str, Any] = dict(queue_size=settings.audit_queue_size, retention=settings.audit_retention,
                                       record_projects=settings.record_projects,
                                       recording_cap=settings.recording_cap, rate=settings.audit_rate,
                                       burst=settings.audit_burst)
        options.update(overrides)
        return cls(store, clock, **options)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- the hot path: never waits ---------------------------------------------------------

    def record(self, project_id: str, event: EventType | str, *, actor: str, tunnel_id: str | None = None,
               device_id: str | None = None, outcome: str = OK, detail: Mapping[str, Any] | None = None) -> None:
        """Queue an event (its time is now). Never blocks, never raises for a full queue."""
        try:
            kind = EventType(event)
        except ValueError:
            self.dropped += 1
            self._warn("unknown", f"an audit event of unknown type {str(event)[:40]!r} was dropped")
            return
        now = self.clock.now()
        if not self._within_rate(project_id, now):
            return
        self._enqueue(AuditEvent.new(project_id, kind, time=now, actor=actor, tunnel_id=tunnel_id,
                                     device_id=device_id, outcome=outcome, detail=detail))

    def _within_rate(self, project_id: str, now: float) -> bool:
        """Whether the project may add an event now (and takes it from its allowance). The
        first event after some were left out is preceded by the event that says so."""
        bucket = self._buckets.get(project_id)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full_buckets(now)
            bucket = self._buckets[project_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            if not bucket.dropped:
                bucket.since = now
            bucket.dropped += 1
            self.limited[project_id] += 1
            self._warn(f"rate:{project_id}", f"project {project_id!r} adds audit events faster than "
                                             f"{self.rate:g} a second (burst {self.burst}); "
                                             f"{self.limited[project_id]} left out so far")
            return False
        bucket.tokens -= 1.0
        if bucket.dropped:
            self._enqueue(AuditEvent.new(project_id, EventType.EVENTS_LIMITED, time=now, actor=ACTOR_RELAY,
                                         outcome=f"{bucket.dropped} dropped",
                                         detail={"dropped": bucket.dropped, "since": bucket.since,
                                                 "rate": self.rate, "burst": self.burst}))
            bucket.dropped = 0
        return True

    def _forget_full_buckets(self, now: float) -> None:
        """Projects whose allowance has refilled are as new: their buckets can go."""
        for project_id, bucket in list(self._buckets.items()):
            if not bucket.dropped and bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                del self._buckets[project_id]

    def _enqueue(self, event: AuditEvent) -> None:
        if self._closed:   # after shutdown nothing writes any more: counted, not kept
            self.dropped += 1
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            self._warn("full", f"the audit queue is full ({self.queue_size} events waiting for the store); "
                               f"{self.dropped} event(s) dropped so far")
            return
        self._queue.append(event)
        self._wake.set()

    def should_record(self, project_id: str) -> bool:
        return project_id in self.record_projects

    def tap(self, project_id: str, tunnel_id: str, device_id: str, *, requested: bool = False, width: int = 128,
            height: int = 30) -> TunnelTap | None:
        """A recorder for a tunnel that asked to be recorded (`requested`: its record_session)
        or belongs to a recorded project; None otherwise. The default size is the device
        agent's terminal (128x30)."""
        if not (requested or self.should_record(project_id)):
            return None
        return TunnelTap(project_id, tunnel_id, device_id, self.recording_cap, width, height)

    def save_recording(self, recording: Recording, actor: str = ACTOR_SOURCE) -> None:
        """Queue a finished recording; the `session_recorded` event (by `actor`) is recorded
        once it is stored."""
        if self._closed or len(self._recordings) >= self.recording_queue:
            self.recordings_dropped += 1
            self._warn("recordings", f"{self.recording_queue} session recordings are waiting for the store; "
                                     f"{self.recordings_dropped} recording(s) dropped so far")
            return
        self._recordings.append((recording, actor))
        self._wake.set()

    # -- writing -------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._queue or self._recordings)

    async def _write_some(self) -> bool:
        """Store one recording or one batch of events; False when the store failed."""
        async with self._lock:
            if self._recordings:
                recording, actor = self._recordings[0]
                try:
                    await self.store.save_recording(recording)
                except Exception as exc:
                    return self._failed("a session recording", exc)
                self._recordings.popleft()
                self.recordings_saved += 1
                self._enqueue(_recorded_event(recording, actor))
                return True
            batch = list(itertools.islice(self._queue, self.batch))
            if not batch:
                return True
            try:
                await self.store.append_audit(batch)
            except Exception as exc:
                return self._failed(f"{len(batch)} audit event(s)", exc)
            for _ in batch:   # only this (locked) code removes from the left
                self._queue.popleft()
            self.written += len(batch)
            return True

    def _failed(self, what: str, exc: Exception) -> bool:
        self.write_failures += 1
        self._warn("store", f"could not write {what} to the store ({type(exc).__name__}: {exc}); "
                            f"{len(self._queue)} event(s) queued, retrying")
        return False

    async def run(self) -> None:
        """Write whatever is queued, for as long as the relay runs (cancelled on shutdown)."""
        delay = self.retry_initial
        while True:
            if not self.pending():
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._write_some():
                delay = self.retry_initial
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued, retrying with backoff while the store fails; True once the
        queues are empty, False when `timeout` seconds passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = self.retry_initial
        while self.pending():
            if await self._write_some():
                delay = self.retry_initial
                continue
            if deadline is not None and loop.time() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)
        return True

    # -- retention -----------------------------------------------------------------------

    async def purge(self, now: float | None = None) -> tuple[int, int]:
        """Delete events and recordings older than the retention: (events, recordings)."""
        before = (self.clock.now() if now is None else now) - self.retention
        events = await self.store.purge_audit(before)
        recordings = await self.store.purge_recordings(before)
        if events or recordings:
            log.info("audit trail purged", extra={"events": events, "recordings": recordings})
        return events, recordings

    async def run_retention(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:   # the store may be away for a while; next round
                self._warn("purge", f"the audit retention sweep failed ({type(exc).__name__}: {exc})")
            await asyncio.sleep(self.purge_interval)

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._closed = False
        self._tasks = [asyncio.create_task(self.run(), name="audit-writer"),
                       asyncio.create_task(self.run_retention(), name="audit-retention")]

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the tasks after writing what is queued (for at most `timeout` seconds); what
        could not be written is counted as dropped and logged."""
        retention = self._tasks[1:]
        for task in retention:
            task.cancel()
        flushed = await self.flush(timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._closed = True
        if not flushed:
            lost, lost_recordings = len(self._queue), len(self._recordings)
            self.dropped += lost
            self.recordings_dropped += lost_recordings
            self._queue.clear()
            self._recordings.clear()
            log.warning("the store did not take the audit trail before shutdown: %d event(s) and %d recording(s) "
                        "were not written", lost, lost_recordings)

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is not None and now - last < WARN_EVERY:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._warned[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("%s%s", message, f" ({more} similar warning(s) suppressed)" if more else "")


def _recorded_event(recording: Recording, actor: str) -> AuditEvent:
    return AuditEvent.new(
        recording.project_id, EventType.SESSION_RECORDED, time=recording.ended, actor=actor,
        tunnel_id=recording.tunnel_id, device_id=recording.device_id,
        outcome="truncated" if recording.truncated else OK,
        detail={"session_id": recording.session_id, "username": recording.username, "size": recording.size,
                "truncated": recording.truncated, "duration": round(recording.ended - recording.started, 3)})
