"""The source end's I/O: find or create the tunnel, connect its source-connect WebSocket
(relay/ends/websocket.py), and drive a `SourceSession` with it for `relay ssh` and `relay exec`.
The decisions are session.py's and relay/closes.py's; this module only moves messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl as ssl_
from collections.abc import Awaitable, Callable

import aiohttp

from relay.client.api import ApiError, ClientError, RelayApi, Unreachable, source_uri
from relay.client.session import Ended, Event, ExecFraming, Notice, Output, Phase, ToDevice, SourceSession
from relay.client.terminal import Terminal
from relay.client.waiting import PROGRESS_EVERY, gave_up, still_waiting
from relay.closes import Refusal, Unreached, after_refusal
from relay.ends import websocket
from relay.ends.reconnect import attempt_of
from relay.ends.websocket import SEND_ERRORS, ClientSocket

# the device the command waits for, and how to read its tunnel (None when it cannot be read)
Waiter = tuple[str, Callable[[], Awaitable[dict | None]]]


def waiter_for(api: RelayApi, device_id: str, tunnel_id: str) -> Waiter:
    """What a waiting command reads for its progress lines: the tunnel as the REST API shows it."""
    async def tunnel() -> dict | None:
        try:
            return await api.show(tunnel_id)
        except ClientError:
            return None

    return device_id, tunnel

EXIT_FAILURE = 255   # like ssh: the relay, the tunnel or the login failed, not the remote command


class Refused(ClientError):
    """docs/protocol.md, "Handshake": the relay answered the upgrade with an HTTP status."""

    def __init__(self, status: int) -> None:
        super().__init__(after_refusal(status).text)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Opened:
    tunnel_id: str
    uri: str
    token: str = dataclasses.field(repr=False)
    created: bool


async def open_tunnel(api: RelayApi, device_id: str, notice: Callable[[str], None], *,
                      description: str | None = None, expires_in: int | None = None) -> Opened:
    """A tunnel to `device_id` with a source token we hold: a new one, or the device's open
    tunnel taken over (`take_over_tunnel`: the token is only returned by create and rotate;
    rotating it cuts off any other application connected to that tunnel)."""
    for attempt in range(2):
        page = await api.list_page(device_id=device_id, status="OPEN", limit=1)
        if page.get("tunnels"):
            return await take_over_tunnel(api, page["tunnels"][0]["tunnel_id"], notice, page["tunnels"][0])
        notice(f"creating a tunnel to {device_id}...")
        try:
            made = await api.create(device_id, description=description, expires_in=expires_in)
        except ApiError as exc:
            if exc.code == "TUNNEL.409000" and attempt == 0:
                continue   # someone opened one between our list and our create: use it
            raise
        return Opened(made["tunnel_id"], made["tunnel_uri"], made["tunnel_access_token"], created=True)
    raise ClientError(f"could not open a tunnel to {device_id}")   # pragma: no cover (two races in a row)


def device_end_connected(info: dict) -> bool:
    """Whether a TunnelInfo says the device's end of the tunnel is connected."""
    return (info.get("device_connect_state") or {}).get("status") == "CONNECTED"


async def rotate_for_reuse(api: RelayApi, tunnel_id: str, notice: Callable[[str], None],
                           info: dict | None = None) -> dict:
    """Rotate what reusing an open tunnel needs: its source token (the only way to get one),
    and its device token too when the device's end is not connected. That device may never
    have had the token (it missed the notify) or may have given up on the tunnel; rotating
    makes the relay publish the new one to it over MQTT, as on create. The answer of rotate."""
    info = info if info is not None else await api.show(tunnel_id)
    device = info.get("device_id") or "the device"
    if device_end_connected(info):
        notice(f"reusing the open tunnel {tunnel_id} of {device} (rotating its source token)...")
        return await api.rotate(tunnel_id, "source")
    notice(f"reusing the open tunnel {tunnel_id} of {device}: its device end is not connected, so both its tokens "
           f"are rotated and the relay sends the new device token to {device} over MQTT...")
    return await api.rotate(tunnel_id, "all")


async def take_over_tunnel(api: RelayApi, tunnel_id: str, notice: Callable[[str], None] = lambda text: None,
                    info: dict | None = None) -> Opened:
    """An existing tunnel, with a new source token (which cuts off the application that
    held the old one), and a new device token sent to the device when its end is not
    connected (`rotate_for_reuse`)."""
    rotated = await rotate_for_reuse(api, tunnel_id, notice, info)
    return Opened(tunnel_id, source_uri(api.url, tunnel_id), rotated["tunnel_access_token"], created=False)


async def open_source(http: aiohttp.ClientSession, opened: Opened, ssl: ssl_.SSLContext | bool = True) -> ClientSocket:
    """The tunnel's source-connect WebSocket, on the REST client's HTTP session. Raises
    relay/ends/websocket.py's `Refused` or `Unreachable` (`connect_error` words them)."""
    return await websocket.Connector(http).open(opened.uri, headers={"tunnel_access_token": opened.token}, ssl=ssl)


def connect_error(uri: str, failure: Refusal | Unreached) -> ClientError:
    """A failed opening of the WebSocket to `uri`, as the commands report it."""
    if isinstance(failure, Refusal):
        return Refused(failure.status)
    error = failure.error
    return Unreachable(f"cannot connect to {uri}: {type(error).__name__} {error}".rstrip())


async def connect(http: aiohttp.ClientSession, opened: Opened, ssl: ssl_.SSLContext | bool = True) -> ClientSocket:
    """The tunnel's source-connect WebSocket. Raises `Refused` (an HTTP status) or `Unreachable`."""
    try:
        return await open_source(http, opened, ssl)
    except (websocket.Refused, websocket.Unreachable) as exc:
        raise connect_error(opened.uri, attempt_of(exc)) from None


class ShellLink:
    """A source WebSocket and its session: incoming messages become events for `sink`."""

    def __init__(self, session: SourceSession, ws: ClientSocket,
                 sink: Callable[[Event], None]) -> None:
        self.session = session
        self.ws = ws
        self.sink = sink
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()   # set at every phase change
        self._reader: asyncio.Task[None] | None = None

    async def dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ToDevice):
                if not self.ws.closed:
                    with contextlib.suppress(*SEND_ERRORS):
                        await self.ws.send(event.payload)
            else:
                self.sink(event)
            if isinstance(event, Ended):
                self.ended.set()
        self.changed.set()

    async def __aenter__(self) -> ShellLink:
        await self.dispatch(self.session.start())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispatch(self.session.close())
        await self.ws.close(timeout=5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message, str):
                await self.dispatch(self.session.received(message))
                if self.session.phase is Phase.ENDED:
                    break
        await self.dispatch(self.session.connection_closed(self.ws.close_code))

    async def until_open(self, timeout: float, waiter: Waiter | None = None) -> None:
        """Wait for the device and the login; the session ends with a clear reason if they
        take longer than `timeout`. With a `waiter`, say every PROGRESS_EVERY seconds what the
        wait is for and why it may not end (relay/client/waiting.py)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        next_progress = started + PROGRESS_EVERY
        while self.session.phase not in (Phase.OPEN, Phase.ENDED):
            self.changed.clear()
            now = loop.time()
            left = deadline - now
            if left <= 0:
                if self.session.phase is Phase.WAITING and waiter is not None:
                    reason = gave_up(waiter[0], timeout, await waiter[1]())
                elif self.session.phase is Phase.WAITING:
                    reason = f"the device did not connect within {timeout:g} s: is it online, and does it run `relay agent`?"
                else:
                    reason = f"the device did not answer the login within {timeout:g} s"
                await self.dispatch(self.session.give_up(reason))
                return
            if waiter is not None and self.session.phase is Phase.WAITING and now >= next_progress:
                tunnel = await waiter[1]()
                if self.session.phase is Phase.WAITING:
                    self.sink(Notice(still_waiting(waiter[0], now - started, timeout, tunnel)))
                next_progress = now + PROGRESS_EVERY
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, max(0.0, next_progress - now)) if waiter else left)

    async def type(self, data: str | bytes) -> None:
        await self.dispatch(self.session.typed(data))


async def interactive(http: aiohttp.ClientSession, opened: Opened, session: SourceSession, terminal: Terminal, *,
                      wait: float, ssl: ssl_.SSLContext | bool = True, set_size: bool = False,
                      waiter: Waiter | None = None) -> int:
    """`relay ssh`: the local terminal in raw mode, keys to the device's shell, its output back."""
    terminal.notice("connecting to the relay...")
    ws = await connect(http, opened, ssl)
    ended: list[Ended] = []

    def sink(event: Event) -> None:
        if isinstance(event, Output):
            terminal.write(event.text)
        elif isinstance(event, Ended):
            ended.append(event)
        elif hasattr(event, "text"):
            terminal.notice(event.text)   # Notice, LoggedIn

    async with ShellLink(session, ws, sink) as link:
        await link.until_open(wait, waiter)
        if session.phase is Phase.OPEN:
            if set_size:
                columns, rows = terminal.size()
                await link.type(f" stty cols {columns} rows {rows}\n")
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            with terminal.raw_mode(), terminal.reading(queue):
                ended_wait = asyncio.create_task(link.ended.wait())
                try:
                    while not link.ended.is_set():
                        getter = asyncio.create_task(queue.get())
                        await asyncio.wait({getter, ended_wait}, return_when=asyncio.FIRST_COMPLETED)
                        if not getter.done():
                            getter.cancel()
                            break
                        data = getter.result()
                        if not data:   # end of stdin: Ctrl-D, as a terminal would send it
                            await link.type("\x04")
                            await link.ended.wait()
                            break
                        await link.type(data)
                finally:
                    ended_wait.cancel()
    end = ended[0] if ended else Ended("the session ended", error=False)
    if end.error:
        terminal.error(end.reason)
        return EXIT_FAILURE
    terminal.notice(end.reason)
    return end.exit_status if end.exit_status is not None else 0


async def execute(http: aiohttp.ClientSession, opened: Opened, session: SourceSession, terminal: Terminal,
                  command: str, *, wait: float, ssl: ssl_.SSLContext | bool = True, timeout: float | None = None,
                  crlf: bool = False, waiter: Waiter | None = None) -> int:
    """`relay exec`: one command, its output on stdout, its exit status as ours."""
    framing = ExecFraming(command, crlf=crlf)
    terminal.notice("connecting to the relay...")
    ws = await connect(http, opened, ssl)
    ended: list[Ended] = []
    finished = asyncio.Event()

    def sink(event: Event) -> None:
        if isinstance(event, Output):
            out = framing.feed(event.text)
            if out:
                terminal.write(out)
            if framing.done:
                finished.set()
        elif isinstance(event, Ended):
            ended.append(event)
            if not framing.done and event.exit_status is not None:
                rest = framing.shell_ended(event.exit_status)   # the command ran `exit N` itself
                if rest:
                    terminal.write(rest)
            finished.set()
        elif hasattr(event, "text") and not isinstance(event, Output):
            terminal.notice(event.text)

    async with ShellLink(session, ws, sink) as link:
        await link.until_open(wait, waiter)
        if session.phase is Phase.OPEN:
            await link.type(framing.line)
            try:
                await asyncio.wait_for(finished.wait(), timeout)
            except TimeoutError:
                terminal.error(f"the command did not finish within {timeout:g} s")
                return EXIT_FAILURE
    if framing.exit_status is not None:
        return framing.exit_status
    end = ended[0] if ended else Ended("the session ended before the command finished")
    terminal.error(end.reason if end.error else f"{end.reason}, before the command finished")
    return EXIT_FAILURE
