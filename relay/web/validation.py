"""Checks on what callers send, with error messages written for them. No aiohttp here.

The bodies' shapes and their messages are declared in relay/web/models.py; the query
parameters (strings, not JSON) are checked here."""

from __future__ import annotations

import re
from typing import Any

from relay import config, errors
from relay.model import ListQuery, Side, Status, TunnelProtocol
from relay.web import models

DEVICE_ID_RE = config.DEVICE_ID_RE
MAX_LIST_LIMIT = 50
MAX_OFFSET = 100_000
ROTATE_SIDES = {
    "source": frozenset({Side.SOURCE}),
    "device": frozenset({Side.DEVICE}),
    "all": frozenset({Side.SOURCE, Side.DEVICE}),
}


def device_id(value: Any, where: str = "device_id") -> str:
    if not isinstance(value, str) or not DEVICE_ID_RE.match(value):
        raise errors.InvalidParameter(models.DEVICE_ID_MESSAGE.format(where=where))
    return value


def tunnel_id(value: Any, where: str = "tunnel_id") -> str:
    return models.tunnel_id(value, where)


def create_request(body: Any, min_lifetime: int, max_lifetime: int) -> dict[str, Any]:
    """The fields of TunnelService.create, from a CreateTunnelRequest body."""
    request = models.parse(models.CreateTunnelRequest, body, context={"lifetimes": (min_lifetime, max_lifetime)})
    return {
        "device_id": request.device_id,
        "description": request.description,
        "custom_info": request.custom_info,
        "expires_in": request.expires_in,
        "protocol": TunnelProtocol(request.protocol or TunnelProtocol.HUAWEI.value),
        "services": tuple(request.services or ()),
        "record_session": bool(request.record_session),
    }


def batch_request(body: Any) -> list[str]:
    return models.parse(models.BatchRequest, body).tunnel_ids


def rotate_request(body: Any) -> frozenset[Side]:
    return ROTATE_SIDES[models.parse(models.RotateRequest, body).side]


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

