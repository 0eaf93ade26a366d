"""`relay forward`: TCP port forwarding through a tunnel, the source end (docs/forwarding.md).

It acquires the tunnel as `relay ssh` does (relay/client/remote.py), connects the source
end, waits for `connect_tunnel`, then listens on a local address; every accepted TCP
connection becomes a forwarded connection (`forward_open` to the device's port, then a
`TcpPipe` of relay/ends/pipes.py). Connections are independent: one ending does not touch the
others. When the device goes away (499) or the WebSocket ends, the open connections are
aborted with a line on stderr; the listener stays, and new connections wait for the device
(a lost WebSocket is reconnected with growing delays)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl as ssl_
from collections.abc import Callable

import aiohttp

from relay.client import output
from relay.client.api import ClientError, RelayApi, source_uri
from relay.client.remote import (EXIT_FAILURE, Opened, Waiter, connect_error, open_source, open_tunnel, take_over_tunnel,
                                 waiter_for)
from relay.client.running import stop_on_signals, token_and_target, until
from relay.client.terminal import Terminal
from relay.client.waiting import PROGRESS_EVERY, gave_up, still_waiting
from relay.closes import Attempt, Backoff, Closed, Next, Reconnect, Step, describe_close, disconnect_is_final
from relay.ends import huawei_tcp
from relay.ends.listeners import Listener, hostport
from relay.ends.localproxy_args import split_endpoint
from relay.ends.pipes import TcpPipe, TcpPipes
from relay.ends.reconnect import keep_connected
from relay.ends.websocket import SEND_ERRORS, ClientSocket, send_on, tls_setting
from relay.errors import ConfigError

MAX_RECONNECTS = 10


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `PORT` (on 127.0.0.1)."""
    host, port = split_endpoint(text, "127.0.0.1")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--listen {text!r}: port outside 0-65535")
    return host, number


class Forwarder:
    """The source end of forwarding for one tunnel: one local listener, one WebSocket at a time."""

    def __init__(self, http: aiohttp.ClientSession, opened: Opened, *, port: int, listen: tuple[str, int],
                 wait: float, ssl: ssl_.SSLContext | bool, notice: Callable[[str], None],
                 error: Callable[[str], None], announce: Callable[[str], None],
                 waiter: Waiter | None = None) -> None:
        self.http = http
        self.waiter = waiter   # who we wait for and how to read the tunnel: progress lines
        self.opened = opened
        self.port = port
        self.listen = listen
        self.wait = wait
        self.ssl = ssl
        self.notice, self.error, self.announce = notice, error, announce
        self.pipes = TcpPipes()
        self.device_ready = asyncio.Event()
        self.address: tuple[str, int] | None = None   # where it listens, once it does
        self.listening = asyncio.Event()
        self._ws: ClientSocket | None = None
        self._responses: dict[str, asyncio.Future[tuple[str, str]]] = {}
        self._final: str | None = None
        self._listener = Listener(self._handle)

    async def send(self, payload: str) -> None:
        await send_on(self._ws, payload)

    # -- the WebSocket, reconnected (relay/ends/reconnect.py) -----------------------------------

    async def run(self) -> int:
        try:
            ending = await keep_connected(reconnect_rules(), open=self._open, serve=self._serve,
                                          notice=self._notice)
            if not isinstance(ending.attempt, Closed):   # said by forward_async, as any command's
                raise connect_error(self.opened.uri, ending.attempt)
            return EXIT_FAILURE
        finally:
            self._listener.close()
            await self._shutdown()

    async def _open(self) -> ClientSocket:
        self._ws = await open_source(self.http, self.opened, self.ssl)
        return self._ws

    async def _serve(self, ws: ClientSocket) -> Closed:
        """One connection: the first waits for the device, then listens; every one relays
        until it ends, then aborts the forwarded connections."""
        self.notice("waiting for the device's end of the tunnel (its agent) to connect...")
        reader = asyncio.create_task(self._read(ws))
        if not self.listening.is_set():
            await self._wait_for_device(reader)
            if not self.device_ready.is_set():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                if self._final is None and self.waiter is not None:
                    self._final = gave_up(self.waiter[0], self.wait, await self.waiter[1]())
                return Closed(ws.close_code, stop=self._final or f"the device did not connect within {self.wait:g} s: "
                              "is it online, and does it run `relay agent`?")
            host, port = await self._listener.start(*self.listen)
            self.address = (host, port)
            self.listening.set()
            self.announce(f"forwarding {hostport(host, port)} -> device port {self.port}")
        code = await reader
        proved = self.device_ready.is_set()   # the device was there: the way works
        self.device_ready.clear()
        n = await self.pipes.abort_all("the tunnel's WebSocket ended")
        if n:
            self.error(f"the connection to the relay ended: aborted {n} forwarded connection(s)")
        return Closed(code, ours=ws.broke_rules, proved=proved, stop=self._final)

    def _notice(self, attempt: Attempt, step: Step) -> None:
        if not isinstance(attempt, Closed):
            if step.next is Next.RECONNECT:
                self.error(f"{connect_error(self.opened.uri, attempt)}; retrying in {step.delay:g} s")
            return   # a final one is run()'s to raise
        if attempt.stop is not None:
            self.error(attempt.stop)
        elif step.gave_up:
            self.error(f"{describe_close(attempt.code)}; giving up after {MAX_RECONNECTS} attempts")
        elif step.next is not Next.RECONNECT:   # a new token could only come from us
            self.error(f"the relay ended the session: {describe_close(attempt.code)}")
        else:
            self.error(f"{describe_close(attempt.code)}; reconnecting in {step.delay:g} s")

    async def _shutdown(self) -> None:
        """Stopping: tell the device about every open connection, then end them."""
        for pipe in list(self.pipes.by_id.values()):
            await pipe.abort("relay forward stopped")
        await self._listener.end_handlers()
        await self.pipes.abort_all("relay forward stopped")
        if self._ws is not None:
            await self._ws.close(timeout=5)

    async def _read(self, ws: ClientSocket) -> int | None:
        self.pipes.attach(ws)   # the `tcp` service's data: the socket's codec path, not messages
        async for message in ws:
            if not isinstance(message, str):
                continue
            msg = huawei_tcp.parse(message)
            if msg is None:
                continue
            if msg.op == "connect_tunnel":
                if not self.device_ready.is_set():
                    self.device_ready.set()
                    self.notice("the device is connected")
            elif msg.op == huawei_tcp.OPEN_RESPONSE:
                pipe = self.pipes.by_id.get(msg.conn_id)
                if pipe is not None:
                    pipe.conn.peer_announced(msg.data)   # the device's window, before its data
                future = self._responses.pop(msg.conn_id, None)
                if future is not None and not future.done():
                    future.set_result(huawei_tcp.status_of(msg.data))
            elif msg.op in (huawei_tcp.DATA, huawei_tcp.ACK, huawei_tcp.CLOSE):
                await self.pipes.route(msg)   # a late message for a finished connection: nothing to do
            elif msg.op == "disconnect":
                if await self._disconnect(msg):
                    break
        return ws.close_code

    async def _disconnect(self, msg: huawei_tcp.Message) -> bool:
        """The relay's disconnect; True when it ends this WebSocket."""
        code, text = huawei_tcp.status_of(msg.data)
        if code == "499":
            self.device_ready.clear()
            n = await self.pipes.abort_all("the device disconnected")
            self.error(f"{text or 'the device disconnected'}: aborted {n} forwarded connection(s); "
                       "waiting for it to come back")
            return False
        if code == "404":
            self.device_ready.clear()
            future = self._responses.pop(msg.conn_id, None)
            if future is not None and not future.done():
                future.set_result((code, text or "the device is not connected"))
            pipe = self.pipes.by_id.get(msg.conn_id)
            if pipe is not None:
                self.error(f"connection {msg.conn_id} aborted: {text or 'the device is not connected'}")
                await pipe.abort("the device is not connected", tell_peer=False)
            return False
        if disconnect_is_final(code):
            self._final = f"the relay ended the session ({code}): {text}"
            return True
        return False

    async def _wait_for_device(self, reader: asyncio.Task[object]) -> None:
        """Until the device's end is there, the WebSocket ends or --wait is over; with a
        waiter, a line every PROGRESS_EVERY seconds on what the wait is for."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ready = asyncio.create_task(self.device_ready.wait())
        try:
            while not ready.done() and not reader.done():
                left = started + self.wait - loop.time()
                if left <= 0:
                    return
                step = min(left, PROGRESS_EVERY) if self.waiter is not None else left
                await asyncio.wait({reader, ready}, timeout=step, return_when=asyncio.FIRST_COMPLETED)
                if self.waiter is not None and not ready.done() and not reader.done() and loop.time() - started < self.wait:
                    tunnel = await self.waiter[1]()
                    if not self.device_ready.is_set():
                        self.notice(still_waiting(self.waiter[0], loop.time() - started, self.wait, tunnel))
        finally:
            ready.cancel()

    # -- local connections ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = hostport(*writer.get_extra_info("peername")[:2])
        if not self.device_ready.is_set():
            self.notice(f"connection from {peer}: waiting for the device...")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.device_ready.wait(), self.wait)
            if not self.device_ready.is_set():
                self.error(f"connection from {peer} closed: the device did not connect within {self.wait:g} s")
                writer.close()
                return
        conn_id = huawei_tcp.new_connection_id()
        pipe = TcpPipe(huawei_tcp.Connection(conn_id), reader, writer, self.send)
        future: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._responses[conn_id] = future
        self.pipes.add(pipe)   # before forward_open: data may follow the answer at once
        try:
            await self.send(huawei_tcp.open_message(conn_id, self.port))
            code, text = await asyncio.wait_for(future, self.wait)
        except TimeoutError:
            code, text = "504", f"the device did not answer within {self.wait:g} s"
            with contextlib.suppress(Exception):
                await self.send(huawei_tcp.close_message(conn_id, "error: no answer to forward_open"))
        except SEND_ERRORS as exc:
            code, text = "502", f"the tunnel is not connected ({type(exc).__name__})"
        finally:
            self._responses.pop(conn_id, None)
        if code != "200":
            self.error(f"connection from {peer} closed: the device refused port {self.port} "
                       f"({code or 'no status'}: {text or 'no reason given'})")
            pipe.close(f"refused: {code} {text}")
            return
        self.notice(f"connection {conn_id} from {peer} -> device port {self.port}: open")
        pipe.start()
        await pipe.wait_closed()
        c = pipe.conn
        how = f"aborted ({c.aborted})" if c.aborted else "closed"
        self.notice(f"connection {conn_id} {how}: {c.bytes_out} bytes sent, {c.bytes_in} received")


def reconnect_rules() -> Reconnect:
    """How `relay forward` reconnects (relay/closes.py's policy): delays of 1, 2, 4 ... 30 s
    without jitter (it prints them), MAX_RECONNECTS failures in a row at most, a connection on
    which the device was there proves the way works, no way to a new token, and a first
    attempt that cannot connect is final (it listens only once it reached the device)."""
    return Reconnect(Backoff(1.0, 30.0, jitter=0), max_attempts=MAX_RECONNECTS, stable_after=None,
                     first_must_open=True)


# -- the command ------------------------------------------------------------------------------


def forward_failed(error: Callable[[str], None], listen: tuple[str, int], exc: OSError | ClientError) -> int:
    """What `relay forward` (either protocol) says when it cannot listen (an OSError of the
    local listener) or the relay or the tunnel failed it; its exit status."""
    if isinstance(exc, ClientError):
        error(f"relay: {exc}")
    else:
        error(f"relay: cannot listen on {hostport(*listen)}: {exc.strerror or exc}")
    return EXIT_FAILURE


def forward_command(args: argparse.Namespace) -> int:
    token = token_and_target(args)
    listen = parse_listen(args.listen)
    terminal = Terminal(quiet=args.quiet)
    return asyncio.run(forward_async(args, terminal, listen, token))


async def forward_async(args: argparse.Namespace, terminal: Terminal, listen: tuple[str, int], token: str | None,
                        *, stop: asyncio.Event | None = None,
                        started: Callable[[Forwarder], None] | None = None) -> int:
    """Until `stop` (SIGINT or SIGTERM by default) or the tunnel ends. `started` sees the
    Forwarder before it connects (tests read its counters)."""
    from relay.client.commands import _after, make_api   # the settings and the close-on-exit of ssh/exec

    stop = stop or stop_on_signals()
    api: RelayApi | None = None if (args.tunnel and token and args.keep) else make_api(args)

    def announce(text: str) -> None:
        output.say(text)

    async with contextlib.AsyncExitStack() as stack:
        if api is not None:
            await stack.enter_async_context(api)
            http, ssl = api.http, api.ssl
        else:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            ssl = tls_setting(args.ca_file, args.insecure)
        assert http is not None
        opened: Opened | None = None
        try:
            if args.tunnel and token:
                opened = Opened(args.tunnel, source_uri(args.url, args.tunnel), token, created=False)
            elif args.tunnel:
                assert api is not None
                opened = await take_over_tunnel(api, args.tunnel, terminal.notice)
            else:
                assert api is not None
                opened = await open_tunnel(api, args.device_id, terminal.notice, expires_in=args.expires_in,
                                           description=f"relay forward to port {args.port}")
            terminal.notice("connecting to the relay...")
            waiter: Waiter | None = None
            if api is not None:
                waiter = waiter_for(api, args.device_id or f"the device of tunnel {opened.tunnel_id}", opened.tunnel_id)
            forwarder = Forwarder(http, opened, port=args.port, listen=listen, wait=args.wait, ssl=ssl,
                                  notice=terminal.notice, error=terminal.error, announce=announce, waiter=waiter)
            if started is not None:
                started(forwarder)
            return await until(forwarder.run(), stop, terminal.notice)
        except (OSError, ClientError) as exc:
            return forward_failed(terminal.error, listen, exc)
        finally:
            if opened is not None and api is not None:
                await _after(api, args, opened, terminal)
