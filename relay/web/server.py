"""Running the app: listen, tell the user how to use it, stop cleanly on SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import ssl
import time

import orjson
from aiohttp import web

from relay import errors
from relay.config import Settings
from relay.errors import ConfigError
from relay.web.app import create_app, create_internal_app
from relay.web.metrics import Counters
from relay.web.sockets import HUB

log = logging.getLogger(__name__)

# How long stopping waits for a request still being handled, on either port (aiohttp's own
# default is 60 s: a stuck handler on the internal port held a stop that long).
SHUTDOWN_TIMEOUT = 5.0


async def run(settings: Settings, *, generated_token_file: str | None = None) -> int:
    # Bind first, so that with --port 0 the app knows the port the system picked (for tunnel_uri).
    sock = _listen(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, **_handler_options(settings))
    await runner.setup()
    loop = asyncio.get_running_loop()
    assert runner.server is not None
    counters = app[HUB].counters
    tls = _tls_context(settings)
    listener = await loop.create_server(  # a TLS handshake gets the same deadline as a request head
        ConnectionGuard(runner.server, settings, counters), sock=sock, ssl=tls,
        ssl_handshake_timeout=settings.handshake_timeout if tls else None)
    internal_runner = internal_listener = None
    if settings.internal_port is not None:
        # The internal port gets the same deadlines and bounds: it is reachable by whoever
        # reaches the pod network (docs/operations.md).
        internal_runner = web.AppRunner(create_internal_app(app), handle_signals=False,
                                        shutdown_timeout=SHUTDOWN_TIMEOUT, **_handler_options(settings))
        await internal_runner.setup()
        assert internal_runner.server is not None
        try:
            internal_listener = await loop.create_server(
                ConnectionGuard(internal_runner.server, settings, counters), settings.internal_host,
                settings.internal_port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {settings.internal_host}:{settings.internal_port} "
                              f"(the internal port): {exc.strerror}") from exc
    internal_bound = _hostport(internal_listener.sockets[0].getsockname()) if internal_listener is not None else None
    _banner(settings, generated_token_file, bound=_hostport(sock.getsockname()), internal=internal_bound)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"drain_seconds": settings.drain_seconds})
    listener.close()
    # Readiness turns false and new upgrades are refused at once; open connections are told
    # and closed over the drain period, so their clients reconnect to other replicas.
    await app[HUB].shutdown(settings.drain_seconds)
    await runner.cleanup()
    if internal_listener is not None:
        internal_listener.close()
    if internal_runner is not None:
        await internal_runner.cleanup()
    return 0


def _handler_options(settings: Settings) -> dict:
    """aiohttp's per-connection settings: an idle keep-alive connection is closed after
    `keepalive_timeout`, which is also the time the next request head has to arrive whole
    (aiohttp closes a connection still waiting for a request then, bytes trickling in or
    not); no access log (the relay logs what matters itself)."""
    return {"access_log": None, "keepalive_timeout": settings.keepalive_timeout}


class ConnectionGuard:
    """Protocol factory around aiohttp's, so that slow, silent or numerous clients cannot
    hold sockets (slowloris, docs/security.md):

    - a connection that has not sent a whole request head within `handshake_timeout`
      seconds is closed (later heads and idle keep-alive: aiohttp's keepalive_timeout, set
      by `_handler_options`; bodies: rest.read_json's deadline);
    - one client address holds at most `max_http_connections_per_address` connections that
      are not (yet) tunnels: the next one is answered 429 and closed. A connection that
      becomes a tunnel leaves this count (tunnels have their own bound,
      `max_connections_per_address`).

    A connection's timer is cancelled as soon as aiohttp lets go of the connection (it
    closed, or `hand_over_transport` made it a tunnel connection), so the timer does not keep
    aiohttp's handler, about 4 kB, alive for `timeout` seconds after every upgrade."""

    def __init__(self, factory: web.Server, settings: Settings, counters: Counters | None = None) -> None:
        self.factory = factory
        self.timeout = settings.handshake_timeout
        self.per_address_limit = settings.max_http_connections_per_address
        self.counters = counters
        self.timers: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}
        self.addresses: dict[asyncio.BaseProtocol, str] = {}   # handler -> the client address it counts for
        self.per_address: dict[str, int] = {}
        self._warned = 0.0
        self._refused_since_warning = 0
        # aiohttp's handlers tell their server when they get and lose their connection; so do we.
        took, let_go = factory.connection_made, factory.connection_lost

        def connection_made(handler, transport):
            took(handler, transport)
            self._count(handler, transport)

        def connection_lost(handler, exc=None):
            timer = self.timers.pop(handler, None)
            if timer is not None:
                timer.cancel()
            self._uncount(handler)
            let_go(handler, exc)

        factory.connection_made = connection_made  # type: ignore[method-assign]
        factory.connection_lost = connection_lost  # type: ignore[method-assign]

    def __call__(self) -> asyncio.BaseProtocol:
        # aiohttp's Server makes its handlers this way (web.Server.__call__), with its settings.
        handler = QuietRequestHandler(self.factory, loop=self.factory._loop, **self.factory._kwargs)
        self.timers[handler] = asyncio.get_running_loop().call_later(self.timeout, self._expire, handler)
        return handler

    # -- connections per address ---------------------------------------------------------

    def _count(self, handler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, (tuple, list)) and peer else ""
        held = self.per_address.get(address, 0)
        if self.per_address_limit and held >= self.per_address_limit:
            self._refuse(transport, held)
            return
        self.per_address[address] = held + 1
        self.addresses[handler] = address

    def _uncount(self, handler) -> None:
        address = self.addresses.pop(handler, None)
        if address is None:
            return
        held = self.per_address.get(address, 0)
        if held <= 1:
            self.per_address.pop(address, None)
        else:
            self.per_address[address] = held - 1

    def _refuse(self, transport: asyncio.Transport, held: int) -> None:
        error = errors.TooManyHttpConnections(f"this address holds {held} open connections, the most allowed; "
                                          "close some or retry later")
        body = orjson.dumps(error.body())
        transport.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.close()
        if self.counters is not None:
            self.counters.refused_connections += 1
        # One warning a minute at most: an address over its bound may try thousands of times.
        self._refused_since_warning += 1
        now = time.monotonic()
        if now - self._warned >= 60.0:
            log.warning("refused %d connection(s): their address already held %d (--max-http-connections-per-address)",
                        self._refused_since_warning, held)
            self._warned, self._refused_since_warning = now, 0

    # -- the first request head's deadline -------------------------------------------------

    def _expire(self, handler) -> None:
        self.timers.pop(handler, None)
        self._check(handler)

    @staticmethod
    def _check(handler) -> None:
        transport = handler.transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not handler:
            return
        # aiohttp counts the request heads it has parsed; none yet means the client stalled.
        if getattr(handler, "_request_count", 1) == 0:
            log.info("closing a connection that sent no request in time")
            transport.close()


class QuietRequestHandler(web.RequestHandler):
    """aiohttp's handler, whose answer to a malformed request does not quote the request:
    aiohttp's says e.g. "Got more than 8190 bytes when reading: b'X-Auth-Token: ...'", the
    start of a padded token, which proxies and clients may log. The log line is
    relay.web.app.QuietHttpLog's."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if message is not None and exc is not None:
            message = f"{status} malformed HTTP request ({type(exc).__name__})"
        return super().handle_error(request, status, exc, message)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {settings.tls_cert} / key {settings.tls_key}: {exc}") from exc
    return context


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _hostport(address: tuple) -> str:
    """host:port of a bound socket's address, as the system reports it (IPv6 hosts in brackets)."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _banner(settings: Settings, token_file: str | None, *, bound: str, internal: str | None = None) -> None:
    # What this process bound, and apart from it the public URL clients are given (behind a
    # load balancer the two differ: a replica's log must say which port is its own).
    base = settings.base_url
    scheme = "https" if settings.tls_cert else "http"
    project = settings.api_keys[0].project_id if settings.api_keys else "PROJECT"
    lines = [f"relay listening on {scheme}://{bound}"]
    if base != f"{scheme}://{bound}":
        lines.append(f"  public URL (what clients are given): {base}")
    if internal:
        lines.append(f"  internal port (health, metrics, bridges): http://{internal}")
    lines += [f"  OpenAPI document: {base}/openapi.json", f"  web console: {base}/console"]
    if settings.mqtt_url:
        lines.append(f"  devices: MQTT broker {settings.mqtt_url}; run `relay agent --help` on a device (docs/device.md)")
    if token_file:
        lines += [
            f"  API token (project '{project}'): stored in {token_file}",
            "  try:",
            f"    TOKEN=$(grep -v '^#' {token_file} | head -1 | cut -d: -f3)",
            "    curl -s -H \"X-Auth-Token: $TOKEN\" -H 'Content-Type: application/json' \\",
            f"         -d '{{\"device_id\": \"my-device\"}}' {base}/v5/iot/{project}/tunnels",
        ]
    print("\n".join(lines), flush=True)
