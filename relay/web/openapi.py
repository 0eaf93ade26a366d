"""The OpenAPI 3 document of the REST API, served at /openapi.json.

The schemas of the bodies and answers are made from the models of relay/web/models.py, the
same ones the requests are validated with; the paths and their operations are declared here,
once. schemathesis checks the document against the running server (tests/web/test_openapi.py).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from relay.audit import RECORD_ID_RE
from relay.config import Settings
from relay.web import models

TUNNEL_ID = models.schema_of(models.TunnelId)
DEVICE_ID = models.schema_of(models.DeviceId)


@cache
def _schemas() -> dict[str, Any]:
    return models.component_schemas(models.REQUESTS + models.ANSWERS)


def _error(description: str) -> dict[str, Any]:
    return _ok(description, models.Error)


def _ok(description: str, model: type[models.Answer]) -> dict[str, Any]:
    return {"description": description, "content": models.with_schema(model)("application/json")}


def _body(model: type[models.Request], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": models.with_schema(model)("application/json")}


COMMON_ERRORS = {
    "400": _error("Invalid request (error_code TUNNEL.4000xx)."),
    "401": _error("X-Auth-Token missing or unknown."),
    "403": _error("Token of another project, wrong Instance-Id, or quota reached."),
}
NOT_FOUND = {"404": _error("No such tunnel in this project.")}
PATH_PARAMS = [
    {"name": "project_id", "in": "path", "required": True,
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
    {"name": "Instance-Id", "in": "header", "required": False, "schema": {"type": "string"}},
]
TUNNEL_PARAM = {"name": "tunnel_id", "in": "path", "required": True, "schema": TUNNEL_ID}


def document(settings: Settings) -> dict[str, Any]:
    schemas = copy.deepcopy(_schemas())
    # expires_in's bounds are the relay's settings (models.CreateTunnelRequest takes them as its context)
    schemas["CreateTunnelRequest"]["properties"]["expires_in"]["anyOf"][0].update(
        minimum=settings.min_lifetime, maximum=settings.default_lifetime)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IoT tunnel relay API",
            "version": "1.0.0",
            "description": "Secure tunnels between applications and devices, compatible with the "
                           "Huawei IoTDA v5 tunnel API. Errors are {error_code, error_msg}; see docs/api.md.",
        },
        "servers": [{"url": settings.base_url}],
        "security": [{"apiToken": []}],
        "components": {
            "securitySchemes": {"apiToken": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}},
            "schemas": schemas,
        },
        "paths": {
            **AUDIT_PATHS,   # the audit trail and session recordings (docs/audit.md)
            "/v5/iot/{project_id}/tunnels": {
                "parameters": PATH_PARAMS,
                "post": {
                    "operationId": "createTunnel", "summary": "Create a tunnel to a device",
                    "requestBody": _body(models.CreateTunnelRequest),
                    "responses": {"201": _ok("Created; the device is notified.", models.CreateTunnelResponse),
                                  **COMMON_ERRORS,
                                  "409": _error("The device already has an open tunnel, or is offline.")},
                },
                "get": {
                    "operationId": "listTunnels", "summary": "List tunnels",
                    "parameters": models.query_parameters(models.ListTunnelsQuery),
                    "responses": {"200": _ok("A page of tunnels.", models.TunnelList), **COMMON_ERRORS},
                },
            },
            "/v5/iot/{project_id}/tunnels/batch-close": {
                "parameters": PATH_PARAMS,
                "post": {"operationId": "batchCloseTunnels", "summary": "Close several tunnels",
                         "requestBody": _body(models.BatchRequest),
                         "responses": {"200": _ok("A result per tunnel.", models.BatchResponse), **COMMON_ERRORS}},
            },
            "/v5/iot/{project_id}/tunnels/batch-delete": {
                "parameters": PATH_PARAMS,
                "post": {"operationId": "batchDeleteTunnels", "summary": "Delete several closed tunnels",
                         "requestBody": _body(models.BatchRequest),
                         "responses": {"200": _ok("A result per tunnel.", models.BatchResponse), **COMMON_ERRORS}},
            },
            "/v5/iot/{project_id}/tunnels/{tunnel_id}": {
                "parameters": [*PATH_PARAMS, TUNNEL_PARAM],
                "get": {"operationId": "showTunnel", "summary": "Show a tunnel",
                        "responses": {"200": _ok("The tunnel.", models.TunnelInfo), **COMMON_ERRORS, **NOT_FOUND}},
                "put": {"operationId": "closeTunnel", "summary": "Close a tunnel (final; its sockets are closed)",
                        "responses": {"204": {"description": "Closed."}, **COMMON_ERRORS, **NOT_FOUND}},
                "delete": {"operationId": "deleteTunnel", "summary": "Delete a closed tunnel",
                           "responses": {"204": {"description": "Deleted."}, **COMMON_ERRORS, **NOT_FOUND,
                                         "409": _error("The tunnel is still open.")}},
            },
            "/v5/iot/{project_id}/tunnels/{tunnel_id}/rotate-token": {
                "parameters": [*PATH_PARAMS, TUNNEL_PARAM],
                "post": {"operationId": "rotateTunnelTokens",
                         "summary": "Replace the source token, the device token or both",
                         "requestBody": _body(models.RotateRequest, required=False),
                         "responses": {"200": _ok("The new token(s).", models.RotateResponse), **COMMON_ERRORS,
                                       **NOT_FOUND, "409": _error("The tunnel is closed.")}},
            },
        },
    }


# -- the audit trail and session recordings (docs/audit.md, relay/web/audit_rest.py) -----------

SESSION_ID = {"type": "string", "pattern": RECORD_ID_RE.pattern}

AUDIT_PATHS: dict[str, Any] = {
    "/v5/iot/{project_id}/audit": {
        "parameters": PATH_PARAMS,
        "get": {
            "operationId": "listAuditEvents", "summary": "The project's audit trail, newest first",
            "parameters": models.query_parameters(models.AuditEventsQuery),
            "responses": {"200": _ok("A page of events.", models.AuditPage), **COMMON_ERRORS},
        },
    },
    "/v5/iot/{project_id}/recordings": {
        "parameters": PATH_PARAMS,
        "get": {
            "operationId": "listRecordings", "summary": "The project's session recordings, newest first",
            "parameters": models.query_parameters(models.RecordingsQuery),
            "responses": {"200": _ok("A page of recordings (without their data).", models.RecordingList), **COMMON_ERRORS},
        },
    },
    "/v5/iot/{project_id}/recordings/{session_id}": {
        "parameters": [*PATH_PARAMS, {"name": "session_id", "in": "path", "required": True, "schema": SESSION_ID}],
        "get": {
            "operationId": "getRecording", "summary": "A session recording, as an asciicast v2 file",
            "responses": {
                "200": {"description": "The recording (asciicast v2: a JSON header line, then one event a line).",
                        "content": {"application/x-asciicast": {"schema": {"type": "string"}}}},
                **COMMON_ERRORS,
                "404": _error("No such recording in this project."),
            },
        },
    },
}
