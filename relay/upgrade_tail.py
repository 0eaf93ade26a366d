"""What aiohttp read past a WebSocket upgrade, kept when the connection leaves it for one of our
own protocols: the relay's side (relay/web/takeover.py: a client may send its first frame
without waiting for the 101) and the ends' (relay/ends/websocket.py: the relay may send its
first frame in the same write as the 101). Standard library only."""

from __future__ import annotations


class UpgradeTail:
    """Stands in for aiohttp's WebSocket parser (aiohttp only feeds it: `feed_data`,
    `feed_eof`) and keeps the bytes for the protocol that takes over."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass
