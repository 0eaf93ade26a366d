"""Baseline: the plain aiohttp relay (one receive and one send_str per message, orjson
validation). No authentication: only the relaying is compared.

    python -m benchmarks.baselines.naive_aiohttp PORT
"""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import WSMsgType, web

peers: dict[tuple[str, str], web.WebSocketResponse] = {}


async def connect(request: web.Request) -> web.WebSocketResponse:
    tunnel_id, side = request.match_info["tunnel_id"], request.match_info["side"]
    ws = web.WebSocketResponse(max_msg_size=10241, compress=False)  # aiohttp refuses sizes >= the limit
    await ws.prepare(request)
    peers[(tunnel_id, side)] = ws
    other = "device" if side == "source" else "source"
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        envelope = orjson.loads(msg.data)
        if not isinstance(envelope, dict) or "operation_type" not in envelope:
            break
        peer = peers.get((tunnel_id, other))
        if peer is not None:
            await peer.send_str(msg.data)
    peers.pop((tunnel_id, side), None)
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/v5/iot/tunnels/{tunnel_id}/{side:source|device}-connect", connect)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
