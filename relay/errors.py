"""Errors that the relay reports to its users.

The bottom layer: no outside library is imported here. Every error of the REST API carries
an HTTP status and a stable `error_code` (documented in docs/api.md); the web layer turns
them into `{"error_code": ..., "error_msg": ...}` bodies.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting given on the command line, in the environment or in a file is wrong."""


class ApiError(RelayError):
    status: int = 500
    code: str = "TUNNEL.500000"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error_code": self.code, "error_msg": self.message}


def _api_error(name: str, status: int, code: str, doc: str) -> type[ApiError]:
    return type(name, (ApiError,), {"status": status, "code": code, "__doc__": doc})


# One line per error, so that the table in docs/api.md can be checked against it.
InvalidJson = _api_error("InvalidJson", 400, "TUNNEL.400000", "The body is not valid JSON.")
InvalidParameter = _api_error("InvalidParameter", 400, "TUNNEL.400001", "A field or query parameter is wrong.")
BodyTooLarge = _api_error("BodyTooLarge", 400, "TUNNEL.400002", "The request body is over the size limit.")
NotWebSocket = _api_error("NotWebSocket", 400, "TUNNEL.400010", "A connect endpoint got a request that is not a WebSocket upgrade.")
UnsupportedSubprotocol = _api_error("UnsupportedSubprotocol", 400, "TUNNEL.400011", "The WebSocket upgrade offers no subprotocol this endpoint speaks.")
UnsupportedContentType = _api_error("UnsupportedContentType", 400, "TUNNEL.400003", "The body is not application/json.")
Unauthenticated = _api_error("Unauthenticated", 401, "TUNNEL.401000", "X-Auth-Token is missing or unknown.")
TokenUsed = _api_error("TokenUsed", 401, "TUNNEL.401001", "The access token was used already; only its client token may reconnect.")
Forbidden = _api_error("Forbidden", 403, "TUNNEL.403000", "The API token belongs to another project.")
InstanceMismatch = _api_error("InstanceMismatch", 403, "TUNNEL.403001", "Instance-Id does not match this relay.")
QuotaExceeded = _api_error("QuotaExceeded", 403, "TUNNEL.403002", "The project has reached its tunnel quota.")
WrongProtocol = _api_error("WrongProtocol", 403, "TUNNEL.403003", "The token belongs to a tunnel of the other protocol; use that protocol's endpoint.")
OriginNotAllowed = _api_error("OriginNotAllowed", 403, "TUNNEL.403004", "A web page of an origin the relay does not trust tried to open a tunnel WebSocket.")
TunnelNotFound = _api_error("TunnelNotFound", 404, "TUNNEL.404000", "No such tunnel in this project.")
RouteNotFound = _api_error("RouteNotFound", 404, "TUNNEL.404001", "No such API path.")
RecordingNotFound = _api_error("RecordingNotFound", 404, "TUNNEL.404002", "No such session recording in this project.")
MethodNotAllowed = _api_error("MethodNotAllowed", 405, "TUNNEL.405000", "The path does not take this method.")
DeviceBusy = _api_error("DeviceBusy", 409, "TUNNEL.409000", "The device already has an open tunnel.")
TunnelNotClosed = _api_error("TunnelNotClosed", 409, "TUNNEL.409001", "Only a closed tunnel can be deleted.")
TunnelClosed = _api_error("TunnelClosed", 409, "TUNNEL.409002", "The tunnel is closed; its tokens cannot be rotated.")
DeviceOffline = _api_error("DeviceOffline", 409, "TUNNEL.409003", "The device is offline.")
TunnelGone = _api_error("TunnelGone", 410, "TUNNEL.410000", "The tunnel is closed or expired; connect to a new one.")
RequestTimeout = _api_error("RequestTimeout", 408, "TUNNEL.408000", "The request body did not arrive in time.")
TooManyConnections = _api_error("TooManyConnections", 429, "TUNNEL.429000", "This address holds too many tunnel connections.")
TooManyHttpConnections = _api_error("TooManyHttpConnections", 429, "TUNNEL.429001", "This address holds too many open connections.")
InternalError = _api_error("InternalError", 500, "TUNNEL.500000", "An unexpected error; see the relay's log.")
StoreUnavailable = _api_error("StoreUnavailable", 503, "TUNNEL.503000", "The tunnel store cannot be reached.")
ShuttingDown = _api_error("ShuttingDown", 503, "TUNNEL.503001", "The relay is shutting down; connect again.")

ALL_API_ERRORS: tuple[type[ApiError], ...] = (
    InvalidJson, InvalidParameter, BodyTooLarge, NotWebSocket, UnsupportedSubprotocol, UnsupportedContentType,
    Unauthenticated, TokenUsed, Forbidden, InstanceMismatch, QuotaExceeded, WrongProtocol, TunnelNotFound, RouteNotFound, MethodNotAllowed,
    DeviceBusy, TunnelNotClosed, TunnelClosed, DeviceOffline, TunnelGone, TooManyConnections, InternalError, StoreUnavailable,
    ShuttingDown, RecordingNotFound,
    RequestTimeout, TooManyHttpConnections,
)
