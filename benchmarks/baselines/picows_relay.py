"""Baseline: a relay on picows (a Cython WebSocket library), orjson validation, one send per
frame. No authentication: only the relaying is compared.

    python -m benchmarks.baselines.picows_relay PORT
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

peers: dict[tuple[str, str], WSTransport] = {}


class RelayListener(WSListener):
    def __init__(self, tunnel_id: str, side: str) -> None:
        self.key = (tunnel_id, side)
        self.peer_key = (tunnel_id, "device" if side == "source" else "source")

    def on_ws_connected(self, transport: WSTransport) -> None:
        peers[self.key] = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT or frame.payload_size > 10240:
            transport.send_close()
            transport.disconnect()
            return
        payload = frame.get_payload_as_bytes()
        envelope = orjson.loads(payload)
        if not isinstance(envelope, dict) or "operation_type" not in envelope:
            transport.disconnect()
            return
        peer = peers.get(self.peer_key)
        if peer is not None:
            peer.send(WSMsgType.TEXT, payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if peers.get(self.key) is transport:
            del peers[self.key]


def factory(request: WSUpgradeRequest) -> RelayListener | None:
    parts = request.path.decode().strip("/").split("/")
    if len(parts) != 5 or parts[4] not in ("source-connect", "device-connect"):
        return None
    return RelayListener(parts[3], parts[4].split("-")[0])


async def main() -> None:
    server = await ws_create_server(factory, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
