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
from relay.web.app import create_app

log = logging.getLogger(__name__)


async def run(settings: Settings, *, generated_token_file: str | None = None) -> int:
    # Bind first, so that with --port 0 the app knows the port the system picked (for tunnel_uri).
    sock = _listen(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=_tls_context(settings)).start()
    _banner(settings, generated_token_file)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    return 0


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


def _banner(settings: Settings, token_file: str | None) -> None:
    base = settings.base_url
    project = settings.api_keys[0].project_id if settings.api_keys else "PROJECT"
    lines = [f"relay listening on {base}", f"  OpenAPI document: {base}/openapi.json"]
    if token_file:
        lines += [
            f"  API token (project '{project}'): stored in {token_file}",
            "  try:",
            f"    TOKEN=$(grep -v '^#' {token_file} | head -1 | cut -d: -f3)",
            f"    curl -s -H \"X-Auth-Token: $TOKEN\" -H 'Content-Type: application/json' \\",
            f"         -d '{{\"device_id\": \"my-device\"}}' {base}/v5/iot/{project}/tunnels",
        ]
    print("\n".join(lines), flush=True)
