"""What passes through a tunnel that the audit trail cares about: SSH logins, forwarded TCP
connections, and, when recording is on, the `ssh` session itself (docs/audit.md).

Sans-I/O. The relay never parses relayed traffic on its hot path: the codec's decoders are
told which operation types to *note* (a login, a forwarded connection opening or closing,
and only for recorded tunnels the terminal traffic), and hand just those messages to
`SessionWatcher.observe`. Everything else goes from socket to socket untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.audit import ACTOR_SOURCE, EventType
from relay.clock import Clock
from relay.envelope import parse
from relay.ends.huawei_tcp import requested_port, valid_connection_id
from relay.model import Side
from relay.recording import Recording, TunnelTap

# What each side's decoder notes, always (logins, forwarded connections) ...
AUDITED = {
    Side.SOURCE: frozenset({"connect", "forward_open", "forward_close"}),
    Side.DEVICE: frozenset({"connect_response", "forward_open_response", "forward_close"}),
}
# ... and for recorded tunnels, the terminal traffic and the end of a session too.
RECORDED = {
    Side.SOURCE: frozenset({"command", "disconnect"}),
    Side.DEVICE: frozenset({"command_response", "disconnect"}),
}
# What one tunnel's watcher keeps is bounded in count and in size, whatever its ends send
# (docs/security.md): request ids are at most 128 bytes (the codec refuses longer ones),
# user names are cut to 64 characters, a port is kept only as an integer in 1..65535.
MAX_PENDING = 64         # logins, and forward opens, waiting for an answer, per tunnel (the oldest goes first)
MAX_OPEN_FORWARDS = 256  # forwarded connections whose close is audited, per tunnel
MAX_USERNAME = 64
_NOTED = {False: AUDITED, True: {side: AUDITED[side] | RECORDED[side] for side in Side}}

Emit = Callable[[EventType, str, str, dict[str, Any]], None]   # (event, actor, outcome, detail)


_CLOSED_BY = {Side.SOURCE: 1, Side.DEVICE: 2}


class _Forward:
    """A forwarded connection: its port (an int in range, or None) and which halves closed."""

    __slots__ = ("port", "open", "closed_by")

    def __init__(self, port: int | None) -> None:
        self.port = port
        self.open = False
        self.closed_by = 0   # bits of _CLOSED_BY


class TunnelAudit:
    """A tunnel's link to the audit trail, as small as can be: most tunnels sit idle, and an
    idle tunnel must cost little memory (docs/architecture.md). The SessionWatcher is made by
    `make` when the first noted message comes."""

    __slots__ = ("project_id", "tunnel_id", "device_id", "record", "make", "watcher", "source_actor")

    def __init__(self, project_id: str, tunnel_id: str, device_id: str, record: bool,
                 make: Callable[[TunnelAudit], SessionWatcher]) -> None:
        self.project_id = project_id
        self.tunnel_id = tunnel_id
        self.device_id = device_id
        self.record = record
        self.make = make
        self.watcher: SessionWatcher | None = None
        self.source_actor = ACTOR_SOURCE   # who acts through the current source connection (Hub.attach)

    def noted(self, side: Side) -> frozenset[str]:
        return _NOTED[self.record][side]

    def observer(self, side: Side) -> Callable[[bytes], None]:
        """What the decoder of `side` calls with each noted message."""
        return self.observe_source if side is Side.SOURCE else self.observe_device

    def observe_source(self, payload: bytes) -> None:
        self._watcher().observe(Side.SOURCE, payload)

    def observe_device(self, payload: bytes) -> None:
        self._watcher().observe(Side.DEVICE, payload)

    def side_left(self, side: Side) -> None:
        if self.watcher is not None:
            self.watcher.side_left(side)

    def _watcher(self) -> SessionWatcher:
        if self.watcher is None:
            self.watcher = self.make(self)
        return self.watcher


class SessionWatcher:
    """One tunnel's logins and forwarded connections (as audit events), and its ssh sessions'
    recordings when `tap` is given (the tunnel is recorded). One per tunnel with connections
    on this relay, idle ones included: kept small (slots, dicts made on first use)."""

    __slots__ = ("project_id", "tunnel_id", "device_id", "clock", "emit", "save", "tap", "_logins", "_forwards")

    def __init__(self, project_id: str, tunnel_id: str, device_id: str, *, clock: Clock, emit: Emit,
                 save: Callable[[Recording], None], tap: TunnelTap | None = None) -> None:
        self.project_id = project_id
        self.tunnel_id = tunnel_id
        self.device_id = device_id
        self.clock = clock
        self.emit = emit
        self.save = save
        self.tap = tap
        self._logins: dict[str, str] | None = None           # request_id of a `connect` -> its username
        self._forwards: dict[str, _Forward] | None = None    # connection id -> state (pending and open)

    @property
    def logins(self) -> dict[str, str]:
        if self._logins is None:
            self._logins = {}
        return self._logins

    @property
    def forwards(self) -> dict[str, _Forward]:
        if self._forwards is None:
            self._forwards = {}
        return self._forwards

    def noted(self, side: Side) -> frozenset[str]:
        """The operation types the decoder of `side` must hand to `observe`."""
        return AUDITED[side] | RECORDED[side] if self.tap is not None else AUDITED[side]

    # -- messages --------------------------------------------------------------------------

    def observe(self, side: Side, payload: bytes) -> None:
        """One message the decoder of `side` forwarded to the peer (already checked by it)."""
        message = parse(payload)
        if message is None:
            return
        if self.tap is not None:
            self._keep(self.tap.handle(side.value, message, self.clock.now()))
        op, rid, data = message.get("operation_type"), message.get("request_id"), message.get("data")
        if op == "connect" and message.get("tunnel_service_type") == "ssh":
            self._login_started(rid, data)
        elif op == "connect_response":
            self._login_answered(rid, data)
        elif op == "forward_open":
            self._forward_requested(rid, data)
        elif op == "forward_open_response":
            self._forward_answered(rid, data)
        elif op == "forward_close":
            self._forward_closed(side, rid, data)

    def side_left(self, side: Side) -> None:
        """A connection of `side` ended (left, evicted, closed): whatever ran over it is over."""
        if self.tap is not None:
            self._keep(self.tap.end(self.clock.now()))
        for rid in list(self._forwards or ()):
            self._end_forward(rid, f"the {side.value} left")
        self._logins = self._forwards = None

    def _keep(self, recording: Recording | None) -> None:
        """A finished recording goes to the store (which then records `session_recorded`)."""
        if recording is not None:
            self.save(recording)

    # -- SSH logins ----------------------------------------------------------------------------

    def _login_started(self, rid: Any, data: Any) -> None:
        username = data.get("username") if isinstance(data, dict) else None
        if not _trackable(rid):
            return
        if len(self.logins) >= MAX_PENDING:
            self.logins.pop(next(iter(self.logins)))
        self.logins[rid] = username[:MAX_USERNAME] if isinstance(username, str) else ""

    def _login_answered(self, rid: Any, data: Any) -> None:
        if not isinstance(rid, str) or rid not in self.logins:
            return
        username = self.logins.pop(rid)
        status = _status(data)
        if status == "200":
            self.emit(EventType.SSH_LOGIN_SUCCEEDED, ACTOR_SOURCE, "ok", {"username": username})
            return
        message = data.get("status_msg") if isinstance(data, dict) else None
        detail: dict[str, Any] = {"username": username, "status_code": status}
        if isinstance(message, str):
            detail["status_msg"] = message[:200]
        self.emit(EventType.SSH_LOGIN_FAILED, ACTOR_SOURCE, status, detail)

    # -- forwarded connections -----------------------------------------------------------------

    def _forward_requested(self, rid: Any, data: Any) -> None:
        if not _trackable(rid) or rid in self.forwards:
            return
        pending = [key for key, forward in self.forwards.items() if not forward.open]
        if len(pending) >= MAX_PENDING:   # the oldest unanswered open is no longer awaited
            del self.forwards[pending[0]]
        self.forwards[rid] = _Forward(requested_port(data))

    def _forward_answered(self, rid: Any, data: Any) -> None:
        forward = self.forwards.get(rid) if isinstance(rid, str) else None
        if forward is None or forward.open:
            return
        status = _status(data)
        detail: dict[str, Any] = {"connection_id": rid, "port": forward.port}
        if status != "200":
            del self.forwards[rid]
            self.emit(EventType.FORWARD_OPENED, ACTOR_SOURCE, status, detail)
            return
        if sum(1 for f in self.forwards.values() if f.open) >= MAX_OPEN_FORWARDS:
            # Its opening is audited, its close cannot be: the watcher keeps no more.
            del self.forwards[rid]
            detail["close_audited"] = False
        else:
            forward.open = True
        self.emit(EventType.FORWARD_OPENED, ACTOR_SOURCE, "ok", detail)

    def _forward_closed(self, side: Side, rid: Any, data: Any) -> None:
        forward = self.forwards.get(rid) if isinstance(rid, str) else None
        if forward is None:
            return
        why = data.get("status_msg") if isinstance(data, dict) else None
        forward.closed_by |= _CLOSED_BY[side]
        # Both halves closed (eof each way), or one end aborted: the connection is over.
        if forward.closed_by == 3 or not (isinstance(why, str) and why == "eof"):
            self._end_forward(rid, why if isinstance(why, str) else "closed")

    def _end_forward(self, rid: str, why: str) -> None:
        forward = self.forwards.pop(rid, None)
        if forward is not None and forward.open:
            self.emit(EventType.FORWARD_CLOSED, ACTOR_SOURCE, "ok",
                      {"connection_id": rid, "port": forward.port, "reason": why[:200]})


def _trackable(rid: Any) -> bool:
    """A request id the watcher may keep: a string of 1 to 128 bytes, as the codec requires
    of every message (checked again here: a watcher never keeps more than that)."""
    return isinstance(rid, str) and len(rid) <= 128 and valid_connection_id(rid)


def _status(data: Any) -> str:
    """An answer's status_code as a short string ("none" when it has none): a device chooses
    it, and the audit trail keeps it."""
    status = data.get("status_code") if isinstance(data, dict) else None
    if isinstance(status, bool) or not isinstance(status, (str, int)):
        return "none"
    return str(status)[:8]
