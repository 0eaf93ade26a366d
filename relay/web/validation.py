"""Checks on what callers send, with error messages written for them. No aiohttp here."""

from __future__ import annotations

import re
import uuid
from typing import Any

from relay import config, errors
from relay.model import ListQuery, Side, Status, TunnelProtocol

DEVICE_ID_RE = config.DEVICE_ID_RE
MAX_DESCRIPTION = 1024
MAX_CUSTOM_INFO = 4096
MAX_BATCH = 100
MAX_LIST_LIMIT = 50
MAX_OFFSET = 100_000
# AWS service ids (DestinationConfig.services of AWS's OpenTunnel): 1-3 per tunnel, each 1-128
# characters of letters, digits, ':', '_' and '-'.
SERVICE_ID_RE = re.compile(r"^[A-Za-z0-9:_-]{1,128}\Z")
MAX_SERVICES = 3


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.InvalidParameter("the request body must be a JSON object")
    return body


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidParameter(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def device_id(value: Any, where: str = "device_id") -> str:
    if not isinstance(value, str) or not DEVICE_ID_RE.match(value):
        raise errors.InvalidParameter(
            f"{where} must be 1-128 characters of letters, digits, '_' and '-'"
        )
    return value


def tunnel_id(value: Any, where: str = "tunnel_id") -> str:
    if not isinstance(value, str):
        raise errors.InvalidParameter(f"{where} must be a string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise errors.InvalidParameter(f"{where} {value[:64]!r} is not a tunnel id (a UUID)") from None
    if str(parsed) != value:
        raise errors.InvalidParameter(f"{where} must be a lower-case UUID with dashes")
    return value


def optional_text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidParameter(f"{name} must be a string")
    if len(value) > limit:
        raise errors.InvalidParameter(f"{name} must be at most {limit} characters")
    return value


def expires_in(body: dict[str, Any], minimum: int, maximum: int) -> int | None:
    value = body.get("expires_in")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # 60.0 is an integer in JSON
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.InvalidParameter("expires_in must be an integer number of seconds")
    if not minimum <= value <= maximum:
        raise errors.InvalidParameter(f"expires_in must be between {minimum} and {maximum} seconds")
    return value


def protocol(body: dict[str, Any]) -> TunnelProtocol:
    value = body.get("protocol")
    if value is None:
        return TunnelProtocol.HUAWEI
    if not isinstance(value, str) or value not in {p.value for p in TunnelProtocol}:
        raise errors.InvalidParameter("protocol must be 'huawei' (the default) or 'aws'")
    return TunnelProtocol(value)


def services(body: dict[str, Any], kind: TunnelProtocol) -> tuple[str, ...]:
    value = body.get("services")
    if kind is TunnelProtocol.HUAWEI:
        if value is not None:
            raise errors.InvalidParameter(
                "services is only for tunnels of protocol 'aws'; a Huawei tunnel carries the ssh and tcp services")
        return ()
    if value is None:
        raise errors.InvalidParameter(
            "services is required for protocol 'aws': a list of 1 to 3 service ids, such as [\"SSH\"]")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SERVICES:
        raise errors.InvalidParameter(f"services must be a list of 1 to {MAX_SERVICES} service ids")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not SERVICE_ID_RE.match(item):
            raise errors.InvalidParameter(
                f"services[{index}] must be 1-128 characters of letters, digits, ':', '_' and '-'")
    if len(set(value)) != len(value):
        raise errors.InvalidParameter("services lists a service id more than once")
    return tuple(value)


def create_request(body: Any, min_lifetime: int, max_lifetime: int) -> dict[str, Any]:
    body = require_object(body)
    reject_unknown(body, {"device_id", "description", "custom_info", "expires_in", "protocol", "services",
                          "record_session"})
    if "device_id" not in body:
        raise errors.InvalidParameter("device_id is required")
    kind = protocol(body)
    return {
        "device_id": device_id(body["device_id"]),
        "description": optional_text(body, "description", MAX_DESCRIPTION),
        "custom_info": optional_text(body, "custom_info", MAX_CUSTOM_INFO),
        "expires_in": expires_in(body, min_lifetime, max_lifetime),
        "protocol": kind,
        "services": services(body, kind),
        "record_session": record_session(body, kind),
    }


def record_session(body: dict[str, Any], kind: TunnelProtocol) -> bool:
    value = body.get("record_session")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.InvalidParameter("record_session must be true or false")
    if value and kind is not TunnelProtocol.HUAWEI:
        raise errors.InvalidParameter(
            "record_session is for huawei tunnels: the relay records the ssh service's terminal, and an aws "
            "tunnel carries raw TCP it cannot read")
    return value


def batch_request(body: Any) -> list[str]:
    body = require_object(body)
    reject_unknown(body, {"tunnel_ids"})
    ids = body.get("tunnel_ids")
    if not isinstance(ids, list) or not ids:
        raise errors.InvalidParameter("tunnel_ids must be a non-empty list of tunnel ids")
    if len(ids) > MAX_BATCH:
        raise errors.InvalidParameter(f"tunnel_ids may hold at most {MAX_BATCH} ids")
    checked = [tunnel_id(v, f"tunnel_ids[{i}]") for i, v in enumerate(ids)]
    if len(set(checked)) != len(checked):
        raise errors.InvalidParameter("tunnel_ids lists a tunnel more than once")
    return checked


ROTATE_SIDES = {
    "source": frozenset({Side.SOURCE}),
    "device": frozenset({Side.DEVICE}),
    "all": frozenset({Side.SOURCE, Side.DEVICE}),
}


def rotate_request(body: Any) -> frozenset[Side]:
    body = require_object(body)
    reject_unknown(body, {"side"})
    side = body.get("side", "all")
    if not isinstance(side, str) or side not in ROTATE_SIDES:
        raise errors.InvalidParameter("side must be one of 'source', 'device', 'all'")
    return ROTATE_SIDES[side]


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw):
        raise errors.InvalidParameter(f"{name} must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise errors.InvalidParameter(f"{name} must be between {low} and {high}")
    return value


def list_query(params: dict[str, str]) -> ListQuery:
    known = {"device_id", "status", "tunnel_id", "limit", "marker", "offset"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise errors.InvalidParameter(f"unknown query parameter(s) {', '.join(unknown)}")
    status = params.get("status")
    if status is not None and status not in ("OPEN", "CLOSED"):
        raise errors.InvalidParameter("status must be OPEN or CLOSED")
    marker = params.get("marker")
    if marker is not None and not re.fullmatch(r"\d{1,18}", marker):
        raise errors.InvalidParameter("marker must be the page.marker of a previous answer")
    return ListQuery(
        device_id=device_id(params["device_id"]) if "device_id" in params else None,
        status=Status(status) if status else None,
        tunnel_id=tunnel_id(params["tunnel_id"]) if "tunnel_id" in params else None,
        limit=_int_param(params, "limit", 10, 1, MAX_LIST_LIMIT),
        marker=int(marker) if marker is not None else None,
        offset=_int_param(params, "offset", 0, 0, MAX_OFFSET),
    )

