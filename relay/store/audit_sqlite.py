"""The audit trail and session recordings in the SQLite store's database (docs/audit.md).

Given the SqliteStore's connection: the events and recordings live in the same file as the
tunnels, so a backup of that file holds everything. Synchronous calls, like the store's.

    audit_events   one row per event; event_id unique (a retried batch adds nothing twice)
    recordings     one row per SSH session recording, the .cast file in `data`
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from relay.audit import AuditEvent, AuditPage, AuditQuery, EventType, Marker, page_of
from relay.recording import Recording, RecordingPage, RecordingQuery

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    tunnel_id TEXT,
    device_id TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_project ON audit_events (project_id, time, event_id);
CREATE INDEX IF NOT EXISTS audit_device ON audit_events (project_id, device_id, time, event_id);
CREATE INDEX IF NOT EXISTS audit_tunnel ON audit_events (project_id, tunnel_id, time, event_id);
CREATE INDEX IF NOT EXISTS audit_time ON audit_events (time);
CREATE TABLE IF NOT EXISTS recordings (
    project_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    tunnel_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    username TEXT,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    truncated INTEGER NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (project_id, session_id)
);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (project_id, started, session_id);
CREATE INDEX IF NOT EXISTS recordings_ended ON recordings (ended);
"""

_EVENT_COLUMNS = "event_id, time, project_id, event, actor, tunnel_id, device_id, outcome, detail"
_RECORDING_COLUMNS = "session_id, project_id, tunnel_id, device_id, username, started, ended, truncated, size"


def dump_detail(detail: Any) -> bytes:
    """JSON of an event's detail; a value JSON cannot hold is kept as its text."""
    return orjson.dumps(dict(detail or {}), default=str, option=orjson.OPT_NON_STR_KEYS)


def _event(row: tuple) -> AuditEvent:
    event_id, time, project_id, event, actor, tunnel_id, device_id, outcome, detail = row
    return AuditEvent(event_id, time, project_id, EventType(event), actor, tunnel_id, device_id, outcome,
                      orjson.loads(detail))


def _recording(row: tuple, data: bytes = b"") -> Recording:
    session_id, project_id, tunnel_id, device_id, username, started, ended, truncated, size = row
    return Recording(session_id=session_id, project_id=project_id, tunnel_id=tunnel_id, device_id=device_id,
                     username=username, started=started, ended=ended, truncated=bool(truncated), size=size,
                     data=data)


def _after(marker: Marker | None, time_column: str, id_column: str, where: list[str], args: list[Any]) -> None:
    if marker is not None:
        where.append(f"({time_column}<? OR ({time_column}=? AND {id_column}<?))")
        args += [marker.time, marker.time, marker.event_id]


class SqliteAudit:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)

    # -- events ----------------------------------------------------------------------------

    def append(self, events: list[AuditEvent]) -> None:
        rows = [(e.event_id, e.project_id, e.time, e.event.value, e.actor, e.tunnel_id, e.device_id, e.outcome,
                 dump_detail(e.detail).decode()) for e in events]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO audit_events (event_id, project_id, time, event, actor, tunnel_id,"
                " device_id, outcome, detail) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def query(self, project_id: str, query: AuditQuery) -> AuditPage:
        where: list[str] = ["project_id=?"]
        args: list[Any] = [project_id]
        for column, value in (("device_id", query.device_id), ("tunnel_id", query.tunnel_id)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if query.events:
            kinds = sorted(e.value for e in query.events)
            where.append(f"event IN ({','.join('?' * len(kinds))})")
            args += kinds
        if query.since is not None:
            where.append("time>=?")
            args.append(query.since)
        if query.until is not None:
            where.append("time<?")
            args.append(query.until)
        _after(query.marker, "time", "event_id", where, args)
        rows = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_events WHERE {' AND '.join(where)}"
            " ORDER BY time DESC, event_id DESC LIMIT ?", (*args, query.limit + 1)).fetchall()
        return page_of([_event(r) for r in rows], query.limit)

    def purge(self, before: float) -> int:
        return self._db.execute("DELETE FROM audit_events WHERE time<?", (before,)).rowcount

    # -- recordings ------------------------------------------------------------------------

    def save_recording(self, rec: Recording) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO recordings ({_RECORDING_COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (rec.session_id, rec.project_id, rec.tunnel_id, rec.device_id, rec.username, rec.started, rec.ended,
             int(rec.truncated), len(rec.data), rec.data))

    def get_recording(self, project_id: str, session_id: str) -> Recording | None:
        row = self._db.execute(
            f"SELECT {_RECORDING_COLUMNS}, data FROM recordings WHERE project_id=? AND session_id=?",
            (project_id, session_id)).fetchone()
        return _recording(row[:-1], bytes(row[-1])) if row else None

    def list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        where: list[str] = ["project_id=?"]
        args: list[Any] = [project_id]
        for column, value in (("device_id", query.device_id), ("tunnel_id", query.tunnel_id)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        _after(query.marker, "started", "session_id", where, args)
        rows = self._db.execute(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE {' AND '.join(where)}"
            " ORDER BY started DESC, session_id DESC LIMIT ?", (*args, query.limit + 1)).fetchall()
        found = [_recording(r) for r in rows]
        page = found[:query.limit]
        more = len(found) > query.limit and page
        return RecordingPage(page, Marker(page[-1].started, page[-1].session_id) if more else None)

    def purge_recordings(self, before: float) -> int:
        return self._db.execute("DELETE FROM recordings WHERE ended<?", (before,)).rowcount
