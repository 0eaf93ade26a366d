"""One end of one AWS-protocol tunnel (either mode): the WebSocket to the relay
(relay/ends/websocket.py), reconnected with the same access token and client token after it
drops (the one loop of every end, relay/ends/reconnect.py; this end counts its failed
attempts), and a `StreamPipes` per connection (relay/ends/pipes.py). What follows a close or a
refusal is relay/closes.py's policy; the stream rules are relay/ends/aws_streams.py's.

Used by the device agent (destination, relay/agent/aws.py) and by `relay localproxy -s` /
`relay forward --protocol aws` (source, relay/client/aws_tunnel.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from relay import closes
from relay.aws_messages import VERSION_OF, new_client_token, subprotocols, valid_client_token
from relay.closes import Attempt, Backoff, Closed, CloseCode, Next, Reconnect, Refusal, Step, Unreached
from relay.ends.aws_streams import EndStreams
from relay.ends.pipes import StreamPipes
from relay.ends.reconnect import keep_connected, why_unreached
from relay.ends.websocket import ClientSocket, Connector, send_on

log = logging.getLogger(__name__)


def tunnel_url(endpoint: str, mode: str) -> str:
    """The data-plane address of `endpoint` (`http(s)://` or `ws(s)://HOST[:PORT]`, or a bare
    `HOST[:PORT]`, taken as wss://) for a mode: `.../tunnel?local-proxy-mode=MODE`."""
    text = endpoint.strip().split("?", 1)[0].rstrip("/")
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if text.startswith(plain):
            text = ws + text[len(plain):]
    if not text.startswith(("ws://", "wss://")):
        text = "wss://" + text
    if text.endswith("/tunnel"):
        text = text[:-len("/tunnel")]
    return f"{text}/tunnel?local-proxy-mode={mode}"


def aws_endpoint(region: str) -> str:
    """AWS's own data-plane endpoint of a region (what its localproxy's `-r` means)."""
    return f"wss://data.tunneling.iot.{region}.amazonaws.com"


class Session:
    """One end of one tunnel. `run()` returns why it stopped: a refused handshake (4xx), the
    relay ending the tunnel (close code 1000; `failed` stays False), another close that says
    this end is done (4000 replaced, 4001 rotated, ...), or `max_attempts` failed
    reconnections in a row. `on_connected` runs after each handshake, with the new pipes
    (the source starts its listeners there)."""

    def __init__(self, *, mode: str, endpoint: str, token: str, make_table: Callable[[int], EndStreams],
                 client_token: str | None = None, highest: int = 3, ssl: ssl.SSLContext | bool = True,
                 heartbeat: float = 20.0, reconnect_initial: float = 1.0, reconnect_max: float = 30.0,
                 max_attempts: int | None = None, extra: dict[str, str] | None = None,
                 on_connected: Callable[[StreamPipes], Awaitable[None]] | None = None) -> None:
        if mode not in ("source", "destination"):
            raise ValueError(f"mode {mode!r}: source or destination")
        self.mode = mode
        self.url = tunnel_url(endpoint, mode)
        self._token = token
        self.client_token = client_token or new_client_token()
        if not valid_client_token(self.client_token):
            raise ValueError("a client token is 32-128 of A-Z a-z 0-9 -")
        self.make_table = make_table
        self.highest = highest
        self.ssl = ssl
        self.heartbeat = heartbeat
        self.reconnect_initial, self.reconnect_max = reconnect_initial, reconnect_max
        self.max_attempts = max_attempts
        self.extra = dict(extra or {})
        self.on_connected = on_connected
        self.pipes: StreamPipes | None = None
        self.connected = asyncio.Event()
        self.version: int | None = None
        self.connections = 0      # successful handshakes (for logs and tests)
        self.outcome: str | None = None
        self.failed = False       # run() ended on a refusal or an error, not because the tunnel is over
        self._socket: ClientSocket | None = None

    async def send(self, data: bytes) -> None:
        await send_on(self._socket, data)

    async def run(self) -> str:
        rules = Reconnect(Backoff(self.reconnect_initial, self.reconnect_max), max_attempts=self.max_attempts)
        headers = {"access-token": self._token, "client-token": self.client_token}
        async with Connector() as connector:
            async def open_socket() -> ClientSocket:
                return await connector.open(self.url, headers=headers, ssl=self.ssl, heartbeat=self.heartbeat,
                                            protocols=subprotocols(self.highest))

            ending = await keep_connected(rules, open=open_socket, serve=self._serve, notice=self._notice)
        attempt = ending.attempt
        if ending.step.gave_up:
            return self._finish(f"giving up after {self.max_attempts} attempts to reconnect", failed=True)
        if isinstance(attempt, Refusal):
            # This end holds no way to a new token: waiting for one is the end of it.
            return self._finish(f"the relay refused the {self.mode} token (HTTP {attempt.status})", failed=True)
        code = attempt.code if isinstance(attempt, Closed) else None
        return self._finish(f"the relay ended the connection: {closes.describe_close(code)}",
                            failed=code != CloseCode.NORMAL)

    def _notice(self, attempt: Attempt, step: Step) -> None:
        if isinstance(attempt, Refusal) and step.verdict.next is Next.RECONNECT:
            log.warning("the relay refused the connection (HTTP %s); will retry", attempt.status, extra=self.extra)
        elif isinstance(attempt, Unreached):
            log.warning("cannot reach the relay at %s (%s); will retry", self.url.split("?")[0], why_unreached(attempt),
                        extra=self.extra)
        if step.next is Next.RECONNECT:
            log.info("reconnecting in %.1f s", step.delay, extra=self.extra)

    async def _serve(self, socket: ClientSocket) -> Closed:
        """Until the connection ends: its close code, and whether this end closed it itself
        because the relay's bytes were not the protocol."""
        version = VERSION_OF.get(socket.protocol or "")
        if version is None:
            log.warning("the relay chose no known subprotocol (%r); closing", socket.protocol, extra=self.extra)
            await socket.close(CloseCode.PROTOCOL_ERROR)
            return Closed(socket.close_code, ours=True)
        self.version = version
        self.connections += 1
        self._socket = socket
        pipes = StreamPipes(self.make_table(version), self.send, extra=self.extra)
        pipes.attach(socket)   # DATA: the socket's codec path, not messages
        self.pipes = pipes
        self.connected.set()
        ours = False
        log.info("connected to the relay as %s (%s)", self.mode, socket.protocol, extra=self.extra)
        try:
            if self.on_connected is not None:
                await self.on_connected(pipes)
            async for message in socket:
                if isinstance(message, str):
                    log.warning("the relay sent a text frame (the protocol is binary only); reconnecting",
                                extra=self.extra)
                    ours = True
                    await socket.close(CloseCode.UNSUPPORTED_DATA)
                    break
                try:
                    await pipes.feed(message)
                except ValueError as exc:
                    log.warning("the relay sent bytes that are not the protocol (%s); reconnecting", exc,
                                extra=self.extra)
                    ours = True
                    await socket.close(CloseCode.PROTOCOL_ERROR)
                    break
        finally:
            self.connected.clear()
            self._socket = None
            n = await pipes.lost()
            await socket.close()
            log.info("the relay connection ended (close code %s)%s", socket.close_code,
                     f": reset {n} connection(s)" if n else "", extra=self.extra)
        return Closed(socket.close_code, ours=ours or socket.broke_rules)

    def _finish(self, why: str, failed: bool) -> str:
        self.outcome = why
        self.failed = failed
        log.info("tunnel session over: %s", why, extra=self.extra)
        return why
