"""Checks on what callers send, with error messages written for them. No aiohttp here.

The shapes of the bodies and of the tunnel list's query, and their messages, are declared in
relay/web/models.py; this module turns what they check into what the service takes."""

from __future__ import annotations

from typing import Any

from relay import config, errors
from relay.model import ListQuery, Side, Status, TunnelProtocol
from relay.web import models

DEVICE_ID_RE = config.DEVICE_ID_RE
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


def list_query(params: dict[str, str]) -> ListQuery:
    query = models.parse(models.ListTunnelsQuery, params)
    return ListQuery(
        device_id=query.device_id,
        status=Status(query.status) if query.status else None,
        tunnel_id=query.tunnel_id,
        limit=query.limit,
        marker=int(query.marker) if query.marker is not None else None,
        offset=query.offset,
    )
