"""The application side of AWS IoT Secure Tunneling (source mode), docs/aws-clients.md.

`relay localproxy -s PORT` does what AWS's localproxy does in source mode: it connects to
`{endpoint}/tunnel?local-proxy-mode=source` with the source token, waits for the relay's
SERVICE_IDS, listens on a local port per service, and turns every accepted TCP connection
into a stream (V3: a connection of the service's stream; V1/V2: one stream per service at a
time, a new connection resets the old). `relay forward DEVICE --protocol aws` first creates
the tunnel through the REST API (`"protocol": "aws"`), then does the same with the source
token it got, and closes the tunnel on exit unless --keep.

The rules and the I/O are relay/ends/'s (`aws_streams.Source`, `pipes.StreamPipes`,
`aws_session.Session`, `listeners.Listener`); this module listens, reports, and builds the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import logging
import os
import ssl as ssl_
import sys
from collections.abc import Callable
from typing import Any

from relay.aws_messages import valid_client_token
from relay.client import output
from relay.client.running import stop_on_signals, token_and_target, until
from relay.ends.aws_session import Session, aws_endpoint
from relay.ends.aws_streams import Source, stream_name
from relay.ends.listeners import Listener, hostport
from relay.ends.localproxy_args import parse_destinations, parse_listeners
from relay.ends.pipes import StreamPipe
from relay.ends.websocket import tls_setting
from relay.errors import ConfigError

log = logging.getLogger(__name__)

EXIT_FAILURE = 255
TOKEN_ENV = "AWSIOT_TUNNEL_ACCESS_TOKEN"     # AWS's localproxy reads the token from here
ENDPOINT_ENV = "AWSIOT_TUNNEL_ENDPOINT"
REGION_ENV = "AWSIOT_TUNNEL_REGION"


def resolve_listeners(listeners: dict[str, int], available: tuple[str, ...] | None) -> tuple[dict[str, int], list[str]]:
    """The local ports per service id of the tunnel, and warnings. A bare port serves the
    tunnel's one service; a named one must be a service of the tunnel (SERVICE_IDS), as
    AWS's localproxy requires. Raises ConfigError."""
    if not available:   # a V1 relay sends no service ids: one stream kind only
        if len(listeners) > 1:
            raise ConfigError("the relay named no services (protocol V1): give a single port")
        return dict(listeners), []
    if "" in listeners:
        if len(available) != 1:
            raise ConfigError(f"the tunnel has the services {', '.join(available)}: name the one for each port "
                              f"(-s {available[0]}=PORT,...)")
        return {available[0]: listeners[""]}, []
    unknown = [s for s in listeners if s not in available]
    if unknown:
        raise ConfigError(f"service(s) {', '.join(unknown)} are not services of this tunnel "
                          f"({', '.join(available)})")
    unused = [s for s in available if s not in listeners]
    warnings = [f"no local port for the tunnel's service(s) {', '.join(unused)}"] if unused else []
    return dict(listeners), warnings


class SourceProxy:
    """The source end of one tunnel: a Session (the WebSocket, reconnected with a client
    token) and a local listener per service."""

    def __init__(self, *, endpoint: str, token: str, listeners: dict[str, int], bind: str = "127.0.0.1",
                 highest: int = 3, multiplex: bool = True, ssl: ssl_.SSLContext | bool = True,
                 client_token: str | None = None, wait: float = 60.0,
                 notice: Callable[[str], None] = output.say, error: Callable[[str], None] = output.say,
                 announce: Callable[[str], None] = output.say, reconnect_initial: float = 1.0,
                 max_attempts: int | None = 10) -> None:
        self.listeners = listeners
        self.bind = bind
        self.wait = wait
        self.notice, self.error, self.announce = notice, error, announce
        stream_ids = itertools.count(1)   # unique for the tunnel's life, across reconnections
        self.session = Session(
            mode="source", endpoint=endpoint, token=token, client_token=client_token, highest=highest, ssl=ssl,
            make_table=lambda version: Source(version, multiplex, stream_ids),
            reconnect_initial=reconnect_initial, max_attempts=max_attempts, extra={"protocol": "aws"})
        self.servers: dict[str, Listener] = {}
        self.addresses: dict[str, tuple[str, int]] = {}   # service id -> where it listens
        self.listening = asyncio.Event()
        self.links: set[StreamPipe] = set()

    async def run(self) -> int:
        main = asyncio.create_task(self.session.run(), name="aws-source")
        try:
            if not await self._first_connection(main):
                return EXIT_FAILURE
            pipes = self.session.pipes
            assert pipes is not None
            available = pipes.table.available
            try:
                services, warnings = resolve_listeners(self.listeners, available)
            except ConfigError as exc:
                self.error(f"relay: {exc}")
                return EXIT_FAILURE
            for text in warnings:
                self.error(text)
            for service, port in services.items():
                listener = Listener(functools.partial(self._handle, service))
                self.servers[service] = listener
                host, bound = await listener.start(self.bind, port)
                self.addresses[service] = (host, bound)
                self.announce(f"listening on {hostport(host, bound)} for service {service or '(any)'}")
            self.listening.set()
            outcome = await main
            self.error(f"relay: {outcome}")
            return EXIT_FAILURE if self.session.failed else 0
        finally:
            await self._shutdown(main)

    async def _first_connection(self, main: asyncio.Task[str]) -> bool:
        """Wait for the first connection and its SERVICE_IDS; False (said why) if they do not come."""
        self.notice("connecting to the relay...")
        connected = asyncio.create_task(self.session.connected.wait())
        await asyncio.wait({connected, main}, timeout=self.wait, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        if main.done():
            self.error(f"relay: {main.result()}")
            return False
        pipes = self.session.pipes
        if not self.session.connected.is_set() or pipes is None:
            self.error(f"relay: could not connect to the relay within {self.wait:g} s")
            return False
        if self.session.version == 1:
            return True   # 1.0 does not promise service ids (this relay sends them, marked ignorable)
        known = asyncio.create_task(pipes.services_known.wait())
        await asyncio.wait({known, main}, timeout=self.wait, return_when=asyncio.FIRST_COMPLETED)
        known.cancel()
        if not pipes.services_known.is_set():
            self.error(f"relay: the relay did not name the tunnel's services within {self.wait:g} s")
            return False
        return True

    async def _handle(self, service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = hostport(*writer.get_extra_info("peername")[:2])
        if not self.session.connected.is_set():
            self.notice(f"connection from {peer}: waiting for the relay...")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.connected.wait(), self.wait)
        pipes = self.session.pipes
        if not self.session.connected.is_set() or pipes is None:
            self.error(f"connection from {peer} closed: not connected to the relay")
            writer.close()
            return
        try:
            link = await pipes.accept(service, reader, writer)
        except (ConnectionError, OSError) as exc:
            self.error(f"connection from {peer} closed: the tunnel is not connected ({type(exc).__name__})")
            writer.close()
            return
        name = stream_name(link.key)
        self.notice(f"stream {name} from {peer}: open")
        self.links.add(link)
        try:
            await link.wait_closed()
        finally:
            self.links.discard(link)
        self.notice(f"stream {name} closed: {link.bytes_out} bytes sent, {link.bytes_in} received")

    async def _shutdown(self, main: asyncio.Task[str]) -> None:
        for server in self.servers.values():
            server.close()
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await main
        for listener in self.servers.values():
            await listener.end_handlers()


# -- the commands --------------------------------------------------------------------------------


def access_token(args: argparse.Namespace) -> str:
    """-t, --access-token-stdin, or AWSIOT_TUNNEL_ACCESS_TOKEN (as AWS's localproxy)."""
    if getattr(args, "access_token_stdin", False):
        token = sys.stdin.readline().strip()
        if not token:
            raise ConfigError("--access-token-stdin: standard input is empty")
        return token
    token = args.access_token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"no access token: set {TOKEN_ENV} (or --access-token-stdin; -t shows it to other users)")
    return token.strip()


def endpoint_of(args: argparse.Namespace) -> str:
    endpoint = args.proxy_endpoint or os.environ.get(ENDPOINT_ENV, "")
    region = args.region or os.environ.get(REGION_ENV, "")
    if args.proxy_endpoint and args.region:
        raise ConfigError("-e/--proxy-endpoint and -r/--region exclude each other")
    if endpoint:
        return endpoint
    if region:
        return aws_endpoint(region)
    return os.environ.get("RELAY_URL", "http://127.0.0.1:8080")


def tls_of(args: argparse.Namespace) -> ssl_.SSLContext | bool:
    if args.no_ssl_host_verify:
        return False
    if args.capath or args.ca_file:
        return ssl_.create_default_context(capath=args.capath or None, cafile=args.ca_file or None)
    return True


def highest_version(client_type: str | None) -> int:
    return {None: 3, "": 3, "V3": 3, "V2": 2, "V1": 1}[(client_type or "").upper() or None]


def localproxy_command(args: argparse.Namespace, destination: Callable[..., Any] | None = None) -> int:
    """`relay localproxy`: AWS's localproxy, in source (-s) or destination (-d) mode. The
    destination end is the agent's (`destination`: relay.agent.aws.localproxy_destination,
    handed in by relay/cli.py: the application side does not import the agent)."""
    from relay import logs

    mode = args.mode or ("source" if args.source_listen_port else "destination" if args.destination_app else "")
    mode = {"src": "source", "dst": "destination"}.get(mode, mode)
    if bool(args.source_listen_port) == bool(args.destination_app):
        raise ConfigError("give -s/--source-listen-port (source mode) or -d/--destination-app (destination mode)")
    if (mode == "source") != bool(args.source_listen_port):
        raise ConfigError(f"--mode {args.mode} does not go with "
                          f"{'-s' if args.source_listen_port else '-d'}")
    if args.client_token and not valid_client_token(args.client_token):
        raise ConfigError("--client-token: 32-128 of A-Z a-z 0-9 -")
    token = access_token(args)
    endpoint = endpoint_of(args)
    logs.setup(_log_level(args.verbose), "text")
    if mode == "source":
        try:
            listeners = parse_listeners(args.source_listen_port)
        except ValueError as exc:
            raise ConfigError(f"-s: {exc}") from None
        return asyncio.run(_source(args, endpoint, token, listeners))
    try:
        services = parse_destinations(args.destination_app, args.local_bind_address or "127.0.0.1")
    except ValueError as exc:
        raise ConfigError(f"-d: {exc}") from None
    if destination is None:
        raise ConfigError("destination mode is not available here")
    return asyncio.run(_destination(args, endpoint, token, services, destination))


def _log_level(verbose: int) -> str:
    return {0: "CRITICAL", 1: "CRITICAL", 2: "ERROR", 3: "WARNING", 4: "INFO"}.get(verbose, "DEBUG")


async def _source(args: argparse.Namespace, endpoint: str, token: str, listeners: dict[str, int], *,
                  stop: asyncio.Event | None = None, started: Callable[[SourceProxy], None] | None = None) -> int:
    stop = stop or stop_on_signals()
    proxy = SourceProxy(endpoint=endpoint, token=token, listeners=listeners,
                        bind=args.local_bind_address or "127.0.0.1",
                        highest=highest_version(args.destination_client_type), ssl=tls_of(args),
                        client_token=args.client_token or None, notice=_stderr, error=_stderr, announce=_stdout)
    if started is not None:
        started(proxy)
    return await until(proxy.run(), stop, _stderr)


async def _destination(args: argparse.Namespace, endpoint: str, token: str,
                       services: dict[str, tuple[str, int]], destination: Callable[..., Any]) -> int:
    return await destination(services, token, endpoint, client_token=args.client_token or None,
                             ssl=tls_of(args), stop=stop_on_signals())


def _stdout(text: str) -> None:
    output.say(text)


def _stderr(text: str) -> None:
    output.say(text, file=sys.stderr)


# -- `relay forward DEVICE --protocol aws` ----------------------------------------------------------


async def _aws_tunnel(api: Any, device_id: str, service: str, notice: Callable[[str], None],
                      expires_in: int | None) -> tuple[str, str, str, bool]:
    """(tunnel id, source endpoint, source token, created): the device's open AWS tunnel with
    its source token rotated, or a new one (`"protocol": "aws"`, `"services": [service]`)."""
    from relay.client.api import ClientError

    from relay.client.remote import rotate_for_reuse

    page = await api.list_page(device_id=device_id, status="OPEN", limit=1)
    for tunnel in page.get("tunnels") or []:
        if tunnel.get("protocol", "huawei") != "aws":
            raise ClientError(f"{device_id} has an open tunnel of the Huawei protocol ({tunnel['tunnel_id']}): "
                              "close it first (relay tunnel close ID), or use relay forward without --protocol aws")
        rotated = await rotate_for_reuse(api, tunnel["tunnel_id"], notice, tunnel)
        token = rotated.get("source_access_token") or rotated["tunnel_access_token"]
        return tunnel["tunnel_id"], api.url, token, False
    notice(f"creating an AWS tunnel to {device_id} (service {service})...")
    body: dict[str, Any] = {"device_id": device_id, "protocol": "aws", "services": [service],
                            "description": f"relay forward --protocol aws ({service})"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    made = await api._call("POST", json=body)   # RelayApi.create speaks Huawei's fields only
    return made["tunnel_id"], made.get("tunnel_uri") or api.url, made["source_access_token"], True


DEVICE_POLL = 0.25   # seconds between two looks at the tunnel's device_connect_state


async def _device_end_connects(api: Any, tunnel_id: str, wait: float, terminal: Any) -> bool:
    """Wait (at most `wait` seconds) for the destination end of the tunnel: the AWS protocol
    tells a source nothing about it, so `relay forward` asks the REST API, and announces
    "forwarding" only when both ends are there. False (said why) when it does not come."""
    from relay.client.remote import device_end_connected

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    info = await api.show(tunnel_id)
    if device_end_connected(info):
        return True
    device = info.get("device_id") or "the device"
    terminal.notice(f"waiting for the destination end of the tunnel ({device}'s agent) to connect...")
    while loop.time() < deadline:
        await asyncio.sleep(DEVICE_POLL)
        info = await api.show(tunnel_id)
        if device_end_connected(info):
            terminal.notice("the device is connected")
            return True
        if info.get("status") != "OPEN":
            terminal.error(f"relay: the tunnel {tunnel_id} was closed while waiting for {device}")
            return False
    terminal.error(f"relay: {device} did not connect within {wait:g} s: is it online, and does its agent "
                   "hear AWS tunnel notifies ($aws/things/{thing}/tunnels/notify)?".replace("{thing}", device))
    return False


def forward_aws_command(args: argparse.Namespace) -> int:
    from relay.client.forward import parse_listen
    from relay.client.terminal import Terminal

    token = token_and_target(args)
    listen = parse_listen(args.listen)
    return asyncio.run(forward_aws_async(args, Terminal(quiet=args.quiet), listen, token))


async def forward_aws_async(args: argparse.Namespace, terminal: Any, listen: tuple[str, int], token: str | None, *,
                            stop: asyncio.Event | None = None,
                            started: Callable[[SourceProxy], None] | None = None) -> int:
    """`relay forward --protocol aws`: until `stop` (SIGINT/SIGTERM) or the tunnel ends."""
    from relay.client.api import ClientError
    from relay.client.commands import closes_on_exit, make_api
    from relay.client.forward import forward_failed

    stop = stop or stop_on_signals()
    service = args.service
    api = None if (args.tunnel and token and args.keep) else make_api(args)
    tunnel_id: str | None = None
    created = False
    async with contextlib.AsyncExitStack() as stack:
        if api is not None:
            await stack.enter_async_context(api)
        try:
            if args.tunnel and token:
                tunnel_id, endpoint = args.tunnel, args.url
            elif args.tunnel:
                assert api is not None
                from relay.client.remote import rotate_for_reuse
                rotated = await rotate_for_reuse(api, args.tunnel, terminal.notice)
                tunnel_id, endpoint = args.tunnel, args.url
                token = rotated.get("source_access_token") or rotated["tunnel_access_token"]
            else:
                assert api is not None
                tunnel_id, endpoint, token, created = await _aws_tunnel(api, args.device_id, service, terminal.notice,
                                                                        args.expires_in)
            assert token is not None
            if api is not None and not await _device_end_connects(api, tunnel_id, args.wait, terminal):
                return EXIT_FAILURE

            def announce(text: str) -> None:
                address = proxy.addresses.get(service) or next(iter(proxy.addresses.values()), None)
                if address is not None:
                    output.say(f"forwarding {hostport(*address)} -> device service {service}")
                else:   # pragma: no cover
                    output.say(text)

            proxy = SourceProxy(endpoint=endpoint, token=token, listeners={service: listen[1]}, bind=listen[0],
                                wait=args.wait, ssl=tls_setting(args.ca_file, args.insecure),
                                highest=3, notice=terminal.notice, error=terminal.error, announce=announce)
            if started is not None:
                started(proxy)
            return await until(proxy.run(), stop, terminal.notice)
        except (OSError, ClientError) as exc:
            return forward_failed(terminal.error, listen, exc)
        finally:
            if api is not None and tunnel_id is not None and closes_on_exit(created, args):
                with contextlib.suppress(ClientError):
                    await api.close(tunnel_id)
                    terminal.notice(f"tunnel {tunnel_id} closed")
            elif created and tunnel_id is not None:
                terminal.notice(f"the tunnel {tunnel_id} stays open (--keep)")
            elif tunnel_id is not None:
                terminal.notice(f"the tunnel {tunnel_id} was open before this command and stays open "
                                f"(--close closes it on exit)")
