"""One tunnel on the device side: the WebSocket (relay/ends/websocket.py) to the
device-connect address, the SSH shell behind it, reconnection. The decisions are
`session.py`'s (messages) and relay/closes.py's (what follows a close or a refusal)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from relay import closes
from relay.agent.forwarding import ForwardHost
from relay.agent.session import CloseShell, DeviceSession, Effect, OpenShell, Send, WriteShell
from relay.agent.settings import AgentSettings
from relay.agent.ssh import LoginFailed, Shell
from relay.closes import Backoff, Next
from relay.ends import huawei_tcp
from relay.ends.pipes import describe
from relay.ends.websocket import SEND_ERRORS, ClientSocket, Connector, Refused, Unreachable
from relay.notify import TunnelNotify

log = logging.getLogger(__name__)

_GONE: tuple[type[BaseException], ...] = (*SEND_ERRORS, RuntimeError)   # what a send on a closed WebSocket raises

STABLE_AFTER = 10.0   # a connection that lasted this long resets the backoff


class TunnelClient:
    def __init__(self, notify: TunnelNotify, settings: AgentSettings) -> None:
        self.settings = settings
        self.tunnel_id = notify.tunnel_id
        self._uri = notify.tunnel_uri
        self._token = notify.token
        self._token_changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + max(0, notify.expires_in)
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._shell: Shell | None = None
        self._pump: asyncio.Task[None] | None = None
        self.forwards: ForwardHost | None = None   # the current connection's forwarded TCP connections
        self.outcome: str | None = None   # why run() returned, for logs and tests

    def extra(self) -> dict[str, str]:
        return {"tunnel_id": self.tunnel_id, "device_id": self.settings.device_id}

    def update(self, notify: TunnelNotify) -> None:
        """A new notify for this tunnel (its device token was rotated): use the new token."""
        self._uri = notify.tunnel_uri
        if notify.token != self._token:
            self._token = notify.token
            self._token_changed.set()
        self._deadline = asyncio.get_running_loop().time() + max(0, notify.expires_in)

    # -- the connection loop -------------------------------------------------------------

    async def run(self) -> str:
        ssl_context = self._ssl_context()
        async with Connector() as connector:
            while True:
                if asyncio.get_running_loop().time() >= self._deadline:
                    return self._finish("the tunnel's lifetime is over")
                self._token_changed.clear()
                token = self._token
                try:
                    ws = await connector.open(self._uri, headers={"tunnel_access_token": token}, ssl=ssl_context,
                                              heartbeat=self.settings.heartbeat)
                except Refused as exc:
                    decision = closes.after_refusal(exc.status).next
                    log.warning("the relay refused the connection (HTTP %s): %s", exc.status, decision.value,
                                extra=self.extra())
                except Unreachable as exc:
                    decision = Next.RECONNECT
                    log.warning("cannot reach the relay (%s); will retry", _describe(exc.error), extra=self.extra())
                else:
                    started = asyncio.get_running_loop().time()
                    log.info("connected to the relay", extra=self.extra())
                    try:
                        code = await self._serve(ws)
                    finally:
                        await ws.close()
                    decision = closes.after_close(code).next
                    log.info("the relay connection ended (close code %s): %s", code, decision.value, extra=self.extra())
                    if asyncio.get_running_loop().time() - started >= STABLE_AFTER:
                        self._backoff.reset()
                if decision is Next.STOP:
                    return self._finish("the relay ended the tunnel")
                if decision is Next.WAIT_FOR_TOKEN:
                    if self._token == token:
                        log.info("waiting for a new device token over MQTT", extra=self.extra())
                    if not await self._wait_for_token(None):
                        return self._finish("the tunnel's lifetime ran out while waiting for a new token")
                    self._backoff.reset()
                    continue
                delay = self._backoff.next_delay()
                log.info("reconnecting in %.1f s", delay, extra=self.extra())
                await self._wait_for_token(delay)   # a new token cuts the wait short

    async def _wait_for_token(self, delay: float | None) -> bool:
        """Wait for a token change (up to `delay` s when given); False when the lifetime ends first."""
        if self._token_changed.is_set():
            return True
        left = self._deadline - asyncio.get_running_loop().time()
        limit = left if delay is None else min(delay, left)
        try:
            await asyncio.wait_for(self._token_changed.wait(), max(0.0, limit))
            return True
        except TimeoutError:
            return delay is not None and left > delay

    def _finish(self, why: str) -> str:
        self.outcome = why
        log.info("tunnel done: %s", why, extra=self.extra())
        return why

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """aiohttp's `ssl=`: True verifies with the system's CAs (ws:// ignores it)."""
        if self.settings.tls_insecure:
            return False
        if self.settings.tls_ca_file:
            return ssl.create_default_context(cafile=self.settings.tls_ca_file)
        return True

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, ws: ClientSocket) -> int | None:
        session = DeviceSession(self.settings.max_message_size)
        forwards = ForwardHost(self.settings, ws.send, self.extra())
        forwards.pipes.attach(ws)   # the `tcp` service's data: the socket's codec path, not messages
        self.forwards = forwards
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue   # binary frames are not part of the protocol; the relay never sends them
                # The `tcp` service goes to the forwarding host; `ssh` to the session as before.
                # The relay's own `disconnect` (499: the source left) concerns both.
                parsed = huawei_tcp.parse(message)
                if parsed is not None and parsed.service == huawei_tcp.SERVICE:
                    await forwards.received(parsed)
                    continue
                if parsed is not None and parsed.op == "disconnect":
                    await forwards.relay_disconnect(parsed)
                await self._apply(session, ws, session.received(message))
        finally:
            await forwards.close("the tunnel's WebSocket ended")
            await self._apply(session, ws, session.connection_lost())
            await self._close_shell()
        return ws.close_code

    async def _apply(self, session: DeviceSession, ws: ClientSocket, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                if not ws.closed:
                    await ws.send(effect.payload.decode())
            elif isinstance(effect, WriteShell):
                if self._shell is not None:
                    self._shell.write(effect.data)
            elif isinstance(effect, OpenShell):
                await self._close_shell()
                await self._apply(session, ws, await self._open_shell(session, ws, effect))
            elif isinstance(effect, CloseShell):
                log.info("SSH session ended: %s", effect.reason, extra=self.extra())
                await self._close_shell()

    async def _open_shell(self, session: DeviceSession, ws: ClientSocket,
                          request: OpenShell) -> list[Effect]:
        s = self.settings
        log.info("SSH login to %s:%s as %r", s.ssh_host, s.ssh_port, request.username, extra=self.extra())
        try:
            self._shell = await Shell.open(s.ssh_host, s.ssh_port, request.username, request.password,
                                           known_hosts=s.ssh_known_hosts, timeout=s.ssh_timeout)
        except LoginFailed as exc:
            log.warning("SSH login failed: %s", exc.message, extra=self.extra())
            return session.login_failed(request.request_id, exc.code, exc.message)
        log.info("SSH session open", extra=self.extra())
        effects = session.login_succeeded(
            request.request_id, f"logged in to {s.ssh_host}:{s.ssh_port} as {request.username}")
        # The answer goes before any output, so start reading once it is sent.
        await self._apply(session, ws, effects)
        self._pump = asyncio.create_task(self._pump_output(session, ws, self._shell), name="ssh-output")
        return []

    async def _pump_output(self, session: DeviceSession, ws: ClientSocket, shell: Shell) -> None:
        """Terminal output to the relay, in order, until the shell ends."""
        try:
            while True:
                data = await shell.read()
                if not data:
                    break
                await self._apply(session, ws, session.output(data))
            if self._shell is shell:
                effects = session.shell_ended(shell.exit_status)
                for effect in effects:   # the pump cannot close itself: leave CloseShell to the caller
                    if isinstance(effect, Send) and not ws.closed:
                        await ws.send(effect.payload.decode())
                self._shell = None
                self._pump = None
                await shell.close()
        except _GONE:
            pass   # the WebSocket went away; the connection loop handles that

    async def _close_shell(self) -> None:
        shell, pump = self._shell, self._pump
        self._shell = self._pump = None
        if shell is not None:
            await shell.close()
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def _describe(exc: BaseException) -> str:
    return "timed out" if isinstance(exc, asyncio.TimeoutError) else describe(exc)
