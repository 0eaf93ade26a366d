"""One tunnel on the device side: the WebSocket (relay/ends/websocket.py) to the
device-connect address, the SSH shell behind it, reconnection (the one loop of every end,
relay/ends/reconnect.py). The decisions are `session.py`'s (messages) and relay/closes.py's
(what follows a close or a refusal); what is the agent's own: a rotated token comes over MQTT
(`update`), and the tunnel's lifetime bounds the attempts."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay.agent.forwarding import ForwardHost
from relay.agent.session import CloseShell, DeviceSession, Effect, OpenShell, ToSource, WriteShell
from relay.agent.settings import AgentSettings
from relay.agent.ssh import LoginFailed, Shell
from relay.closes import Attempt, Backoff, Closed, Next, Reconnect, Refusal, Step, Unreached
from relay.ends import huawei_tcp
from relay.ends.reconnect import keep_connected, why_unreached
from relay.ends.websocket import SEND_ERRORS, ClientSocket, Connector, tls_setting
from relay.notify import TunnelNotify

log = logging.getLogger(__name__)

_GONE: tuple[type[BaseException], ...] = (*SEND_ERRORS, RuntimeError)   # what a send on a closed WebSocket raises


class TunnelClient:
    def __init__(self, notify: TunnelNotify, settings: AgentSettings) -> None:
        self.settings = settings
        self.tunnel_id = notify.tunnel_id
        self._uri = notify.tunnel_uri
        self._token = notify.token
        self._token_changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + max(0, notify.expires_in)
        self._tried = self._token   # the token of the latest attempt
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

    # -- the connection, kept (relay/ends/reconnect.py) -----------------------------------

    async def run(self) -> str:
        if self._lifetime_over():
            return self._finish("the tunnel's lifetime is over")
        s = self.settings
        rules = Reconnect(Backoff(s.reconnect_initial, s.reconnect_max), new_tokens=True)
        ssl = tls_setting(s.tls_ca_file, s.tls_insecure)
        async with Connector() as connector:
            async def open_socket() -> ClientSocket:
                self._token_changed.clear()
                self._tried = self._token
                return await connector.open(self._uri, headers={"tunnel_access_token": self._tried}, ssl=ssl,
                                            heartbeat=s.heartbeat)

            ending = await keep_connected(rules, open=open_socket, serve=self._serve, notice=self._notice,
                                          pause=self._pause)
        return self._finish(ending.why or "the relay ended the tunnel")

    def _notice(self, attempt: Attempt, step: Step) -> None:
        if isinstance(attempt, Refusal):
            log.warning("the relay refused the connection (HTTP %s): %s", attempt.status, step.next.value,
                        extra=self.extra())
        elif isinstance(attempt, Unreached):
            log.warning("cannot reach the relay (%s); will retry", why_unreached(attempt), extra=self.extra())
        else:
            log.info("the relay connection ended (close code %s): %s", attempt.code, step.next.value,
                     extra=self.extra())

    async def _pause(self, step: Step) -> str | None:
        """Until the next attempt: a new token (WAIT_FOR_TOKEN), or the delay, which a new
        token cuts short. A reason to stop when the tunnel's lifetime ends first."""
        if step.next is Next.WAIT_FOR_TOKEN:
            if self._token == self._tried:
                log.info("waiting for a new device token over MQTT", extra=self.extra())
            if not await self._wait_for_token(None):
                return "the tunnel's lifetime ran out while waiting for a new token"
        else:
            log.info("reconnecting in %.1f s", step.delay, extra=self.extra())
            await self._wait_for_token(step.delay)
        return "the tunnel's lifetime is over" if self._lifetime_over() else None

    def _lifetime_over(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

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

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, ws: ClientSocket) -> Closed:
        log.info("connected to the relay", extra=self.extra())
        try:
            code = await self._relay(ws)
        finally:
            await ws.close()
        return Closed(code, ours=ws.broke_rules)   # as every end: our close over bad bytes reconnects

    async def _relay(self, ws: ClientSocket) -> int | None:
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
            if isinstance(effect, ToSource):
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
                    if isinstance(effect, ToSource) and not ws.closed:
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

