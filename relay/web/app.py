"""Builds the aiohttp application: routes, error handling, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket

from aiohttp import http_exceptions, web, web_response

from relay import errors
from relay.audit import ACTOR_RELAY, EventType
from relay.broker import BrokerAccounts, ManagedBroker, accounts_folder
from relay.clock import Clock
from relay.cluster import Cluster
from relay.config import Settings, parse_mqtt_url
from relay.notifier import Notifier
from relay.service import TunnelService
from relay.store import TunnelStore, open_store
from relay.store.redis import RedisStore
from relay.tokens import hash_token
from relay.web import audit_rest, aws_sockets, console, huawei_sockets, metrics, openapi, rest, sockets
from relay.web.bridge import BRIDGE_PATH, Bridges

log = logging.getLogger(__name__)

# The Server header names the product, not the versions of Python and aiohttp (an attacker's
# shortcut to known bugs). aiohttp reads this name for every response it makes, its own
# answers to malformed requests included, so it is set here rather than per response.
SERVER_NAME = "iot-tunnel-relay"
web_response.SERVER_SOFTWARE = SERVER_NAME


class QuietHttpLog(logging.Filter):
    """aiohttp's server log, made quiet and truthful (docs/operations.md). aiohttp logs every
    malformed request at ERROR with a traceback and the exception's text, which quotes the
    offending bytes: a header line over 8190 bytes is quoted from its start, so a padded
    Cookie, Authorization or X-Auth-Token put its token in the log. A malformed request is
    the client's doing: one INFO line naming what was wrong, never what it said. A client
    that left is one DEBUG line. Anything else (a bug of ours) stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, http_exceptions.HttpProcessingError):
            level, text = logging.INFO, f"rejected a malformed HTTP request ({type(exc).__name__}, HTTP {exc.code})"
        elif isinstance(exc, ConnectionError):
            level, text = logging.DEBUG, f"the client left ({type(exc).__name__})"
        else:
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args = ("%s from %s", (text, peer)) if isinstance(peer, str) else (text, ())
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)


QUIET_HTTP_LOG = QuietHttpLog()


def quiet_aiohttp_log() -> None:
    """Install QuietHttpLog on aiohttp's server logger (once: adding it again is a no-op)."""
    logging.getLogger("aiohttp.server").addFilter(QUIET_HTTP_LOG)


_HTTP_ERRORS: dict[int, type[errors.ApiError]] = {
    404: errors.RouteNotFound,
    405: errors.MethodNotAllowed,
    413: errors.BodyTooLarge,
}


@web.middleware
async def error_bodies(request: web.Request, handler):
    """Every error leaves as `{"error_code", "error_msg"}` with its HTTP status."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        response = rest.error_response(exc)
        if isinstance(exc, errors.RequestTimeout):
            # No keep-alive after a stalled body: aiohttp discards what still comes (at most
            # its lingering time, 10 s) and closes the connection.
            response.force_close()
        return response
    except ConnectionError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client went away before it was answered (mid-body, say): its business, no error of ours.
            log.info("the client left before %s %s was answered", request.method, request.path[:200])
            raise
        log.exception("unexpected error in %s %s", request.method, request.path)
        return rest.error_response(errors.InternalError("unexpected error; the relay's log has the details"))
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
    quiet_aiohttp_log()
    app = web.Application(middlewares=[error_bodies], client_max_size=settings.max_body_bytes)
    clock = clock or Clock()
    service = TunnelService(store or open_store(settings.store_url or settings.db, settings.sqlite_cache_kib), settings, clock)
    app[rest.SETTINGS] = settings
    app[rest.SERVICE] = service
    app[rest.API_KEYS] = {hash_token(k.token): k for k in settings.api_keys}
    rest.add_routes(app)
    cluster = _cluster(settings, service.store, clock)
    hub = sockets.Hub(service, cluster, settings)
    if cluster.distributed:
        hub.bridges = Bridges(hub, cluster)
    service.listeners.append(hub)
    huawei_sockets.add_routes(app, hub)   # the Huawei IoTDA v5 endpoints, /v5/iot/tunnels/{id}/...-connect
    aws_sockets.add_routes(app)  # the AWS IoT Secure Tunneling endpoint, /tunnel (docs/aws.md)

    async def end_sockets(app: web.Application) -> None:
        await hub.shutdown()

    app.on_shutdown.append(end_sockets)
    app.router.add_get("/openapi.json", serve_openapi, allow_head=False)
    app.router.add_get("/healthz", health, allow_head=False)
    console.add_routes(app)  # the web console (docs/console.md)

    async def sweeper(app: web.Application):
        task = asyncio.create_task(service.run_sweeper(), name="tunnel-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.store.aclose()

    app.cleanup_ctx.append(sweeper)
    audit_rest.setup(app, service, settings, clock)  # docs/audit.md; after the sweeper: flushed before the store closes

    async def coordination(app: web.Application):
        await cluster.start(hub.on_hint)
        reconciler = asyncio.create_task(hub.reconcile_forever()) if cluster.distributed else None
        yield
        if reconciler is not None:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
        await cluster.stop()

    app.cleanup_ctx.append(coordination)
    if settings.mqtt_url:
        _add_device_side(app, settings, service)
    return app


def _cluster(settings: Settings, store: TunnelStore, clock: Clock) -> Cluster:
    """Alone, or one of several replicas sharing a Redis store (docs/scaling.md)."""
    if isinstance(store, RedisStore) and settings.internal_port is not None:
        from relay.store.redis_cluster import RedisCluster
        replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        address = settings.internal_address or f"{settings.internal_host}:{settings.internal_port}"
        return RedisCluster(store, clock, replica_id, address, settings.lease_ttl, settings.bridge_secret)
    return Cluster(store, clock)


def create_internal_app(app: web.Application) -> web.Application:
    """The internal port: liveness, readiness and replica-to-replica bridges. Not for clients."""
    hub = app[sockets.HUB]
    internal = web.Application(middlewares=[error_bodies])

    async def live(request: web.Request) -> web.Response:
        return rest.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        if not hub.accepting:
            return rest.json_response({"status": "draining"}, status=503)
        return rest.json_response({"status": "ready"})

    async def bridge(request: web.Request) -> web.StreamResponse:
        if hub.bridges is None or not hub.accepting:
            raise errors.ShuttingDown("this replica takes no bridges")
        return await hub.bridges.accept_bridge(request)

    async def metrics_page(request: web.Request) -> web.Response:
        text = await metrics.render(hub, app[rest.SERVICE].store)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    internal.router.add_get("/metrics", metrics_page, allow_head=False)
    internal.router.add_get("/livez", live, allow_head=False)
    internal.router.add_get("/readyz", ready, allow_head=False)
    internal.router.add_get(BRIDGE_PATH, bridge, allow_head=False)
    return internal


def _add_device_side(app: web.Application, settings: Settings, service: TunnelService) -> None:
    """MQTT notifies and presence (docs/device.md); with a managed broker, mosquitto too.
    Added after the sweeper, so it stops before the store closes."""
    accounts = None
    if settings.managed_broker:   # the relay logs in to its own broker with its own account
        accounts = BrokerAccounts(accounts_folder(settings.db))
        username, password = accounts.relay_credentials()
        settings = dataclasses.replace(settings, mqtt_username=username, mqtt_password=password)
    notifier = Notifier(settings, service.store, service.clock)
    service.notify_devices = True
    service.presence = notifier.presence
    service.listeners.append(notifier)
    notifier.on_delivered = lambda tunnel: service.record(
        tunnel.project_id, EventType.NOTIFY_DELIVERED, actor=ACTOR_RELAY, tunnel=tunnel,
        detail={"protocol": tunnel.protocol.value})

    async def device_side(app: web.Application):
        broker = None
        if accounts is not None:
            host, port, _ = parse_mqtt_url(settings.mqtt_url)
            broker = ManagedBroker(host, port, accounts)
            await broker.start()
        await notifier.start()
        yield
        await notifier.stop()
        if broker is not None:
            await broker.stop()

    app.cleanup_ctx.append(device_side)
