"""A small client of the relay's REST API (docs/api.md), on aiohttp's client.

The API token goes in `X-Auth-Token` and nowhere else: not in errors, not in repr().
Errors come back as `ApiError` (the relay's `error_code` and `error_msg`) or
`Unreachable` (no answer at all), each with a one-line message.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import orjson

BATCH_MAX = 100   # ids per batch call (docs/api.md)
PAGE_MAX = 50     # tunnels per page


class ClientError(Exception):
    """Something the command line reports in one line and exits non-zero for."""


class Unreachable(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = " ".join(message.split())   # one line, whatever the server sent
        super().__init__(f"{self.code}: {self.message} (HTTP {status})")


def rest_base(url: str, project: str) -> str:
    return f"{url.rstrip('/')}/v5/iot/{quote(project, safe='')}/tunnels"


def source_uri(url: str, tunnel_id: str) -> str:
    """The source-connect address on the relay at `url` (http -> ws, https -> wss).

    Create answers with `tunnel_uri`; rotation does not, so a reused tunnel is reached on
    the host the API was called on."""
    parts = urlsplit(url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = f"{parts.path}/v5/iot/tunnels/{quote(tunnel_id, safe='')}/source-connect"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class RelayApi:
    def __init__(self, url: str, token: str, project: str, *, instance_id: str | None = None,
                 ssl: ssl.SSLContext | bool = True, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"the relay URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.project = project
        self.ssl = ssl
        self._base = rest_base(self.url, project)
        self._headers = {"X-Auth-Token": token}
        if instance_id:
            self._headers["Instance-Id"] = instance_id
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RelayApi({self.url!r}, project={self.project!r})"

    async def __aenter__(self) -> RelayApi:
        self.http = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    async def _call(self, method: str, path: str = "", *, json: Any = None,
                    params: dict[str, Any] | None = None, url: str | None = None, raw_body: bool = False) -> Any:
        """`path` under the tunnels; or `url` (another API path); `raw_body`: the bytes, not JSON."""
        assert self.http is not None, "use `async with RelayApi(...)`"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.http.request(method, url or self._base + path, json=json, params=query,
                                         headers=self._headers, ssl=self.ssl) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(resp.status, resp.content_type, raw)
                if raw_body:
                    return raw
                if not raw:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError:
                    raise ApiError(resp.status, f"HTTP.{resp.status}", "the relay's answer is not JSON") from None
        except TimeoutError:
            raise Unreachable(f"the relay at {self.url} did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach the relay at {self.url}: {exc.os_error.strerror or exc}") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(f"the connection to the relay at {self.url} failed: {type(exc).__name__} {exc}") from None

    # -- the calls of docs/api.md ----------------------------------------------------------

    async def create(self, device_id: str, *, description: str | None = None, custom_info: str | None = None,
                     expires_in: int | None = None, record_session: bool = False) -> dict:
        body: dict[str, Any] = {"device_id": device_id}
        for key, value in (("description", description), ("custom_info", custom_info), ("expires_in", expires_in)):
            if value is not None:
                body[key] = value
        if record_session:
            body["record_session"] = True
        return await self._call("POST", json=body)

    async def list_page(self, *, device_id: str | None = None, status: str | None = None, limit: int | None = None,
                   marker: str | None = None, offset: int | None = None) -> dict:
        return await self._call("GET", params={"device_id": device_id, "status": status, "limit": limit,
                                               "marker": marker, "offset": offset})

    async def list_all(self, *, device_id: str | None = None, status: str | None = None) -> list[dict]:
        """Every matching tunnel, page after page."""
        found: list[dict] = []
        marker = None
        while True:
            page = await self.list_page(device_id=device_id, status=status, limit=PAGE_MAX, marker=marker)
            found += page["tunnels"]
            marker = (page.get("page") or {}).get("marker")
            if not page["tunnels"] or not marker or len(found) >= (page.get("page") or {}).get("count", 0):
                return found

    async def show(self, tunnel_id: str) -> dict:
        return await self._call("GET", f"/{quote(tunnel_id, safe='')}")

    async def close(self, tunnel_id: str) -> None:
        await self._call("PUT", f"/{quote(tunnel_id, safe='')}")

    async def delete(self, tunnel_id: str) -> None:
        await self._call("DELETE", f"/{quote(tunnel_id, safe='')}")

    async def rotate(self, tunnel_id: str, side: str = "source") -> dict:
        return await self._call("POST", f"/{quote(tunnel_id, safe='')}/rotate-token", json={"side": side})

    async def batch(self, action: str, tunnel_ids: list[str]) -> dict:
        """`close` or `delete` many tunnels, 100 per call; the answers merged into one."""
        assert action in ("close", "delete")
        merged: dict[str, Any] = {"results": [], "success_count": 0, "failure_count": 0}
        ids = list(dict.fromkeys(tunnel_ids))   # the relay refuses duplicates
        for i in range(0, len(ids), BATCH_MAX):
            answer = await self._call("POST", f"/batch-{action}", json={"tunnel_ids": ids[i:i + BATCH_MAX]})
            merged["results"] += answer.get("results", [])
            merged["success_count"] += answer.get("success_count", 0)
            merged["failure_count"] += answer.get("failure_count", 0)
        return merged


    # -- the audit trail and session recordings (docs/audit.md) ----------------------------

    def _project_url(self, path: str) -> str:
        return f"{self.url}/v5/iot/{quote(self.project, safe='')}{path}"

    async def audit_page(self, *, device_id: str | None = None, tunnel_id: str | None = None,
                         event_types: list[str] | None = None, since: str | None = None, until: str | None = None,
                         limit: int | None = None, marker: str | None = None) -> dict:
        """One page of the audit trail: {"events", "count", "marker"} (newest first)."""
        params = {"device_id": device_id, "tunnel_id": tunnel_id,
                  "event_type": ",".join(event_types) if event_types else None,
                  "since": since, "until": until, "limit": limit, "marker": marker}
        return await self._call("GET", url=self._project_url("/audit"), params=params)

    async def recording(self, session_id: str) -> bytes:
        """A session recording: the asciicast v2 file, as stored."""
        return await self._call("GET", url=self._project_url(f"/recordings/{quote(session_id, safe='')}"),
                                raw_body=True)


def _error(status: int, content_type: str, raw: bytes) -> ApiError:
    if content_type == "application/json":
        try:
            body = orjson.loads(raw)
            return ApiError(status, str(body.get("error_code") or f"HTTP.{status}"),
                            str(body.get("error_msg") or "no message"))
        except (orjson.JSONDecodeError, AttributeError):
            pass
    text = raw[:200].decode("utf-8", "replace").strip() or "no message"
    return ApiError(status, f"HTTP.{status}", text)
