"""After the 101 answer: how an upgraded connection leaves aiohttp for one of the relay's own
protocols. Every upgrade path uses it: the tunnel endpoints of both protocols
(relay/web/sockets.py, relay/web/aws_sockets.py) and the bridges between replicas
(relay/web/bridge.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from aiohttp import web

from relay.upgrade_tail import UpgradeTail

if TYPE_CHECKING:
    from aiohttp.http_websocket import WebSocketReader

RelayProtocol = TypeVar("RelayProtocol", bound=asyncio.Protocol)


def hand_over_transport(request: web.Request,
                        make: Callable[[asyncio.Transport], RelayProtocol]) -> tuple[RelayProtocol, bytes]:
    """Hand an upgraded connection to the relay's own protocol, and make aiohttp forget it.

    aiohttp keeps a request handler, a parser, a task and buffers for every connection,
    about 15 kB; a relay holding thousands of idle tunnels cannot afford that. So once the
    101 answer is out, the transport gets our protocol, and aiohttp's protocol is told the
    connection is gone (after losing its transport, so that it closes nothing). Returns the
    protocol and any bytes the client sent right after its request (they are not lost).
    tests/dataplane/test_relay.py checks that aiohttp really lets go."""
    transport = request.transport
    old = request.protocol
    assert transport is not None
    tail = UpgradeTail()
    old.set_parser(cast("WebSocketReader", tail))   # aiohttp only feeds it (feed_data, feed_eof)
    protocol = make(transport)
    transport.set_protocol(protocol)
    old.transport = None
    old.connection_lost(None)
    return protocol, tail.data


class UpgradeResponse(web.StreamResponse):
    """The 101 answer. After it the socket belongs to the relay: aiohttp writes nothing more."""

    async def write_eof(self, data: bytes = b"") -> None:
        return None
