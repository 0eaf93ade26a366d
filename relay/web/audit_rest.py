"""The audit trail and session recordings over REST (docs/audit.md), and the audit log's
place in the app (`setup`, one call from relay/web/app.py).

    GET /v5/iot/{project_id}/audit?device_id=&tunnel_id=&event_type=a,b&since=&until=&limit=&marker=
    GET /v5/iot/{project_id}/recordings?device_id=&tunnel_id=&limit=&marker=
    GET /v5/iot/{project_id}/recordings/{session_id}        the .cast file (application/x-asciicast)

Authentication, error bodies and the rules for query parameters are the tunnel API's
(relay/web/rest.py): an API token of the project, 400 with the parameter named.
"""

from __future__ import annotations

import re

from aiohttp import web

from relay import errors
from relay.audit import DEFAULT_LIMIT, EVENT_TYPES, MAX_LIMIT, RECORD_ID_RE, AuditQuery, EventType, Marker, parse_time
from relay.auditlog import AuditLog
from relay.clock import Clock, format_time
from relay.config import Settings
from relay.recording import Recording, RecordingQuery
from relay.service import TunnelService
from relay.web import rest, validation

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)

CAST_TYPE = "application/x-asciicast"
MAX_RECORDING_LIMIT = 100
_MARKER_MAX = 120   # characters; a real marker is about 60


def setup(app: web.Application, service: TunnelService, settings: Settings, clock: Clock) -> AuditLog:
    """Create the audit log, give it to the service (whose hooks record through
    `service.audit`), add the routes, and run its writer and retention sweep with the app.
    Call it after the store's own cleanup context is added: the log is flushed before the
    store closes (cleanup contexts end in reverse order)."""
    audit = AuditLog.from_settings(service.store, clock, settings)
    service.audit = audit
    app[AUDIT] = audit
    add_routes(app)

    async def audit_log(app: web.Application):
        await audit.start()
        yield
        await audit.aclose()

    app.cleanup_ctx.append(audit_log)
    return audit


# -- query parameters -------------------------------------------------------------------------


def _reject_unknown(request: web.Request, known: set[str]) -> None:
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise errors.InvalidParameter(f"unknown query parameter(s) {', '.join(u[:40] for u in unknown)}; "
                                      f"allowed: {', '.join(sorted(known))}")


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise errors.InvalidParameter(f"{name} is given more than once")
    return values[0] if values else None


def _limit(request: web.Request, default: int, maximum: int) -> int:
    raw = _one(request, "limit")
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise errors.InvalidParameter("limit must be a whole number")
    value = int(raw)
    if not 1 <= value <= maximum:
        raise errors.InvalidParameter(f"limit must be between 1 and {maximum}")
    return value


def _time(request: web.Request, name: str) -> float | None:
    raw = _one(request, name)
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except (ValueError, OverflowError):
        raise errors.InvalidParameter(
            f"{name} must be a UTC time like 20261124T161807Z or 2026-11-24T16:18:07Z") from None


def _marker(request: web.Request) -> Marker | None:
    raw = _one(request, "marker")
    if raw is None:
        return None
    try:
        if len(raw) > _MARKER_MAX:
            raise ValueError
        return Marker.decode(raw)
    except ValueError:
        raise errors.InvalidParameter("marker must be the marker of a previous answer") from None


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    device = _one(request, "device_id")
    tunnel = _one(request, "tunnel_id")
    return (validation.device_id(device) if device is not None else None,
            validation.tunnel_id(tunnel) if tunnel is not None else None)


def audit_query(request: web.Request) -> AuditQuery:
    _reject_unknown(request, {"device_id", "tunnel_id", "event_type", "since", "until", "limit", "marker"})
    device_id, tunnel_id = _filters(request)
    kinds: set[EventType] = set()
    for raw in request.query.getall("event_type", []):
        for name in raw.split(","):
            if name not in EVENT_TYPES:
                raise errors.InvalidParameter(
                    f"event_type {name[:40]!r} is not an audit event type; known: {', '.join(sorted(EVENT_TYPES))}")
            kinds.add(EventType(name))
    since, until = _time(request, "since"), _time(request, "until")   # since after until: nothing matches
    return AuditQuery(device_id=device_id, tunnel_id=tunnel_id, events=frozenset(kinds), since=since, until=until,
                      limit=_limit(request, DEFAULT_LIMIT, MAX_LIMIT), marker=_marker(request))


def recording_info(recording: Recording) -> dict:
    return {"session_id": recording.session_id, "tunnel_id": recording.tunnel_id,
            "device_id": recording.device_id, "username": recording.username,
            "started": format_time(recording.started), "ended": format_time(recording.ended),
            "duration": round(recording.ended - recording.started, 3), "truncated": recording.truncated,
            "size": recording.size}


# -- handlers ---------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    project_id = rest.authorize(request)
    query = audit_query(request)
    page = await request.app[rest.SERVICE].store.query_audit(project_id, query)
    return rest.json_response(page.to_json())


async def list_recordings(request: web.Request) -> web.Response:
    project_id = rest.authorize(request)
    _reject_unknown(request, {"device_id", "tunnel_id", "limit", "marker"})
    device_id, tunnel_id = _filters(request)
    query = RecordingQuery(device_id=device_id, tunnel_id=tunnel_id,
                           limit=_limit(request, DEFAULT_LIMIT, MAX_RECORDING_LIMIT), marker=_marker(request))
    page = await request.app[rest.SERVICE].store.list_recordings(project_id, query)
    return rest.json_response({"recordings": [recording_info(r) for r in page.recordings],
                               "count": len(page.recordings),
                               "marker": page.marker.encode() if page.marker else None})


async def get_recording(request: web.Request) -> web.Response:
    project_id = rest.authorize(request)
    _reject_unknown(request, set())
    session_id = request.match_info["session_id"]
    if not RECORD_ID_RE.fullmatch(session_id):
        raise errors.InvalidParameter("session_id must be 1-64 letters, digits and '-'")
    recording = await request.app[rest.SERVICE].store.get_recording(project_id, session_id)
    if recording is None:
        # Another project's recording is reported as missing, like another project's tunnel.
        raise errors.RecordingNotFound(f"no recording {session_id!r} in project {project_id!r}")
    return web.Response(body=recording.data, content_type=CAST_TYPE, charset="utf-8", headers={
        "Content-Disposition": f'inline; filename="{session_id}.cast"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    })


def add_routes(app: web.Application) -> None:
    base = "/v5/iot/{project_id}"
    app.router.add_get(base + "/audit", list_audit, allow_head=False)
    app.router.add_get(base + "/recordings", list_recordings, allow_head=False)
    app.router.add_get(base + "/recordings/{session_id}", get_recording, allow_head=False)

