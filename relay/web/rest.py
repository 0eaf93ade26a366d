"""REST handlers of the control plane (`/v5/iot/{project_id}/tunnels...`)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from relay import errors
from relay.config import ApiKey, Settings
from relay.model import TunnelProtocol
from relay.service import BatchResult, TunnelService
from relay.tokens import hash_token
from relay.web import validation

SERVICE: web.AppKey[TunnelService] = web.AppKey("service", TunnelService)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
API_KEYS: web.AppKey[dict[str, ApiKey]] = web.AppKey("api_keys", dict)
CALLER: web.RequestKey[ApiKey] = web.RequestKey("caller", ApiKey)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: errors.ApiError) -> web.Response:
    return json_response(error.body(), status=error.status)


def authorize(request: web.Request) -> str:
    """The project id of the path, once the caller's API token is known to act for it."""
    project_id = request.match_info["project_id"]
    token = request.headers.get("X-Auth-Token")
    if not token:
        raise errors.Unauthenticated("X-Auth-Token header is missing; send an API token of the project")
    key = request.app[API_KEYS].get(hash_token(token))
    if key is None:
        raise errors.Unauthenticated("the X-Auth-Token is not a known API token")
    if key.project_id != project_id:
        raise errors.Forbidden(f"this API token does not act for project {project_id[:64]!r}")
    expected_instance = request.app[SETTINGS].instance_id
    instance = request.headers.get("Instance-Id")
    if expected_instance is not None and instance is not None and instance != expected_instance:
        raise errors.InstanceMismatch("the Instance-Id header does not name this relay's instance")
    if expected_instance is not None and instance is None:
        raise errors.InstanceMismatch("this relay requires the Instance-Id header")
    request[CALLER] = key
    return project_id


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise errors.UnsupportedContentType(
            f"send the body as application/json, not {request.content_type or 'nothing'}"
        )
    settings = request.app[SETTINGS]
    try:
        # A deadline on the whole body: a client sending a byte now and then holds no
        # connection for long (slowloris, docs/security.md).
        async with asyncio.timeout(settings.body_timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.BodyTooLarge(f"the request body is over {settings.max_body_bytes} bytes") from None
    except TimeoutError:
        raise errors.RequestTimeout(f"the request body did not arrive within {settings.body_timeout:g} seconds") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJson(f"the body is not valid JSON: {exc}") from None


def _tunnel_id(request: web.Request) -> str:
    return validation.tunnel_id(request.match_info["tunnel_id"])


async def create_tunnel(request: web.Request) -> web.Response:
    project_id = authorize(request)
    settings = request.app[SETTINGS]
    fields = validation.create_request(await read_json(request), settings.min_lifetime, settings.default_lifetime)
    created = await request.app[SERVICE].create(project_id, actor=request[CALLER].name, **fields)
    tunnel_id = created.tunnel.tunnel_id
    aws = created.tunnel.protocol is TunnelProtocol.AWS
    body = {
        "tunnel_id": tunnel_id,
        "tunnel_access_token": created.source_token,
        "expires_in": created.expires_in,
        "tunnel_uri": settings.aws_tunnel_uri("source") if aws else settings.tunnel_uri(tunnel_id, "source"),
        "protocol": created.tunnel.protocol.value,
    }
    if aws:  # AWS's names (OpenTunnel's sourceAccessToken, destinationAccessToken); docs/aws.md
        body["services"] = list(created.tunnel.services)
        body["source_access_token"] = created.source_token
    if settings.expose_device_token:
        body["device_access_token"] = created.device_token
        body["device_tunnel_uri"] = (settings.aws_tunnel_uri("destination") if aws
                                     else settings.tunnel_uri(tunnel_id, "device"))
        if aws:
            body["destination_access_token"] = created.device_token
    return json_response(body, status=201)


async def list_tunnels(request: web.Request) -> web.Response:
    project_id = authorize(request)
    query = validation.list_query(dict(request.query))
    page = await request.app[SERVICE].list(project_id, query)
    return json_response({
        "tunnels": [t.info() for t in page.tunnels],
        "page": {"count": page.count, "marker": str(page.marker) if page.marker is not None else None},
    })


async def show_tunnel(request: web.Request) -> web.Response:
    project_id = authorize(request)
    tunnel = await request.app[SERVICE].get(project_id, _tunnel_id(request))
    return json_response(tunnel.info())


async def close_tunnel(request: web.Request) -> web.Response:
    project_id = authorize(request)
    await request.app[SERVICE].close(project_id, _tunnel_id(request), actor=request[CALLER].name)
    return web.Response(status=204)


async def delete_tunnel(request: web.Request) -> web.Response:
    project_id = authorize(request)
    await request.app[SERVICE].delete(project_id, _tunnel_id(request), actor=request[CALLER].name)
    return web.Response(status=204)


async def rotate_tokens(request: web.Request) -> web.Response:
    project_id = authorize(request)
    tunnel_id = _tunnel_id(request)
    body = await read_json(request) if request.can_read_body else {}
    sides = validation.rotate_request(body)
    rotated = await request.app[SERVICE].rotate(project_id, tunnel_id, sides, actor=request[CALLER].name)
    answer: dict[str, Any] = {"tunnel_id": tunnel_id, "expires_in": rotated.expires_in}
    aws = rotated.tunnel.protocol is TunnelProtocol.AWS
    if rotated.source_token:
        answer["tunnel_access_token"] = rotated.source_token
        if aws:
            answer["source_access_token"] = rotated.source_token
    if rotated.device_token and request.app[SETTINGS].expose_device_token:
        answer["device_access_token"] = rotated.device_token
        if aws:
            answer["destination_access_token"] = rotated.device_token
    return json_response(answer)


def _batch_body(results: list[BatchResult]) -> dict[str, Any]:
    rows = []
    for result in results:
        row: dict[str, Any] = {"tunnel_id": result.tunnel_id, "result": "SUCCESS" if result.error is None else "FAILED"}
        if result.error is not None:
            row.update(result.error.body())
        rows.append(row)
    failed = sum(1 for r in results if r.error is not None)
    return {"results": rows, "success_count": len(results) - failed, "failure_count": failed}


async def batch_close(request: web.Request) -> web.Response:
    project_id = authorize(request)
    ids = validation.batch_request(await read_json(request))
    return json_response(_batch_body(await request.app[SERVICE].batch(project_id, ids, "close", actor=request[CALLER].name)))


async def batch_delete(request: web.Request) -> web.Response:
    project_id = authorize(request)
    ids = validation.batch_request(await read_json(request))
    return json_response(_batch_body(await request.app[SERVICE].batch(project_id, ids, "delete", actor=request[CALLER].name)))


def add_routes(app: web.Application) -> None:
    base = "/v5/iot/{project_id}/tunnels"
    app.router.add_post(base, create_tunnel)
    app.router.add_get(base, list_tunnels, allow_head=False)
    app.router.add_post(base + "/batch-close", batch_close)
    app.router.add_post(base + "/batch-delete", batch_delete)
    # The batch paths are not tunnel ids: other methods on them answer 405, not "bad tunnel id".
    one = base + "/{tunnel_id:(?!batch-(?:close|delete)$)[^/]+}"
    app.router.add_get(one, show_tunnel, allow_head=False)
    app.router.add_put(one, close_tunnel)
    app.router.add_delete(one, delete_tunnel)
    app.router.add_post(one + "/rotate-token", rotate_tokens)
