"""Builds the aiohttp application: routes, error handling, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from relay import errors
from relay.clock import Clock
from relay.config import Settings
from relay.service import TunnelService
from relay.store import TunnelStore, open_store
from relay.tokens import hash_token
from relay.web import openapi, rest, sockets

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[errors.ApiError]] = {
    404: errors.RouteNotFound,
    405: errors.MethodNotAllowed,
    413: errors.BodyTooLarge,
}


@web.middleware
async def error_bodies(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Every error leaves as `{"error_code", "error_msg"}` with its HTTP status."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return rest.error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_ERRORS.get(exc.status)
        if kind is None:
            return rest.json_response(
                {"error_code": f"TUNNEL.{exc.status}000", "error_msg": exc.reason}, status=exc.status
            )
        message = {
            404: f"no API at {request.path[:200]!r}; see /openapi.json",
            405: f"{request.path[:200]!r} does not take {request.method}",
            413: "the request body is over the size limit",
        }[exc.status]
        response = rest.error_response(kind(message))
        if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods the path does take
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return rest.error_response(errors.InternalError("unexpected error; the relay's log has the details"))


async def health(request: web.Request) -> web.Response:
    return rest.json_response({"status": "ok"})


async def serve_openapi(request: web.Request) -> web.Response:
    return rest.json_response(openapi.document(request.app[rest.SETTINGS]))


def create_app(settings: Settings, *, clock: Clock | None = None, store: TunnelStore | None = None) -> web.Application:
    app = web.Application(middlewares=[error_bodies], client_max_size=settings.max_body_bytes)
    service = TunnelService(store or open_store(settings.db), settings, clock or Clock())
    app[rest.SETTINGS] = settings
    app[rest.SERVICE] = service
    app[rest.API_KEYS] = {hash_token(k.token): k for k in settings.api_keys}
    rest.add_routes(app)
    hub = sockets.Hub(service)
    service.listeners.append(hub)
    sockets.add_routes(app, hub)

    async def end_sockets(app: web.Application) -> None:
        await hub.shutdown()

    app.on_shutdown.append(end_sockets)
    app.router.add_get("/openapi.json", serve_openapi, allow_head=False)
    app.router.add_get("/healthz", health, allow_head=False)

    async def sweeper(app: web.Application):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(service.run_sweeper(), name="tunnel-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.store.aclose()

    app.cleanup_ctx.append(sweeper)
    return app
