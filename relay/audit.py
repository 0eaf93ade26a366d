"""The audit trail's vocabulary: what happened, to which tunnel or device, by whom.

The bottom layer: standard library only (and the relay's own clock formatting). The events
are written by `relay.auditlog.AuditLog` (in the background, off the hot path), kept by the
store (`append_audit`, `query_audit`, `purge_audit`) and read through
`GET /v5/iot/{project_id}/audit` (docs/audit.md).

What an event never holds: a token (of any kind), a password, terminal data. `actor` is the
NAME of the API token that acted (from `PROJECT:NAME:TOKEN`), or one of the fixed actors
below for what the ends of a tunnel and the relay itself do. What a source connection does
(connects, logs in, forwards) is carried out for the API token that issued its source token,
so its events name that token (`source_actor`).
"""

from __future__ import annotations

import calendar
import dataclasses
import enum
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

from relay.clock import format_time


class EventType(str, enum.Enum):
    # the control plane (REST calls and the relay's own sweeps)
    TUNNEL_CREATED = "tunnel_created"
    TUNNEL_CLOSED = "tunnel_closed"
    TUNNEL_EXPIRED = "tunnel_expired"
    TUNNEL_DELETED = "tunnel_deleted"
    TOKENS_ROTATED = "tokens_rotated"
    BATCH_CLOSE = "batch_close"          # one per batch call; detail: ids and per-id outcome
    BATCH_DELETE = "batch_delete"
    NOTIFY_DELIVERED = "notify_delivered"
    # the data plane: the ends of a tunnel
    SOURCE_CONNECTED = "source_connected"
    SOURCE_DISCONNECTED = "source_disconnected"
    SOURCE_EVICTED = "source_evicted"
    DEVICE_CONNECTED = "device_connected"
    DEVICE_DISCONNECTED = "device_disconnected"
    DEVICE_EVICTED = "device_evicted"
    # what travels through a tunnel
    SSH_LOGIN_SUCCEEDED = "ssh_login_succeeded"
    SSH_LOGIN_FAILED = "ssh_login_failed"
    FORWARD_OPENED = "forward_opened"
    FORWARD_CLOSED = "forward_closed"
    SESSION_RECORDED = "session_recorded"   # detail: session_id (GET .../recordings/{session_id})
    # the trail itself
    EVENTS_LIMITED = "audit_events_limited"  # detail: dropped (events over the project's rate bound), since


EVENT_TYPES: frozenset[str] = frozenset(e.value for e in EventType)

# Actors that are not API tokens.
ACTOR_SOURCE = "source"
ACTOR_DEVICE = "device"
ACTOR_RELAY = "relay"
FIXED_ACTORS = frozenset({ACTOR_SOURCE, ACTOR_DEVICE, ACTOR_RELAY})


def token_actor(actor: str) -> str | None:
    """`actor` when it is an API token's NAME (to keep with the source token it issued), else None."""
    return None if actor in FIXED_ACTORS else actor


def source_actor(issuer: str | None) -> str:
    """Who acts through a source connection: the NAME of the API token that issued its source
    token (created the tunnel or last rotated that token), or `source` when none is known."""
    return issuer or ACTOR_SOURCE

OK = "ok"

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

EVENT_ID_RE = re.compile(r"^[0-9a-f]{32}$", re.ASCII)
RECORD_ID_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$", re.ASCII)     # what a marker may carry: event and session ids
_MARKER_TIME = re.compile(r"\d{1,20}(\.\d{1,20})?(e[+-]?\d{1,2})?", re.ASCII)   # repr() of a float >= 0


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    event_id: str                 # 32 hex digits, unique (a random UUID)
    time: float                   # seconds since the epoch
    project_id: str
    event: EventType
    actor: str                    # an API token's NAME, or "source" / "device" / "relay"
    tunnel_id: str | None = None
    device_id: str | None = None
    outcome: str = OK             # "ok", or an error code / a short word
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # JSON-able extras

    @classmethod
    def new(cls, project_id: str, event: EventType | str, *, time: float, actor: str,
            tunnel_id: str | None = None, device_id: str | None = None, outcome: str = OK,
            detail: Mapping[str, Any] | None = None) -> AuditEvent:
        return cls(new_event_id(), time, project_id, EventType(event), actor, tunnel_id, device_id,
                   outcome, dict(detail or {}))

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "event_id": self.event_id,
            "time": format_time(self.time),
            "timestamp": self.time,
            "event": self.event.value,
            "actor": self.actor,
            "tunnel_id": self.tunnel_id,
            "device_id": self.device_id,
            "outcome": self.outcome,
            "detail": dict(self.detail),
        }

    def to_record(self) -> dict[str, Any]:
        """Every field, for a store that keeps events as JSON documents."""
        return {"event_id": self.event_id, "time": self.time, "project_id": self.project_id,
                "event": self.event.value, "actor": self.actor, "tunnel_id": self.tunnel_id,
                "device_id": self.device_id, "outcome": self.outcome, "detail": dict(self.detail)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEvent:
        return cls(record["event_id"], float(record["time"]), record["project_id"], EventType(record["event"]),
                   record["actor"], record.get("tunnel_id"), record.get("device_id"),
                   record.get("outcome") or OK, dict(record.get("detail") or {}))


# -- queries --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """Where a page stopped: the (time, event_id) of its last event (for recordings: the
    (started, session_id)). Pages go newest first, ordered by time then id (both
    descending), so a marker is stable whatever is appended meanwhile."""

    time: float
    event_id: str

    def encode(self) -> str:
        return f"{self.time!r}_{self.event_id}"

    @classmethod
    def decode(cls, text: str) -> Marker:
        """Raises ValueError when `text` is not a marker this module made."""
        head, sep, event_id = text.rpartition("_")
        if not sep or not RECORD_ID_RE.fullmatch(event_id) or not _MARKER_TIME.fullmatch(head):
            raise ValueError("not an audit page marker")
        time = float(head)
        if not math.isfinite(time):
            raise ValueError("not an audit page marker")
        return cls(time, event_id)

    def after(self, time: float, event_id: str) -> bool:
        """Whether an event sorts after this marker (so belongs to the following pages)."""
        return time < self.time or (time == self.time and event_id < self.event_id)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditQuery:
    device_id: str | None = None
    tunnel_id: str | None = None
    events: frozenset[EventType] = frozenset()   # empty: every type
    since: float | None = None                   # time >= since
    until: float | None = None                   # time < until
    limit: int = DEFAULT_LIMIT                   # 1..MAX_LIMIT
    marker: Marker | None = None                 # the page starts after this event

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")

    def matches(self, event: AuditEvent) -> bool:
        """The filter, for stores that filter in Python (the marker excepted)."""
        return ((self.device_id is None or event.device_id == self.device_id)
                and (self.tunnel_id is None or event.tunnel_id == self.tunnel_id)
                and (not self.events or event.event in self.events)
                and (self.since is None or event.time >= self.since)
                and (self.until is None or event.time < self.until))


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[AuditEvent]
    marker: Marker | None      # pass back for the next page; None: this was the last page

    def to_json(self) -> dict[str, Any]:
        return {"events": [e.to_json() for e in self.events], "count": len(self.events),
                "marker": self.marker.encode() if self.marker else None}


def page_of(candidates: list[AuditEvent], limit: int) -> AuditPage:
    """A page from up to limit+1 matching events, newest first: the extra one only says that
    there is a next page."""
    events = candidates[:limit]
    more = len(candidates) > limit
    return AuditPage(events, Marker(events[-1].time, events[-1].event_id) if more and events else None)


# -- times in queries -----------------------------------------------------------------------

# The API's own format (20261124T161807Z), or the extended ISO-8601 form in UTC
# (2026-11-24T16:18:07[.123]Z). Days, hours, minutes and seconds past their range roll over
# (Feb 30 is Mar 2), as calendar.timegm does; the OpenAPI document states this pattern.
TIME_PATTERN = (r"^(?:[1-9]\d{3}(?:0[1-9]|1[0-2])\d{2}T\d{6}Z"
                r"|[1-9]\d{3}-(?:0[1-9]|1[0-2])-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]00:00))$")
_TIME = re.compile(TIME_PATTERN, re.ASCII)


def parse_time(text: str) -> float:
    """Seconds since the epoch of a time in TIME_PATTERN; raises ValueError otherwise."""
    if not _TIME.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not a UTC time like 20261124T161807Z")
    whole, _, rest = text.partition(".")
    digits = re.sub(r"\D", "", whole)
    fields = (int(digits[0:4]), int(digits[4:6]), int(digits[6:8]),
              int(digits[8:10]), int(digits[10:12]), int(digits[12:14]))
    fraction = float("0." + re.match(r"\d*", rest).group()) if rest else 0.0   # type: ignore[union-attr]
    return float(calendar.timegm(fields)) + fraction
