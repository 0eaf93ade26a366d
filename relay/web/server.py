"""Running the app: listen, tell the user how to use it, stop cleanly on SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import ssl

from aiohttp import web

from relay.config import Settings
from relay.errors import ConfigError
from relay.web.app import create_app, create_internal_app
from relay.web.sockets import HUB

log = logging.getLogger(__name__)


async def run(settings: Settings, *, generated_token_file: str | None = None) -> int:
    # Bind first, so that with --port 0 the app knows the port the system picked (for tunnel_uri).
    sock = _listen(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    loop = asyncio.get_running_loop()
    assert runner.server is not None
    listener = await loop.create_server(
        HandshakeDeadline(runner.server, settings.handshake_timeout), sock=sock, ssl=_tls_context(settings))
    internal_runner = None
    internal_bound: str | None = None
    if settings.internal_port is not None:
        internal_runner = web.AppRunner(create_internal_app(app), access_log=None, handle_signals=False)
        await internal_runner.setup()
        await web.TCPSite(internal_runner, settings.internal_host, settings.internal_port, reuse_address=True).start()
        internal_bound = _hostport(internal_runner.addresses[0])
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
    if internal_runner is not None:
        await internal_runner.cleanup()
    return 0


class HandshakeDeadline:
    """Protocol factory around aiohttp's: a connection that has not sent a whole request
    head within `timeout` seconds is closed, so slow or silent clients (slowloris) cannot
    hold sockets. Upgraded tunnel connections and keep-alive REST connections are left to
    their own timers.

    A connection's timer is cancelled as soon as aiohttp lets go of the connection (it
    closed, or `take_over` made it a tunnel connection), so the timer does not keep
    aiohttp's handler, about 4 kB, alive for `timeout` seconds after every upgrade."""

    def __init__(self, factory: web.Server, timeout: float) -> None:
        self.factory = factory
        self.timeout = timeout
        self.timers: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}
        # aiohttp's handlers tell their server when they lose their connection; so do we.
        let_go = factory.connection_lost

        def connection_lost(handler, exc=None):  # type: ignore[no-untyped-def]
            timer = self.timers.pop(handler, None)
            if timer is not None:
                timer.cancel()
            let_go(handler, exc)

        factory.connection_lost = connection_lost  # type: ignore[method-assign]

    def __call__(self) -> asyncio.BaseProtocol:
        handler = self.factory()
        self.timers[handler] = asyncio.get_running_loop().call_later(self.timeout, self._expire, handler)
        return handler

    def _expire(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.timers.pop(handler, None)
        self._check(handler)

    @staticmethod
    def _check(handler) -> None:  # type: ignore[no-untyped-def]
        transport = handler.transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not handler:
            return
        # aiohttp counts the request heads it has parsed; none yet means the client stalled.
        if getattr(handler, "_request_count", 1) == 0:
            log.info("closing a connection that sent no request in time")
            transport.close()


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


def _hostport(address: tuple) -> str:  # type: ignore[type-arg]
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
            f"    curl -s -H \"X-Auth-Token: $TOKEN\" -H 'Content-Type: application/json' \\",
            f"         -d '{{\"device_id\": \"my-device\"}}' {base}/v5/iot/{project}/tunnels",
        ]
    print("\n".join(lines), flush=True)
