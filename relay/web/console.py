"""The web console (docs/console.md): static files served from the package, no build step.

`/console` is the page; `/console/{file}` its script, style sheet and icon. Only the files
listed in `_FILES` are served (no path from the request ever reaches the file system), each
with a strict Content-Security-Policy: scripts and styles from this origin only, no inline
code, WebSockets to any host (the relay's `tunnel_uri` may name a public address)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay import errors

FOLDER = Path(__file__).with_name("console")

_FILES: dict[str, str] = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "terminal.js": "text/javascript",
    "audit.js": "text/javascript",      # the audit view and the session player (docs/audit.md)
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self'; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",    # revalidate: a relay upgrade brings new files at once
}


def _serve(name: str) -> web.Response:
    content_type = _FILES.get(name)
    if content_type is None:
        raise errors.RouteNotFound(f"the console has no file {name[:100]!r}")
    try:
        body = (FOLDER / name).read_bytes()
    except FileNotFoundError:   # a package built without its data files
        raise errors.RouteNotFound(f"the console file {name!r} is missing from this installation") from None
    return web.Response(body=body, content_type=content_type,
                        charset="utf-8" if content_type != "image/svg+xml" else None, headers=HEADERS)


async def page(request: web.Request) -> web.Response:
    return _serve("index.html")


async def asset(request: web.Request) -> web.Response:
    return _serve(request.match_info["file"])


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/console")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/console", page)
    app.router.add_get("/console/", to_page, allow_head=False)
    app.router.add_get("/console/{file}", asset)
