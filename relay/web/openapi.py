"""The OpenAPI 3 document of the REST API, served at /openapi.json.

Kept next to the handlers and checked against the running server by schemathesis
(tests/web/test_openapi.py), so it cannot drift from what the server does.
"""

from __future__ import annotations

import copy
from typing import Any

from relay.config import Settings
from relay.audit import DEFAULT_LIMIT, EVENT_TYPES, MAX_LIMIT, RECORD_ID_RE, TIME_PATTERN
from relay.web import validation

TIME = {"type": ["string", "null"], "pattern": r"^\d{8}T\d{6}Z$", "description": "UTC, yyyyMMdd'T'HHmmss'Z'"}
TUNNEL_ID = {"type": "string", "format": "uuid", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
DEVICE_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "minLength": 1, "maxLength": 128}
PROTOCOL = {"enum": ["huawei", "aws"],
            "description": "The data-plane protocol: Huawei IoTDA v5 (docs/protocol.md) or AWS IoT Secure Tunneling (docs/aws.md)."}
SERVICES = {"type": "array", "minItems": 1, "maxItems": validation.MAX_SERVICES, "uniqueItems": True,
            "items": {"type": "string", "pattern": validation.SERVICE_ID_RE.pattern, "minLength": 1, "maxLength": 128},
            "description": "AWS service ids (DestinationConfig.services), announced to both ends in SERVICE_IDS."}

CONNECT_STATE = {
    "type": "object",
    "required": ["status", "last_update_time"],
    "properties": {"status": {"enum": ["CONNECTED", "DISCONNECTED"]}, "last_update_time": TIME},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error_code", "error_msg"],
        "properties": {"error_code": {"type": "string"}, "error_msg": {"type": "string"}},
    },
    "TunnelInfo": {
        "type": "object",
        "required": ["tunnel_id", "device_id", "status", "create_time", "closed_time", "expires_at",
                     "source_connect_state", "device_connect_state"],
        "properties": {
            "tunnel_id": TUNNEL_ID,
            "device_id": {"type": "string"},
            "status": {"enum": ["OPEN", "CLOSED"]},
            "create_time": TIME,
            "closed_time": TIME,
            "expires_at": TIME,
            "close_reason": {"enum": ["closed", "expired", None]},
            "description": {"type": ["string", "null"]},
            "custom_info": {"type": ["string", "null"]},
            "source_connect_state": CONNECT_STATE,
            "device_connect_state": CONNECT_STATE,
            "notify_status": {"enum": ["PENDING", "DELIVERED", None],
                              "description": "The MQTT tunnel notify to the device: PENDING (waiting in the "
                                             "outbox for the broker), DELIVERED (acknowledged by the broker), "
                                             "null (none: no broker, or the tunnel closed before delivery)."},
            "protocol": PROTOCOL,
            "services": {"anyOf": [SERVICES, {"type": "null"}],
                         "description": "The AWS service ids of an aws tunnel; null for a huawei tunnel."},
            "record_session": {"type": "boolean",
                               "description": "Whether this tunnel's ssh sessions are recorded (docs/audit.md)."},
        },
    },
    "CreateTunnelRequest": {
        "type": "object",
        "required": ["device_id"],
        "additionalProperties": False,
        "properties": {
            "device_id": DEVICE_ID,
            "description": {"type": ["string", "null"], "maxLength": validation.MAX_DESCRIPTION},
            "custom_info": {"type": ["string", "null"], "maxLength": validation.MAX_CUSTOM_INFO,
                            "description": "Sent to the device with the tunnel notify."},
            "expires_in": {"type": ["integer", "null"], "description": "Lifetime in seconds (default and maximum: the relay's default lifetime)."},
            "protocol": {"anyOf": [PROTOCOL, {"type": "null"}], "description": "huawei (the default) or aws."},
            "services": {"anyOf": [SERVICES, {"type": "null"}],
                         "description": "Required for protocol aws (1-3 AWS service ids); refused for huawei."},
            "record_session": {"type": ["boolean", "null"],
                               "description": "Record this tunnel's ssh sessions (huawei tunnels; docs/audit.md). "
                                              "Projects named in --record-projects are always recorded."},
        },
        # services: required (a list) for aws, absent or null for huawei.
        "if": {"required": ["protocol"], "properties": {"protocol": {"const": "aws"}}},
        "then": {"required": ["services"],
                 "properties": {"services": SERVICES, "record_session": {"enum": [False, None]}}},
        "else": {"properties": {"services": {"type": "null"}}},
    },
    "CreateTunnelResponse": {
        "type": "object",
        "required": ["tunnel_id", "tunnel_access_token", "expires_in", "tunnel_uri"],
        "properties": {
            "tunnel_id": TUNNEL_ID,
            "tunnel_access_token": {"type": "string", "description": "The source (application) token."},
            "expires_in": {"type": "integer"},
            "tunnel_uri": {"type": "string", "pattern": "^wss?://"},
            "device_access_token": {"type": "string", "description": "The device token (unless the relay hides it)."},
            "device_tunnel_uri": {"type": "string", "pattern": "^wss?://"},
            "protocol": PROTOCOL,
            "services": SERVICES,
            "source_access_token": {"type": "string", "description": "aws tunnels: the source token (AWS's name)."},
            "destination_access_token": {"type": "string",
                                         "description": "aws tunnels: the destination (device) token, unless hidden."},
        },
    },
    "TunnelList": {
        "type": "object",
        "required": ["tunnels", "page"],
        "properties": {
            "tunnels": {"type": "array", "items": {"$ref": "#/components/schemas/TunnelInfo"}},
            "page": {
                "type": "object",
                "required": ["count", "marker"],
                "properties": {"count": {"type": "integer", "minimum": 0}, "marker": {"type": ["string", "null"]}},
            },
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["tunnel_ids"],
        "additionalProperties": False,
        "properties": {"tunnel_ids": {"type": "array", "items": TUNNEL_ID, "minItems": 1,
                                      "maxItems": validation.MAX_BATCH, "uniqueItems": True}},
    },
    "BatchResponse": {
        "type": "object",
        "required": ["results", "success_count", "failure_count"],
        "properties": {
            "results": {"type": "array", "items": {
                "type": "object",
                "required": ["tunnel_id", "result"],
                "properties": {"tunnel_id": {"type": "string"}, "result": {"enum": ["SUCCESS", "FAILED"]},
                               "error_code": {"type": "string"}, "error_msg": {"type": "string"}},
            }},
            "success_count": {"type": "integer"},
            "failure_count": {"type": "integer"},
        },
    },
    "RotateRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"side": {"enum": ["source", "device", "all"]}},
    },
    "RotateResponse": {
        "type": "object",
        "required": ["tunnel_id", "expires_in"],
        "properties": {"tunnel_id": TUNNEL_ID, "expires_in": {"type": "integer"},
                       "tunnel_access_token": {"type": "string"}, "device_access_token": {"type": "string"}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


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
    schemas = copy.deepcopy({**SCHEMAS, **AUDIT_SCHEMAS})
    schemas["CreateTunnelRequest"]["properties"]["expires_in"].update(
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
                    "requestBody": _body("CreateTunnelRequest"),
                    "responses": {"201": _ok("Created; the device is notified.", "CreateTunnelResponse"),
                                  **COMMON_ERRORS,
                                  "409": _error("The device already has an open tunnel, or is offline.")},
                },
                "get": {
                    "operationId": "listTunnels", "summary": "List tunnels",
                    "parameters": [
                        {"name": "device_id", "in": "query", "schema": DEVICE_ID},
                        {"name": "status", "in": "query", "schema": {"enum": ["OPEN", "CLOSED"]}},
                        {"name": "tunnel_id", "in": "query", "schema": TUNNEL_ID},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": validation.MAX_LIST_LIMIT, "default": 10}},
                        {"name": "marker", "in": "query", "schema": {"type": "string", "pattern": r"^\d{1,18}$"}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": validation.MAX_OFFSET}},
                    ],
                    "responses": {"200": _ok("A page of tunnels.", "TunnelList"), **COMMON_ERRORS},
                },
            },
            "/v5/iot/{project_id}/tunnels/batch-close": {
                "parameters": PATH_PARAMS,
                "post": {"operationId": "batchCloseTunnels", "summary": "Close several tunnels",
                         "requestBody": _body("BatchRequest"),
                         "responses": {"200": _ok("A result per tunnel.", "BatchResponse"), **COMMON_ERRORS}},
            },
            "/v5/iot/{project_id}/tunnels/batch-delete": {
                "parameters": PATH_PARAMS,
                "post": {"operationId": "batchDeleteTunnels", "summary": "Delete several closed tunnels",
                         "requestBody": _body("BatchRequest"),
                         "responses": {"200": _ok("A result per tunnel.", "BatchResponse"), **COMMON_ERRORS}},
            },
            "/v5/iot/{project_id}/tunnels/{tunnel_id}": {
                "parameters": [*PATH_PARAMS, TUNNEL_PARAM],
                "get": {"operationId": "showTunnel", "summary": "Show a tunnel",
                        "responses": {"200": _ok("The tunnel.", "TunnelInfo"), **COMMON_ERRORS, **NOT_FOUND}},
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
                         "requestBody": _body("RotateRequest", required=False),
                         "responses": {"200": _ok("The new token(s).", "RotateResponse"), **COMMON_ERRORS,
                                       **NOT_FOUND, "409": _error("The tunnel is closed.")}},
            },
        },
    }


# -- the audit trail and session recordings (docs/audit.md, relay/web/audit_rest.py) -----------

MARKER = {"type": "string", "pattern": r"^\d{1,20}(\.\d{1,20})?(e[+-]?\d{1,2})?_[0-9A-Za-z-]{1,64}$",
          "description": "The marker of the previous answer: the next page starts after it."}
SESSION_ID = {"type": "string", "pattern": RECORD_ID_RE.pattern}
_EVENT_NAMES = "|".join(sorted(EVENT_TYPES))
QUERY_TIME = {"type": "string", "pattern": TIME_PATTERN,
              "description": "UTC: 20261124T161807Z, or 2026-11-24T16:18:07[.123]Z"}

AUDIT_SCHEMAS: dict[str, Any] = {
    "AuditEvent": {
        "type": "object",
        "required": ["event_id", "time", "timestamp", "event", "actor", "tunnel_id", "device_id", "outcome", "detail"],
        "properties": {
            "event_id": {"type": "string"},
            "time": {"type": "string", "pattern": r"^\d{8}T\d{6}Z$"},
            "timestamp": {"type": "number", "description": "The same time in seconds since the epoch, to the microsecond."},
            "event": {"enum": sorted(EVENT_TYPES)},
            "actor": {"type": "string", "description": "The NAME of the API token that acted (for what a source "
                      "connection does: the one that issued its source token), or source, device, relay."},
            "tunnel_id": {"type": ["string", "null"]},
            "device_id": {"type": ["string", "null"]},
            "outcome": {"type": "string", "description": "ok, or an error code or short word."},
            "detail": {"type": "object"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["events", "count", "marker"],
        "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}},
            "count": {"type": "integer", "minimum": 0, "description": "Events in this page."},
            "marker": {"type": ["string", "null"], "description": "For the next page; null: this is the last one."},
        },
    },
    "RecordingInfo": {
        "type": "object",
        "required": ["session_id", "tunnel_id", "device_id", "username", "started", "ended", "duration",
                     "truncated", "size"],
        "properties": {
            "session_id": {"type": "string"}, "tunnel_id": {"type": "string"}, "device_id": {"type": "string"},
            "username": {"type": ["string", "null"]},
            "started": {"type": "string", "pattern": r"^\d{8}T\d{6}Z$"},
            "ended": {"type": "string", "pattern": r"^\d{8}T\d{6}Z$"},
            "duration": {"type": "number", "minimum": 0}, "truncated": {"type": "boolean"},
            "size": {"type": "integer", "minimum": 0},
        },
    },
    "RecordingList": {
        "type": "object",
        "required": ["recordings", "count", "marker"],
        "properties": {
            "recordings": {"type": "array", "items": {"$ref": "#/components/schemas/RecordingInfo"}},
            "count": {"type": "integer", "minimum": 0},
            "marker": {"type": ["string", "null"]},
        },
    },
}

_FILTERS = [
    {"name": "device_id", "in": "query", "schema": DEVICE_ID},
    {"name": "tunnel_id", "in": "query", "schema": TUNNEL_ID},
]

AUDIT_PATHS: dict[str, Any] = {
    "/v5/iot/{project_id}/audit": {
        "parameters": PATH_PARAMS,
        "get": {
            "operationId": "listAuditEvents", "summary": "The project's audit trail, newest first",
            "parameters": [
                *_FILTERS,
                {"name": "event_type", "in": "query", "description": "Event types, separated by commas.",
                 "schema": {"type": "string", "pattern": f"^({_EVENT_NAMES})(,({_EVENT_NAMES}))*$"}},
                {"name": "since", "in": "query", "schema": QUERY_TIME, "description": "Events at or after this time."},
                {"name": "until", "in": "query", "schema": QUERY_TIME, "description": "Events before this time."},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                {"name": "marker", "in": "query", "schema": MARKER},
            ],
            "responses": {"200": _ok("A page of events.", "AuditPage"), **COMMON_ERRORS},
        },
    },
    "/v5/iot/{project_id}/recordings": {
        "parameters": PATH_PARAMS,
        "get": {
            "operationId": "listRecordings", "summary": "The project's session recordings, newest first",
            "parameters": [
                *_FILTERS,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                {"name": "marker", "in": "query", "schema": MARKER},
            ],
            "responses": {"200": _ok("A page of recordings (without their data).", "RecordingList"), **COMMON_ERRORS},
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
