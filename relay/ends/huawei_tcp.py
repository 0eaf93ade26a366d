"""The rules of TCP forwarding through a Huawei-protocol tunnel (the `tcp` service,
docs/forwarding.md), for both ends (the agent, `relay forward`) and the relay's audit
watcher (relay/sessions.py): sans-I/O, no socket, no event loop.

The messages (`open_message`, `data_messages`, ... and `parse`) and `Connection`, one
forwarded TCP connection's state: credit accounting (at most `WINDOW` bytes sent and not yet
acknowledged), the acknowledgements owed to the peer, half-close in both directions, abort.
The asyncio side (`TcpPipe`: one TCP stream joined to a `Connection`) is relay/ends/pipes.py.

Messages (envelope of docs/protocol.md, `tunnel_service_type` "tcp", `request_id` = the
connection id, chosen by the source):

    source -> forward_open           {"port": N, "window": W}
    device -> forward_open_response  {"status_code": "200"|"400"|"403"|"502", "status_msg": ..., "window": W}
                                     (W: the sender's receive window; absent from older ends)
    either -> forward_data           "<base64 of at most 7000 bytes>"
    either -> forward_ack            {"bytes": n}    n more bytes written to the receiver's socket
    either -> forward_close          {"status_msg": "eof"}  the sender's TCP peer stopped sending
                                     {"status_msg": "error: ..."}  abort the connection

Standard library and relay.envelope only.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
from typing import Any

from relay import envelope

SERVICE = "tcp"
CHUNK = 7000                 # raw bytes per forward_data: base64 9336 + envelope < 10240
WINDOW = 1024 * 1024         # bytes this end lets a peer have unacknowledged, per connection (announced)
LEGACY_WINDOW = 256 * 1024   # ... what an end that announces no window takes and gives (earlier versions)
MAX_WINDOW = 16 * 1024 * 1024   # an announced window is taken up to this
ACK_THRESHOLD = WINDOW // 4  # acknowledge once this many bytes are written (must be <= WINDOW)
MAX_MESSAGE = 10240
MAX_ID_BYTES = 128

OPEN = "forward_open"
OPEN_RESPONSE = "forward_open_response"
DATA = "forward_data"
ACK = "forward_ack"
CLOSE = "forward_close"
OPERATIONS = frozenset((OPEN, OPEN_RESPONSE, DATA, ACK, CLOSE))
EOF = "eof"


class ForwardError(Exception):
    """The peer broke the forwarding protocol on one connection: abort that connection."""


# -- messages ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    op: str
    conn_id: str
    data: Any
    service: Any = SERVICE


def message(op: str, conn_id: str, data: Any) -> str:
    return envelope.build(op, conn_id, data, SERVICE).decode()


def parse(text: str | bytes) -> Message | None:
    """The envelope's parts, or None for something that is not a JSON object with an
    `operation_type` string (the relay never delivers those)."""
    doc = envelope.parse(text)
    if doc is None or not isinstance(doc.get("operation_type"), str):
        return None
    rid = doc.get("request_id")
    return Message(doc["operation_type"], rid if isinstance(rid, str) else "", doc.get("data"),
                   doc.get("tunnel_service_type"))


def new_connection_id() -> str:
    return "f-" + secrets.token_hex(8)


def valid_connection_id(conn_id: str) -> bool:
    return 1 <= len(conn_id.encode()) <= MAX_ID_BYTES


def open_message(conn_id: str, port: int, window: int = WINDOW) -> str:
    return message(OPEN, conn_id, {"port": port, "window": window})


def open_response(conn_id: str, code: str, text: str, window: int | None = None) -> str:
    data: dict[str, Any] = {"status_code": code, "status_msg": text}
    if window is not None:
        data["window"] = window
    return message(OPEN_RESPONSE, conn_id, data)


def announced_window(data: Any) -> int | None:
    """The receive window a peer announced in its forward_open / forward_open_response (at
    most MAX_WINDOW), or None: an older end (or a value that is not a positive integer)."""
    w = data.get("window") if isinstance(data, dict) else None
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        return None
    return min(w, MAX_WINDOW)


def ack_message(conn_id: str, n: int) -> str:
    return message(ACK, conn_id, {"bytes": n})


def close_message(conn_id: str, status_msg: str) -> str:
    return message(CLOSE, conn_id, {"status_msg": status_msg[:500]})


def data_messages(conn_id: str, raw: bytes) -> list[str]:
    """`raw` as forward_data messages of at most CHUNK bytes each, in order."""
    return [message(DATA, conn_id, base64.b64encode(raw[i:i + CHUNK]).decode())
            for i in range(0, len(raw), CHUNK)]


def requested_port(data: Any) -> int | None:
    port = data.get("port") if isinstance(data, dict) else None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return None
    return port


def status_of(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        return "", ""
    code, text = data.get("status_code"), data.get("status_msg")
    return (code if isinstance(code, str) else ""), (text if isinstance(text, str) else "")


# -- one connection, sans-I/O -------------------------------------------------------------


class Connection:
    """The protocol state of one forwarded TCP connection, on either end.

    Outgoing: `outgoing(raw)` spends credit (`credit` bytes may be sent before an ack);
    `on_ack` gives it back. Incoming: `on_data` counts bytes the peer has out against the
    window (a peer that exceeds it is broken); `on_written` returns the ack to send once
    `ack_threshold` bytes were written to the socket. Half-close: `eof()` / `on_close`.
    """

    def __init__(self, conn_id: str, window: int = WINDOW, ack_threshold: int = ACK_THRESHOLD,
                 send_window: int | None = None) -> None:
        if not 0 < ack_threshold <= window:
            raise ValueError("the ack threshold must be above zero and at most the window")
        self.conn_id = conn_id
        self.window = window              # what the peer may have unacknowledged (we check it)
        self.send_window = window if send_window is None else send_window   # what we may
        self.ack_threshold = ack_threshold
        self.unacked = 0          # bytes we sent that the peer has not acknowledged
        self.peak_unacked = 0
        self.inbound = 0          # bytes the peer sent that we have not acknowledged
        self.peak_inbound = 0
        self._written = 0         # of those, written to our socket, ack not sent yet
        self.bytes_out = 0
        self.bytes_in = 0
        self.sent_eof = False     # our TCP peer stopped sending; the peer was told
        self.got_eof = False      # the peer's TCP peer stopped sending
        self.aborted: str | None = None

    def peer_announced(self, data: Any) -> None:
        """The peer's forward_open / forward_open_response `data` (before any data flows): its
        window is our credit, and we acknowledge per quarter of the window it sends within
        (ours, which it then knows; an older end takes LEGACY_WINDOW both ways)."""
        peer = announced_window(data)
        self.send_window = LEGACY_WINDOW if peer is None else peer
        in_flight = self.window if peer is not None else min(self.window, LEGACY_WINDOW)
        self.ack_threshold = max(1, in_flight // 4)

    @property
    def credit(self) -> int:
        return max(0, self.send_window - self.unacked)

    @property
    def finished(self) -> bool:
        return self.aborted is not None or (self.sent_eof and self.got_eof)

    # -- what we send --------------------------------------------------------------------

    def outgoing(self, raw: bytes) -> list[str]:
        self.sent(len(raw))
        return data_messages(self.conn_id, raw)

    def sent(self, n: int) -> None:
        """`n` bytes go out (the codec builds their messages: relay/ends/websocket.py): spend credit."""
        if self.sent_eof or self.aborted is not None:
            raise ValueError("no data may follow our eof or an abort")
        if n > self.credit:
            raise ValueError(f"{n} bytes exceed the credit of {self.credit}")
        self.unacked += n
        self.peak_unacked = max(self.peak_unacked, self.unacked)
        self.bytes_out += n

    def eof(self) -> str:
        self.sent_eof = True
        return close_message(self.conn_id, EOF)

    def abort(self, reason: str) -> str:
        """Abort by our decision; the message tells the peer."""
        self.aborted = self.aborted or reason
        return close_message(self.conn_id, f"error: {reason}")

    # -- what the peer sends -------------------------------------------------------------

    def on_data(self, data: Any) -> bytes:
        if self.got_eof:
            raise ForwardError("forward_data after the peer's eof")
        if not isinstance(data, str):
            raise ForwardError("forward_data must carry a base64 string")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ForwardError("forward_data is not valid base64") from None
        if len(raw) > CHUNK:
            raise ForwardError(f"forward_data of {len(raw)} bytes is over {CHUNK}")
        self.on_raw_data(len(raw))
        return raw

    def on_raw_data(self, n: int) -> None:
        """`n` bytes of the peer's forward_data, decoded and checked by the codec (base64, at
        most CHUNK per message; docs/codec.md): the eof and window rules."""
        if self.got_eof:
            raise ForwardError("forward_data after the peer's eof")
        self.inbound += n
        self.peak_inbound = max(self.peak_inbound, self.inbound)
        self.bytes_in += n
        if self.inbound > self.window:
            raise ForwardError(f"the peer sent {self.inbound} unacknowledged bytes, over the window of {self.window}")

    def on_written(self, n: int) -> str | None:
        """`n` received bytes are now written to our socket: the ack to send, if one is due."""
        self.inbound -= n
        self._written += n
        if self.got_eof or self._written < self.ack_threshold:
            return None   # after the peer's eof it sends no more: acks would be of no use
        n, self._written = self._written, 0
        return ack_message(self.conn_id, n)

    def on_ack(self, data: Any) -> None:
        n = data.get("bytes") if isinstance(data, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ForwardError("forward_ack needs data {\"bytes\": n}")
        if n > self.unacked:
            raise ForwardError(f"forward_ack of {n} bytes, but only {self.unacked} are unacknowledged")
        self.unacked -= n

    def on_close(self, data: Any) -> str | None:
        """None for the peer's eof (half-close); otherwise the reason of its abort."""
        _, text = status_of(data)
        if text == EOF:
            if self.got_eof:
                raise ForwardError("a second eof")
            self.got_eof = True
            return None
        reason = text.removeprefix("error: ") or "the peer aborted the connection"
        self.aborted = self.aborted or f"the peer aborted: {reason}"
        return reason
