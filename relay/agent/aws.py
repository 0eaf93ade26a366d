"""The device agent's AWS IoT Secure Tunneling mode (destination), docs/aws-clients.md.

A tunnel of the AWS protocol is announced on `$aws/things/{device_id}/tunnels/notify` with
`{"clientAccessToken", "clientMode": "destination", "region", "services"}`, as AWS IoT does
(relay/notify.py parses it; relay/agent/mqtt.py subscribes).
The agent then connects to `{endpoint}/tunnel?local-proxy-mode=destination` (subprotocol
V3, falling back to V2/V1 when the relay answers so) with that token and a client token
of its own, so that it can reconnect with the same token after the connection drops. Each
stream (STREAM_START, or CONNECTION_START in V3) is a TCP connection to the address that
`aws_services` maps its service id to (SSH: the device's SSH server by default). The
rules and the session are relay/ends/'s (aws_streams, aws_session); this module only wires
them to the agent.

One AWS tunnel at a time (as AWS's device client): a notify with another token replaces
the current session; the same token again is ignored. The Huawei tunnel (docs/device.md)
is independent of it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from relay.ends.aws_session import Session, aws_endpoint
from relay.ends.aws_streams import Destination, match_service
from relay.ends.websocket import tls_setting
from relay.agent.settings import AgentSettings
from relay.notify import AwsNotify, cancel_and_wait

log = logging.getLogger(__name__)

def destinations(settings: AgentSettings) -> dict[str, tuple[str, int]]:
    """Service id -> address: `aws_services`, or SSH -> the device's SSH server."""
    if settings.aws_services:
        return {service: (host or settings.ssh_host, port) for service, host, port in settings.aws_services}
    return {"SSH": (settings.ssh_host, settings.ssh_port)}


def new_session(settings: AgentSettings, token: str, *, endpoint: str, client_token: str | None = None,
                **overrides: Any) -> Session:
    services = destinations(settings)
    extra = {"device_id": settings.device_id, "protocol": "aws"}
    options: dict[str, Any] = dict(
        mode="destination", endpoint=endpoint, token=token, client_token=client_token,
        make_table=lambda version: Destination(services, version),
        ssl=tls_setting(settings.tls_ca_file, settings.tls_insecure), heartbeat=settings.heartbeat,
        reconnect_initial=settings.reconnect_initial, reconnect_max=settings.reconnect_max, extra=extra)
    options.update(overrides)
    return Session(**options)


class AwsTunnels:
    """The agent's AWS side: a session per notify, one at a time."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.session: Session | None = None
        self._token: str | None = None
        self._task: asyncio.Task[str] | None = None
        self._old: set[asyncio.Task[None]] = set()

    def endpoint(self, notify: AwsNotify) -> str:
        if self.settings.aws_endpoint:
            return self.settings.aws_endpoint
        return aws_endpoint(notify.region or "us-east-1")

    def on_notify(self, notify: AwsNotify) -> None:
        extra = {"device_id": self.settings.device_id, "protocol": "aws"}
        running = self._task is not None and not self._task.done()
        if running and notify.token == self._token:
            return   # the same notify again (QoS 1 may deliver it twice)
        log.info("AWS tunnel notify received (services %s)", ", ".join(notify.services) or "none", extra=extra)
        missing = [s for s in notify.services if match_service(destinations(self.settings), s) is None]
        if missing:
            log.warning("no local address for service(s) %s: their streams will be refused "
                        "(see --aws-services)", ", ".join(missing), extra=extra)
        if running and self._task is not None:
            log.info("a new AWS tunnel replaces the current one", extra=extra)
            old = asyncio.create_task(cancel_and_wait(self._task))
            self._old.add(old)
            old.add_done_callback(self._old.discard)
        self._token = notify.token
        self.session = new_session(self.settings, notify.token, endpoint=self.endpoint(notify))
        self._task = asyncio.create_task(self.session.run(), name="aws-tunnel")
        self._task.add_done_callback(_report_failure)

    async def stop(self) -> None:
        for task in [t for t in (self._task, *self._old) if t is not None]:
            await cancel_and_wait(task)


def _report_failure(task: asyncio.Task[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the AWS tunnel session failed", exc_info=task.exception())


# -- `relay localproxy -d`: the destination, given its token -----------------------------------


async def run_destination(settings: AgentSettings, token: str, endpoint: str, *, client_token: str | None = None,
                          stop: asyncio.Event | None = None, **overrides: Any) -> int:
    """Serve one tunnel's destination end until it is over (0), refused or failed (255), or `stop` (0)."""
    session = new_session(settings, token, endpoint=endpoint, client_token=client_token, **overrides)
    main = asyncio.create_task(session.run())
    waits: set[asyncio.Future[Any]] = {main}
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    if stopper is not None:
        waits.add(stopper)
    stopped = False
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
        if not main.done():
            await cancel_and_wait(main)
            stopped = True
    # Not a `return` inside `finally`: that would swallow a cancel of this task (ruff B012).
    if stopped:
        return 0
    main.result()
    return 255 if session.failed else 0


async def localproxy_destination(services: dict[str, tuple[str, int]], token: str, endpoint: str, *,
                                 client_token: str | None, ssl: ssl.SSLContext | bool,
                                 stop: asyncio.Event | None = None) -> int:
    """`relay localproxy -d SERVICE=ENDPOINT,...`: one tunnel's destination, given its token."""
    settings = AgentSettings(device_id="localproxy",
                             aws_services=tuple((s, host, port) for s, (host, port) in services.items()))
    return await run_destination(settings, token, endpoint, client_token=client_token, stop=stop, ssl=ssl)
