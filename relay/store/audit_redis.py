"""The audit trail and session recordings in the Redis store (docs/audit.md).

Given the RedisStore's client (decode_responses=True) and key prefix. Layout, per project:

    a:e:{project}              hash: event_id -> the event as JSON
    a:p:{project}              sorted set: event ids by time (every event of the project)
    a:d:{project}:{device}     sorted set: the device's events by time
    a:t:{project}:{tunnel}     sorted set: the tunnel's events by time
    a:y:{project}:{event}      sorted set: the events of one type by time
    a:all                      sorted set: "{project}/{event_id}" by time (retention)
    r:{project}:{session}      hash: a recording's fields and its .cast data
    r:p:{project}              sorted set: the project's recordings by start time
    r:ended                    sorted set: "{project}/{session}" by end time (retention)

Pages run newest first, by time then id, both descending: the order of ZREVRANGEBYSCORE,
which sorts members of equal score in reverse byte order. A page reads the narrowest index
of its filters and checks the others on the events it reads. Appending is idempotent by
event_id (HSET and ZADD of the same member), so a retried batch adds nothing twice.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from relay.audit import AuditEvent, AuditPage, AuditQuery, Marker, page_of
from relay.recording import Recording, RecordingPage, RecordingQuery
from relay.store.audit_sqlite import dump_detail

CHUNK = 200          # ids read per round trip while paging
PURGE_CHUNK = 500


def _json(event: AuditEvent) -> bytes:
    record = event.to_record()
    record["detail"] = orjson.loads(dump_detail(event.detail))
    return orjson.dumps(record)


async def _descending(redis: aioredis.Redis, key: str, low: float | None, high: float | None,
                      high_inclusive: bool, marker: Marker | None) -> AsyncGenerator[tuple[str, float], None]:
    """(member, score) of a sorted set from the highest score down, in (score, member)
    descending order, only those after `marker`; reads CHUNK at a time without offsets that
    concurrent writes could shift (ties larger than a chunk are stepped over by offset)."""
    top: float | None = high
    top_open = not high_inclusive
    cursor = marker
    if marker is not None and (top is None or marker.time < top or (marker.time == top and not top_open)):
        top, top_open = marker.time, False
    minimum = "-inf" if low is None else repr(low)
    skip = 0
    while True:
        maximum = "+inf" if top is None else (f"({top!r}" if top_open else repr(top))
        rows = cast(list[tuple[str, float]],
                    await redis.zrevrangebyscore(key, maximum, minimum, start=skip, num=CHUNK, withscores=True))
        fresh = [(m, s) for m, s in rows if cursor is None or cursor.after(s, m)]
        for member, score in fresh:
            yield member, score
        if len(rows) < CHUNK:
            return
        if fresh:
            last_member, last_score = fresh[-1]
            cursor = Marker(last_score, last_member)
            top, top_open, skip = last_score, False, 0
        else:
            skip += CHUNK   # a run of equal scores longer than a chunk


class RedisAudit:
    def __init__(self, redis: aioredis.Redis, prefix: str, call: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        self.redis = redis
        self.prefix = prefix
        self._call = call   # the store's wrapper: Redis errors become StoreUnavailable

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- events ----------------------------------------------------------------------------

    async def append(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        pipe = self.redis.pipeline(transaction=True)
        for e in events:
            p = e.project_id
            pipe.hset(self._k("a:e", p), e.event_id, _json(e))
            score = {e.event_id: e.time}
            pipe.zadd(self._k("a:p", p), score)
            pipe.zadd(self._k("a:y", p, e.event.value), score)
            if e.device_id is not None:
                pipe.zadd(self._k("a:d", p, e.device_id), score)
            if e.tunnel_id is not None:
                pipe.zadd(self._k("a:t", p, e.tunnel_id), score)
            pipe.zadd(self._k("a:all"), {f"{p}/{e.event_id}": e.time})
        await self._call(pipe.execute())

    def _index(self, project_id: str, query: AuditQuery) -> str:
        if query.tunnel_id is not None:
            return self._k("a:t", project_id, query.tunnel_id)
        if query.device_id is not None:
            return self._k("a:d", project_id, query.device_id)
        if len(query.events) == 1:
            (only,) = query.events
            return self._k("a:y", project_id, only.value)
        return self._k("a:p", project_id)

    async def query(self, project_id: str, query: AuditQuery) -> AuditPage:
        return await self._call(self._query(project_id, query))

    async def _query(self, project_id: str, query: AuditQuery) -> AuditPage:
        found: list[AuditEvent] = []
        ids: list[str] = []
        scan = _descending(self.redis, self._index(project_id, query), query.since, query.until, False, query.marker)

        async def load() -> None:
            documents = await self.redis.hmget(self._k("a:e", project_id), ids)
            for document in documents:
                if document is None:   # purged meanwhile
                    continue
                event = AuditEvent.from_record(orjson.loads(document))
                if query.matches(event) and len(found) <= query.limit:
                    found.append(event)
            ids.clear()

        async for member, _ in scan:
            ids.append(member)
            if len(ids) >= CHUNK:
                await load()
                if len(found) > query.limit:
                    break
        if ids and len(found) <= query.limit:
            await load()
        await scan.aclose()
        return page_of(found, query.limit)

    async def purge(self, before: float) -> int:
        return await self._call(self._purge(before))

    async def _purge(self, before: float) -> int:
        purged = 0
        while True:
            members = await self.redis.zrangebyscore(self._k("a:all"), "-inf", f"({before!r}", start=0, num=PURGE_CHUNK)
            if not members:
                return purged
            by_project: dict[str, list[str]] = {}
            for member in members:
                project_id, _, event_id = str(member).partition("/")
                by_project.setdefault(project_id, []).append(event_id)
            pipe = self.redis.pipeline(transaction=True)
            for project_id, event_ids in by_project.items():
                documents = await self.redis.hmget(self._k("a:e", project_id), event_ids)
                for event_id, document in zip(event_ids, documents):
                    if document is not None:
                        record = orjson.loads(document)
                        pipe.zrem(self._k("a:y", project_id, record["event"]), event_id)
                        if record.get("device_id") is not None:
                            pipe.zrem(self._k("a:d", project_id, record["device_id"]), event_id)
                        if record.get("tunnel_id") is not None:
                            pipe.zrem(self._k("a:t", project_id, record["tunnel_id"]), event_id)
                        purged += 1
                pipe.hdel(self._k("a:e", project_id), *event_ids)
                pipe.zrem(self._k("a:p", project_id), *event_ids)
            pipe.zrem(self._k("a:all"), *members)
            await pipe.execute()

    # -- recordings ------------------------------------------------------------------------

    async def save_recording(self, rec: Recording) -> None:
        fields: dict[str, Any] = {
            "session_id": rec.session_id, "project_id": rec.project_id, "tunnel_id": rec.tunnel_id,
            "device_id": rec.device_id, "started": repr(rec.started), "ended": repr(rec.ended),
            "truncated": "1" if rec.truncated else "0", "size": str(len(rec.data)),
            "data": rec.data.decode("utf-8"),   # a .cast file is UTF-8 text (the client decodes)
        }
        if rec.username is not None:
            fields["username"] = rec.username
        key = self._k("r", rec.project_id, rec.session_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=cast(Any, fields))
        pipe.zadd(self._k("r:p", rec.project_id), {rec.session_id: rec.started})
        pipe.zadd(self._k("r:ended"), {f"{rec.project_id}/{rec.session_id}": rec.ended})
        await self._call(pipe.execute())

    async def get_recording(self, project_id: str, session_id: str) -> Recording | None:
        h = await self._call(self.redis.hgetall(self._k("r", project_id, session_id)))
        return _recording(h, with_data=True) if h else None

    async def list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        return await self._call(self._list_recordings(project_id, query))

    async def _list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        found: list[Recording] = []
        names = ["session_id", "project_id", "tunnel_id", "device_id", "username", "started", "ended", "truncated", "size"]
        scan = _descending(self.redis, self._k("r:p", project_id), None, None, True, query.marker)
        async for session_id, _ in scan:
            values = await self.redis.hmget(self._k("r", project_id, session_id), names)
            if values[0] is None:
                continue
            rec = _recording(dict(zip(names, values)), with_data=False)
            if query.matches(rec):
                found.append(rec)
                if len(found) > query.limit:
                    break
        await scan.aclose()
        page = found[:query.limit]
        more = len(found) > query.limit and page
        return RecordingPage(page, Marker(page[-1].started, page[-1].session_id) if more else None)

    async def purge_recordings(self, before: float) -> int:
        return await self._call(self._purge_recordings(before))

    async def _purge_recordings(self, before: float) -> int:
        purged = 0
        while True:
            members = await self.redis.zrangebyscore(self._k("r:ended"), "-inf", f"({before!r}", start=0, num=PURGE_CHUNK)
            if not members:
                return purged
            pipe = self.redis.pipeline(transaction=True)
            for member in members:
                project_id, _, session_id = str(member).partition("/")
                pipe.delete(self._k("r", project_id, session_id))
                pipe.zrem(self._k("r:p", project_id), session_id)
            pipe.zrem(self._k("r:ended"), *members)
            results = await pipe.execute()
            purged += sum(int(r) for r in results[0:-1:2])


def _recording(h: dict[str, Any], with_data: bool) -> Recording:
    data = h.get("data", "") if with_data else ""
    return Recording(session_id=h["session_id"], project_id=h["project_id"], tunnel_id=h["tunnel_id"],
                     device_id=h["device_id"], username=h.get("username"), started=float(h["started"]),
                     ended=float(h["ended"]), truncated=h.get("truncated") == "1", size=int(h.get("size") or 0),
                     data=data.encode("utf-8") if with_data else b"")
