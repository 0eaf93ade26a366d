"""The device end of TCP forwarding (the `tcp` service, docs/forwarding.md): a
`forward_open` for a port on the allow-list connects to `forward_host:port`, and a `TcpPipe`
(relay/ends/pipes.py) joins that connection to the tunnel. One `ForwardHost` per tunnel
WebSocket connection; its connections are aborted when the WebSocket ends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from relay.agent.settings import AgentSettings
from relay.ends import huawei_tcp
from relay.ends.local_streams import open_local
from relay.ends.pipes import TcpPipe, TcpPipes

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0


class ForwardHost:
    def __init__(self, settings: AgentSettings, send: Callable[[str], Awaitable[None]],
                 extra: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.host = settings.forward_host or settings.ssh_host
        self.ports = frozenset(settings.forward_ports)
        self.port_map = dict(settings.forward_port_map)
        self._send = send
        self.extra = dict(extra or {})
        self.pipes = TcpPipes()
        self._opening: dict[str, asyncio.Task[None]] = {}

    async def received(self, msg: huawei_tcp.Message) -> None:
        """A message of the `tcp` service (or the relay's `disconnect` about one)."""
        if msg.op == huawei_tcp.OPEN:
            if msg.conn_id in self._opening or msg.conn_id in self.pipes.by_id:
                return   # the relay refuses a reused forward_open id (4409): cannot happen
            task = asyncio.create_task(self._open(msg.conn_id, msg.data), name=f"fwd-open-{msg.conn_id}")
            self._opening[msg.conn_id] = task
            task.add_done_callback(functools.partial(self._opened, msg.conn_id))
        elif msg.op in (huawei_tcp.DATA, huawei_tcp.ACK, huawei_tcp.CLOSE):
            if await self.pipes.route(msg):
                return
            opening = self._opening.get(msg.conn_id)
            if msg.op == huawei_tcp.CLOSE and opening is not None:
                opening.cancel()   # the source gave up before the connection was made
        elif msg.op == "disconnect":
            await self.relay_disconnect(msg)

    def _opened(self, conn_id: str, _task: asyncio.Task[None]) -> None:
        self._opening.pop(conn_id, None)

    async def relay_disconnect(self, msg: huawei_tcp.Message) -> None:
        """The relay's `disconnect`: 499 (the source left) ends every forwarded connection;
        one naming a connection (404: the source was not there) ends that one."""
        code, text = huawei_tcp.status_of(msg.data)
        if code == "499":
            n = await self.abort_all(text or "the source disconnected")
            if n:
                log.info("the source left: aborted %d forwarded connection(s)", n, extra=self.extra)
            return
        pipe = self.pipes.by_id.get(msg.conn_id)
        if pipe is not None:
            log.info("forwarded connection aborted: the relay said %s %s", code, text, extra=pipe.extra)
            await pipe.abort(f"{code} {text}".strip(), tell_peer=False)

    async def abort_all(self, reason: str) -> int:
        for task in list(self._opening.values()):
            task.cancel()
        for task in list(self._opening.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return await self.pipes.abort_all(reason)

    async def close(self, reason: str) -> None:
        """The tunnel's WebSocket ended."""
        n = await self.abort_all(reason)
        if n:
            log.warning("%s: aborted %d forwarded connection(s)", reason, n, extra=self.extra)

    async def _open(self, conn_id: str, data: object) -> None:
        extra = {**self.extra, "connection_id": conn_id}
        port = huawei_tcp.requested_port(data)
        if port is None:
            await self._answer(conn_id, "400", "forward_open needs data {\"port\": 1-65535}")
            return
        if port not in self.ports:
            allowed = ", ".join(str(p) for p in sorted(self.ports)) or "none"
            log.warning("forward to port %d refused: not on the allow-list (%s)", port, allowed, extra=extra)
            await self._answer(conn_id, "403", f"port {port} is not on this device's forwarding allow-list ({allowed})")
            return
        port = self.port_map.get(port, port)
        target = f"{self.host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(open_local(self.host, port), CONNECT_TIMEOUT)
        except TimeoutError:
            await self._answer(conn_id, "502", f"cannot connect to {target}: no answer within {CONNECT_TIMEOUT:g} s")
            return
        except OSError as exc:
            why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc))
            log.warning("forward to %s failed: %s", target, why, extra=extra)
            await self._answer(conn_id, "502", f"cannot connect to {target}: {why}")
            return
        conn = huawei_tcp.Connection(conn_id)
        conn.peer_announced(data)   # the source's window (none: an older `relay forward`)
        pipe = TcpPipe(conn, reader, writer, self._send, self.extra)
        self.pipes.add(pipe)   # before the answer: the source may send data right after it
        log.info("forwarded connection to %s open", target, extra=extra)
        try:
            await self._send(huawei_tcp.open_response(conn_id, "200", "connected", window=conn.window))
        except Exception:
            await pipe.abort("the tunnel is gone", tell_peer=False)
            return
        pipe.start()

    async def _answer(self, conn_id: str, code: str, text: str) -> None:
        with contextlib.suppress(Exception):
            await self._send(huawei_tcp.open_response(conn_id, code, text))
