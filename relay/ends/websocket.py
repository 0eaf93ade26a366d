"""The one WebSocket client of both protocols' ends: the agent (device-connect, AWS
destination) and the application side (`relay ssh`/`exec`/`forward`, `relay localproxy`).
An adapter over aiohttp's client, and the only module of relay/ends that imports aiohttp.

Its interface is bytes and messages, so that what sits above it (the reconnect loops, the
stream tables, the pipes) never sees aiohttp and the data path can later be swapped for a raw
asyncio Protocol with one codec call per read:

- `open_socket(...)` -> `ClientSocket`, or raises `Refused` (the upgrade was answered with an
  HTTP status; what follows is relay/closes.py's `after_refusal`) or `Unreachable`;
- `ClientSocket.send(bytes | str)` (a binary or a text message; raises ConnectionError when
  the socket is gone), `async for message in socket` (bytes or str, until the close),
  `close_code` once it ended (None: no close frame; relay/closes.py's `after_close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_
from collections.abc import Mapping, Sequence

import aiohttp

# What a send on a socket that went away may raise (aiohttp's reset error is a ConnectionError).
SEND_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, aiohttp.ClientError)


def tls_setting(ca_file: str | None = None, insecure: bool = False) -> ssl_.SSLContext | bool:
    """What `open`'s `ssl=` takes (ws:// ignores it): False checks no certificate (--insecure),
    a context trusts `ca_file`, True verifies with the system's CAs."""
    if insecure:
        return False
    if ca_file:
        return ssl_.create_default_context(cafile=ca_file)
    return True


class Refused(Exception):
    """The relay answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the relay refused the connection (HTTP {status})")
        self.status = status


class Unreachable(Exception):
    """No WebSocket: the relay could not be reached, or the connection failed before the
    upgrade. `error` is what failed (each end words it its own way)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error = error


class NotConnected(ConnectionResetError):
    """A send with no WebSocket up: between two connections, or after the last."""

    def __init__(self) -> None:
        super().__init__("the tunnel's WebSocket is not connected")


async def send_on(socket: ClientSocket | None, data: bytes | str) -> None:
    """Send on the current socket of an end that reconnects (None between two connections)."""
    if socket is None:
        raise NotConnected()
    await socket.send(data)


class ClientSocket:
    """One client WebSocket, messages in and out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    @property
    def protocol(self) -> str | None:
        """The subprotocol the relay chose."""
        return self._ws.protocol

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, data: bytes | str) -> None:
        """One message: binary for bytes, text for str."""
        if self._ws.closed:
            raise NotConnected()
        if isinstance(data, str):
            await self._ws.send_str(data)
        else:
            await self._ws.send_bytes(data)

    def __aiter__(self) -> ClientSocket:
        return self

    async def __anext__(self) -> bytes | str:
        """The next message (bytes: binary, str: text), until the connection ends (a close, an
        error). An iterator, not a generator: a reader that stops early leaves nothing behind."""
        while True:
            msg = await self._ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY or msg.type is aiohttp.WSMsgType.TEXT:
                data: bytes | str = msg.data
                return data
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise StopAsyncIteration

    async def close(self, code: int = 1000, timeout: float | None = None) -> None:
        """Send a close frame (once) and wait for the relay's; errors are of no interest now."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(code=code), timeout)


class Connector:
    """Opens client WebSockets on one aiohttp session: its own (`async with Connector()`), or
    one the caller has (the REST client's)."""

    def __init__(self, http: aiohttp.ClientSession | None = None, *, connect_timeout: float = 15.0) -> None:
        self._http = http
        self._own: aiohttp.ClientSession | None = None
        self._connect_timeout = connect_timeout

    async def __aenter__(self) -> Connector:
        if self._http is None:
            self._own = self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = self._http = None

    async def open(self, url: str, *, headers: Mapping[str, str], ssl: ssl_.SSLContext | bool = True,
                   protocols: Sequence[str] = (), heartbeat: float | None = None) -> ClientSocket:
        """A WebSocket to `url` (autoping, autoclose, no message size limit: the relay checks)."""
        assert self._http is not None, "use the Connector in `async with`"
        try:
            ws = await self._http.ws_connect(url, protocols=tuple(protocols), headers=dict(headers), ssl=ssl,
                                             heartbeat=heartbeat, autoping=True, autoclose=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise Refused(exc.status) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(exc) from None
        return ClientSocket(ws)

