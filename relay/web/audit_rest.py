"""The audit trail and session recordings over REST (docs/audit.md), and the audit log's
place in the app (`setup`, one call from relay/web/app.py).

    GET /v5/iot/{project_id}/audit?device_id=&tunnel_id=&event_type=a,b&since=&until=&limit=&marker=
    GET /v5/iot/{project_id}/recordings?device_id=&tunnel_id=&limit=&marker=
    GET /v5/iot/{project_id}/recordings/{session_id}        the .cast file (application/x-asciicast)

Authentication, error bodies and the rules for query parameters are the tunnel API's
(relay/web/rest.py): an API token of the project, 400 with the parameter named. The queries'
shapes and messages are declared in relay/web/models.py (AuditEventsQuery, RecordingsQuery).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import errors
from relay.audit import RECORD_ID_RE, AuditQuery, EventType, Marker, parse_time
from relay.auditlog import AuditLog
from relay.clock import Clock, format_time
from relay.config import Settings
from relay.recording import Recording, RecordingQuery
from relay.service import TunnelService
from relay.web import models, rest
from relay.web.models import RequestT

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)

CAST_TYPE = "application/x-asciicast"


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


# -- query parameters (declared in relay/web/models.py) -----------------------------------------


def _query(request: web.Request, model: type[RequestT]) -> RequestT:
    """The query, checked by its model: a parameter given more than once comes as a list (and
    is refused), event_type's values are joined (each may list several, separated by commas)."""
    values: dict[str, Any] = {}
    for name in request.query:
        given = request.query.getall(name)
        values[name] = ",".join(given) if name == "event_type" else given[0] if len(given) == 1 else given
    return models.parse(model, values)


def _marker(raw: str | None) -> Marker | None:
    return Marker.decode(raw) if raw is not None else None


def audit_query(request: web.Request) -> AuditQuery:
    query = _query(request, models.AuditEventsQuery)
    kinds = frozenset(EventType(name) for name in query.event_type.split(",")) if query.event_type is not None else frozenset()
    return AuditQuery(device_id=query.device_id, tunnel_id=query.tunnel_id, events=kinds,
                      since=parse_time(query.since) if query.since is not None else None,
                      until=parse_time(query.until) if query.until is not None else None,   # since after until: nothing matches
                      limit=query.limit, marker=_marker(query.marker))


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
    checked = _query(request, models.RecordingsQuery)
    query = RecordingQuery(device_id=checked.device_id, tunnel_id=checked.tunnel_id, limit=checked.limit,
                           marker=_marker(checked.marker))
    page = await request.app[rest.SERVICE].store.list_recordings(project_id, query)
    return rest.json_response({"recordings": [recording_info(r) for r in page.recordings],
                               "count": len(page.recordings),
                               "marker": page.marker.encode() if page.marker else None})


async def get_recording(request: web.Request) -> web.Response:
    project_id = rest.authorize(request)
    _query(request, models.NoQuery)
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

