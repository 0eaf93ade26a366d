"""The embedded default store: one SQLite file.

Calls are synchronous: each statement touches a handful of indexed rows and takes well under
a millisecond, less than handing it to a thread would cost. WAL mode keeps readers and the
one writer apart; `BEGIN IMMEDIATE` makes check-then-insert atomic.

The file holds recordings and, until they are delivered, device tokens (the notify outbox):
it and its -wal and -shm files are readable by their owner only (0600; SQLite gives the
-wal and -shm the database file's mode), deleted content is overwritten with zeros
(`secure_delete`), and within a second of an outbox entry going the WAL is checkpointed and
truncated, so that no copy of a delivered token stays in either file (docs/security.md).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import sqlite3

from relay import errors
from relay.audit import AuditEvent, AuditPage, AuditQuery
from relay.model import (Claim, CloseReason, ListQuery, NotifyStatus, Page, PendingNotify, Side, Status, Tunnel,
                         TunnelProtocol)
from relay.recording import Recording, RecordingPage, RecordingQuery
from relay.store.audit_sqlite import SqliteAudit
from relay.store.base import TunnelStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tunnels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tunnel_id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    status TEXT NOT NULL,
    create_time REAL NOT NULL,
    expires_at REAL NOT NULL,
    closed_time REAL,
    close_reason TEXT,
    description TEXT,
    custom_info TEXT,
    source_token_hash TEXT NOT NULL,
    device_token_hash TEXT NOT NULL,
    source_connected INTEGER NOT NULL DEFAULT 0,
    source_state_time REAL,
    device_connected INTEGER NOT NULL DEFAULT 0,
    device_state_time REAL,
    notify_status TEXT,
    protocol TEXT NOT NULL DEFAULT 'huawei',
    services TEXT,
    source_client_hash TEXT,
    device_client_hash TEXT,
    record_session INTEGER NOT NULL DEFAULT 0,
    source_token_issuer TEXT
);
CREATE INDEX IF NOT EXISTS tunnels_project ON tunnels (project_id, seq);
CREATE INDEX IF NOT EXISTS tunnels_device ON tunnels (project_id, device_id, status);
CREATE INDEX IF NOT EXISTS tunnels_expiry ON tunnels (status, expires_at);
CREATE INDEX IF NOT EXISTS tunnels_closed ON tunnels (status, closed_time);
-- AWS clients present a token and no tunnel id (docs/aws.md): tunnels are found by token hash.
CREATE INDEX IF NOT EXISTS tunnels_source_token ON tunnels (source_token_hash);
CREATE INDEX IF NOT EXISTS tunnels_device_token ON tunnels (device_token_hash);
-- The notify outbox: the device token of each OPEN tunnel that was notified, kept until the
-- tunnel closes so that the notify can be published again when the device comes online
-- without its end connected (docs/device.md). Secret. `delivered`: the broker acknowledged
-- it (0: waiting to be published). rowid order is queueing order (INSERT OR REPLACE gives a
-- re-queued entry a new rowid).
CREATE TABLE IF NOT EXISTS notify_outbox (
    tunnel_id TEXT PRIMARY KEY,
    device_token TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
"""

# Columns added after a database file may already exist: (name, declaration).
MIGRATIONS = (
    ("notify_status", "TEXT"),
    ("protocol", "TEXT NOT NULL DEFAULT 'huawei'"),
    ("services", "TEXT"),
    ("source_client_hash", "TEXT"),
    ("device_client_hash", "TEXT"),
    ("record_session", "INTEGER NOT NULL DEFAULT 0"),
    ("source_token_issuer", "TEXT"),
)

COLUMNS = (
    "seq, tunnel_id, project_id, device_id, status, create_time, expires_at, closed_time,"
    " close_reason, description, custom_info, source_token_hash, device_token_hash,"
    " source_connected, source_state_time, device_connected, device_state_time, notify_status,"
    " protocol, services, source_client_hash, device_client_hash, record_session, source_token_issuer"
)


def _row_to_tunnel(row: tuple) -> Tunnel:
    (seq, tunnel_id, project_id, device_id, status, create_time, expires_at, closed_time,
     close_reason, description, custom_info, source_hash, device_hash,
     source_connected, source_time, device_connected, device_time, notify_status,
     protocol, services, source_client, device_client, record_session, source_issuer) = row
    return Tunnel(
        tunnel_id=tunnel_id, project_id=project_id, device_id=device_id,
        create_time=create_time, expires_at=expires_at,
        source_token_hash=source_hash, device_token_hash=device_hash,
        status=Status(status), closed_time=closed_time,
        close_reason=CloseReason(close_reason) if close_reason else None,
        description=description, custom_info=custom_info,
        source_connected=bool(source_connected), source_state_time=source_time,
        device_connected=bool(device_connected), device_state_time=device_time,
        notify_status=NotifyStatus(notify_status) if notify_status else None,
        protocol=TunnelProtocol(protocol), services=tuple(services.split(",")) if services else (),
        source_client_hash=source_client, device_client_hash=device_client,
        record_session=bool(record_session), source_token_issuer=source_issuer, seq=seq,
    )


PRIVATE = 0o600
SCRUB_DELAY = 1.0   # seconds from a token leaving the outbox to the WAL's truncation (one per burst)
_COMPANIONS = ("-wal", "-shm", "-journal")   # files SQLite keeps next to the database


def _make_private(path: str) -> None:
    """Create the database file readable by its owner only, or make an existing one so
    (with the files SQLite keeps next to it)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE))
    except OSError as exc:
        raise errors.ConfigError(f"cannot create the SQLite database {path!r}: {exc.strerror}") from exc
    for name in (path, *(path + suffix for suffix in _COMPANIONS)):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, PRIVATE)
                log.warning("%s was readable by others; it is now readable by its owner only", name)
        except FileNotFoundError:
            continue
        except OSError as exc:   # not ours to change: say so, and go on
            log.warning("%s is readable by others and cannot be made private (%s)", name, exc.strerror)


class SqliteStore(TunnelStore):
    def __init__(self, path: str, cache_kib: int = 2048) -> None:
        if path != ":memory:" and not path.startswith("file:"):
            _make_private(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")   # what is deleted (delivered tokens) is zeroed
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            # The page cache is the store's memory: bounded, and filled as the audit trail grows.
            self._db.execute(f"PRAGMA cache_size=-{max(16, int(cache_kib))}")
            present = {row[1] for row in self._db.execute("PRAGMA table_info(tunnels)")}
            if present:   # a file from an older version: add the new columns before the indexes on them
                for column, declaration in MIGRATIONS:
                    if column not in present:
                        self._db.execute(f"ALTER TABLE tunnels ADD COLUMN {column} {declaration}")
            self._db.executescript(SCHEMA)
            outbox = {row[1] for row in self._db.execute("PRAGMA table_info(notify_outbox)")}
            if "delivered" not in outbox:   # an older file: its entries were all waiting
                self._db.execute("ALTER TABLE notify_outbox ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0")
            self._audit = SqliteAudit(self._db)   # relay/store/audit_sqlite.py
            self._scrub: asyncio.TimerHandle | None = None
        except sqlite3.Error as exc:
            raise errors.ConfigError(f"cannot open the SQLite database {path!r}: {exc}") from exc

    def _one(self, sql: str, args: tuple = ()) -> Tunnel | None:
        row = self._db.execute(f"SELECT {COLUMNS} FROM tunnels WHERE {sql}", args).fetchone()
        return _row_to_tunnel(row) if row else None

    async def insert(self, tunnel: Tunnel, max_per_project: int, notify_token: str | None = None) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            busy = db.execute(
                "SELECT 1 FROM tunnels WHERE project_id=? AND device_id=? AND status='OPEN'",
                (tunnel.project_id, tunnel.device_id),
            ).fetchone()
            if busy:
                raise errors.DeviceBusy(f"device {tunnel.device_id!r} already has an open tunnel")
            (count,) = db.execute(
                "SELECT COUNT(*) FROM tunnels WHERE project_id=?", (tunnel.project_id,)
            ).fetchone()
            if count >= max_per_project:
                raise errors.QuotaExceeded(
                    f"project {tunnel.project_id!r} already holds {count} tunnels, the most allowed"
                    f" is {max_per_project}; delete closed tunnels to make room"
                )
            if notify_token is not None:
                tunnel.notify_status = NotifyStatus.PENDING
            cur = db.execute(
                "INSERT INTO tunnels (tunnel_id, project_id, device_id, status, create_time,"
                " expires_at, description, custom_info, source_token_hash, device_token_hash,"
                " notify_status, protocol, services, record_session, source_token_issuer)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (tunnel.tunnel_id, tunnel.project_id, tunnel.device_id, tunnel.status.value,
                 tunnel.create_time, tunnel.expires_at, tunnel.description, tunnel.custom_info,
                 tunnel.source_token_hash, tunnel.device_token_hash,
                 tunnel.notify_status.value if tunnel.notify_status else None,
                 tunnel.protocol.value, ",".join(tunnel.services) or None, int(tunnel.record_session),
                 tunnel.source_token_issuer),
            )
            tunnel.seq = cur.lastrowid or 0
            if notify_token is not None:
                db.execute("INSERT OR REPLACE INTO notify_outbox (tunnel_id, device_token) VALUES (?,?)",
                           (tunnel.tunnel_id, notify_token))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def get(self, tunnel_id: str) -> Tunnel | None:
        return self._one("tunnel_id=?", (tunnel_id,))

    async def list(self, project_id: str, query: ListQuery) -> Page:
        where = ["project_id=?"]
        args: list = [project_id]
        for column, value in (("device_id", query.device_id), ("tunnel_id", query.tunnel_id),
                              ("status", query.status.value if query.status else None)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        condition = " AND ".join(where)
        (count,) = self._db.execute(f"SELECT COUNT(*) FROM tunnels WHERE {condition}", args).fetchone()
        if query.marker is not None:
            condition += " AND seq>?"
            args.append(query.marker)
        rows = self._db.execute(
            f"SELECT {COLUMNS} FROM tunnels WHERE {condition} ORDER BY seq LIMIT ? OFFSET ?",
            (*args, query.limit, query.offset),
        ).fetchall()
        tunnels = [_row_to_tunnel(r) for r in rows]
        return Page(tunnels=tunnels, count=count, marker=tunnels[-1].seq if tunnels else None)

    async def close(self, tunnel_id: str, when: float, reason: CloseReason) -> Tunnel | None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "UPDATE tunnels SET status='CLOSED', closed_time=?, close_reason=?,"
                " source_connected=0, device_connected=0,"
                " source_state_time=CASE WHEN source_connected THEN ? ELSE source_state_time END,"
                " device_state_time=CASE WHEN device_connected THEN ? ELSE device_state_time END,"
                " notify_status=CASE WHEN notify_status='PENDING' THEN NULL ELSE notify_status END"
                " WHERE tunnel_id=? AND status='OPEN'",
                (when, reason.value, when, when, tunnel_id),
            )
            dropped = 0
            if cur.rowcount:
                # An undelivered notify of a closed tunnel is never delivered.
                dropped = db.execute("DELETE FROM notify_outbox WHERE tunnel_id=?", (tunnel_id,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if dropped:
            self._forget_deleted()
        return self._one("tunnel_id=?", (tunnel_id,)) if cur.rowcount else None

    async def delete(self, tunnel_id: str) -> bool:
        cur = self._db.execute("DELETE FROM tunnels WHERE tunnel_id=? AND status='CLOSED'", (tunnel_id,))
        return cur.rowcount > 0

    async def replace_token_hashes(
        self, tunnel_id: str, source_hash: str | None, device_hash: str | None, source_issuer: str | None = None
    ) -> Tunnel | None:
        # A new token is unused: the client token its predecessor was bound to is forgotten.
        cur = self._db.execute(
            "UPDATE tunnels SET source_token_hash=COALESCE(?, source_token_hash),"
            " device_token_hash=COALESCE(?, device_token_hash),"
            " source_client_hash=CASE WHEN ? IS NULL THEN source_client_hash END,"
            " device_client_hash=CASE WHEN ? IS NULL THEN device_client_hash END,"
            " source_token_issuer=CASE WHEN ? IS NULL THEN source_token_issuer ELSE ? END"
            " WHERE tunnel_id=? AND status='OPEN'",
            (source_hash, device_hash, source_hash, device_hash, source_hash, source_issuer, tunnel_id),
        )
        return self._one("tunnel_id=?", (tunnel_id,)) if cur.rowcount else None

    async def find_by_token_hash(self, token_hash: str) -> Tunnel | None:
        return self._one("source_token_hash=? OR device_token_hash=?", (token_hash, token_hash))

    async def claim_access(self, tunnel_id: str, side: Side, token_hash: str, client_hash: str) -> Claim:
        column = "source" if side is Side.SOURCE else "device"
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(f"SELECT status, {column}_token_hash, {column}_client_hash FROM tunnels"
                             " WHERE tunnel_id=?", (tunnel_id,)).fetchone()
            if row is None or row[0] != Status.OPEN.value:
                claim = Claim.GONE
            elif row[1] != token_hash:
                claim = Claim.ROTATED
            elif row[2] is None:   # the first use binds the token to this client token (or to none)
                db.execute(f"UPDATE tunnels SET {column}_client_hash=? WHERE tunnel_id=?", (client_hash, tunnel_id))
                claim = Claim.OK
            else:
                claim = Claim.OK if client_hash and row[2] == client_hash else Claim.USED
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return claim

    async def set_connect_state(self, tunnel_id: str, side: Side, connected: bool, when: float) -> None:
        column = "source" if side is Side.SOURCE else "device"
        self._db.execute(
            f"UPDATE tunnels SET {column}_connected=?, {column}_state_time=? WHERE tunnel_id=?",
            (int(connected), when, tunnel_id),
        )

    async def due_for_expiry(self, now: float) -> builtins.list[str]:
        rows = self._db.execute(
            "SELECT tunnel_id FROM tunnels WHERE status='OPEN' AND expires_at<=? ORDER BY expires_at",
            (now,),
        ).fetchall()
        return [r[0] for r in rows]

    async def count_by_status(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM tunnels GROUP BY status").fetchall()
        return {"OPEN": 0, "CLOSED": 0, **{status: n for status, n in rows}}

    async def purge_closed(self, closed_before: float) -> int:
        cur = self._db.execute(
            "DELETE FROM tunnels WHERE status='CLOSED' AND closed_time<?", (closed_before,)
        )
        return cur.rowcount

    async def queue_notify(self, tunnel_id: str, device_token: str) -> Tunnel | None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "UPDATE tunnels SET notify_status='PENDING' WHERE tunnel_id=? AND status='OPEN'", (tunnel_id,)
            )
            if cur.rowcount:
                db.execute("INSERT OR REPLACE INTO notify_outbox (tunnel_id, device_token) VALUES (?,?)",
                           (tunnel_id, device_token))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self._one("tunnel_id=?", (tunnel_id,)) if cur.rowcount else None

    async def pending_notifies(self, limit: int) -> builtins.list[PendingNotify]:
        rows = self._db.execute(
            "SELECT tunnel_id, device_token FROM notify_outbox WHERE delivered=0 ORDER BY rowid LIMIT ?", (limit,)
        ).fetchall()
        return [PendingNotify(tunnel_id, token) for tunnel_id, token in rows]

    async def notify_delivered(self, tunnel_id: str, device_token: str) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute("UPDATE notify_outbox SET delivered=1 WHERE tunnel_id=? AND device_token=?",
                             (tunnel_id, device_token))
            if cur.rowcount:
                db.execute("UPDATE tunnels SET notify_status='DELIVERED' WHERE tunnel_id=? AND status='OPEN'",
                           (tunnel_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.rowcount > 0   # the token stays in the outbox until its tunnel closes (renotify)

    async def renotify(self, device_id: str) -> builtins.list[str]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # The outbox holds only open tunnels: it is small, and is where the search starts.
            ids = [row[0] for row in db.execute(
                "SELECT o.tunnel_id FROM notify_outbox o JOIN tunnels t ON t.tunnel_id=o.tunnel_id"
                " WHERE o.delivered=1 AND t.device_id=? AND t.status='OPEN' AND t.device_connected=0"
                " ORDER BY o.rowid", (device_id,))]
            for tunnel_id in ids:
                db.execute("UPDATE notify_outbox SET delivered=0 WHERE tunnel_id=?", (tunnel_id,))
                db.execute("UPDATE tunnels SET notify_status='PENDING' WHERE tunnel_id=?", (tunnel_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids

    def _forget_deleted(self) -> None:
        """A device token left the outbox (its tunnel closed): secure_delete zeroed it in the page, but the WAL
        still holds earlier copies of that page. A checkpoint writes the zeroed page to the
        database and TRUNCATE empties the WAL. It costs an fsync or two (about 10 ms on a
        VM's disk, 100 times a delivery), so one checkpoint serves every delivery of the
        next SCRUB_DELAY seconds."""
        if self._scrub is None:
            self._scrub = asyncio.get_running_loop().call_later(SCRUB_DELAY, self._truncate_wal)

    def _truncate_wal(self) -> None:
        self._scrub = None
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:   # busy or closed: the next delivery schedules another
            log.warning("could not truncate the SQLite WAL: %s", exc)

    async def aclose(self) -> None:
        if self._scrub is not None:
            self._scrub.cancel()
            self._truncate_wal()
        self._db.close()

    # -- the audit trail and session recordings (relay/store/audit_sqlite.py) -------------

    async def append_audit(self, events: builtins.list[AuditEvent]) -> None:
        self._audit.append(events)

    async def query_audit(self, project_id: str, query: AuditQuery) -> AuditPage:
        return self._audit.query(project_id, query)

    async def purge_audit(self, before: float) -> int:
        return self._audit.purge(before)

    async def save_recording(self, recording: Recording) -> None:
        self._audit.save_recording(recording)

    async def get_recording(self, project_id: str, session_id: str) -> Recording | None:
        return self._audit.get_recording(project_id, session_id)

    async def list_recordings(self, project_id: str, query: RecordingQuery) -> RecordingPage:
        return self._audit.list_recordings(project_id, query)

    async def purge_recordings(self, before: float) -> int:
        return self._audit.purge_recordings(before)
