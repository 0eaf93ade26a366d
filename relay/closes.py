"""How a tunnel connection ends, and what an end does next: the WebSocket close codes of both
protocols' endpoints (the relay's own and its codec's), the relay's `disconnect` statuses that
end a Huawei connection, and the ONE policy every end follows (the agent, `relay ssh`/`exec`,
`relay forward`, `relay localproxy`, both protocols): stop, reconnect, or reconnect only with a
new token, and how to say why to a person; and how long to wait before trying again (`Backoff`).
The ends ask it; none keeps a code list of its own.

Standard library only: the bottom layer, tested without sockets (tests/ends/test_closes.py).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from http import HTTPStatus


class CloseCode(enum.IntEnum):
    """WebSocket close codes the relay sends. The relay's own (protocol.py, web/) and the
    codec's (docs/codec.md "Close codes"; codec-rs/src/close.rs holds the codec's)."""

    NORMAL = 1000               # the tunnel is over: closed or expired; do not reconnect
    GOING_AWAY = 1001           # the relay is shutting down; reconnect (to another replica)
    PROTOCOL_ERROR = 1002       # codec: a broken WebSocket frame
    UNSUPPORTED_DATA = 1003     # codec: binary on the Huawei endpoint, text on the AWS one
    INVALID_PAYLOAD = 1007      # codec: not UTF-8
    TOO_BIG = 1009              # codec: over the size limit
    INTERNAL_ERROR = 1011
    REPLACED = 4000             # a newer connection took this side; do not reconnect
    TOKEN_REVOKED = 4001        # the token was rotated; reconnect only with the new token
    HEARTBEAT_TIMEOUT = 4008    # nothing heard for two heartbeat intervals
    INVALID_MESSAGE = 4400      # codec: a malformed envelope (Huawei) or tunnel message (AWS)
    NOT_ALLOWED = 4403          # codec: a message this side may not send
    REQUEST_ID_REUSED = 4409    # codec: a reused request_id (Huawei)


# What an end sees without the relay having sent it: no close frame at all (1006, or None when
# the client library gives no code), and the codes a proxy or load balancer in front may send.
ABNORMAL = 1006
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013
BAD_GATEWAY = 1014


class Next(str, enum.Enum):
    """What an end does after its connection ended."""

    RECONNECT = "reconnect"            # with backoff: the network or the relay had a moment
    WAIT_FOR_TOKEN = "wait-for-token"  # the token was rotated or refused: only a new one helps
    STOP = "stop"                      # the tunnel is over, someone else holds this end, or we broke a rule


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    next: Next
    text: str   # what it means to the person at the keyboard


_AFTER_CLOSE: dict[int, Verdict] = {
    CloseCode.NORMAL: Verdict(Next.STOP, "the tunnel is over (closed or expired)"),
    CloseCode.GOING_AWAY: Verdict(Next.RECONNECT, "the relay is shutting down"),
    CloseCode.PROTOCOL_ERROR: Verdict(Next.STOP, "WebSocket protocol error"),
    CloseCode.UNSUPPORTED_DATA: Verdict(Next.STOP, "the relay refused a message of a kind this endpoint does not take"),
    ABNORMAL: Verdict(Next.RECONNECT, "the connection to the relay was lost"),
    CloseCode.INVALID_PAYLOAD: Verdict(Next.STOP, "the relay refused a message that is not UTF-8"),
    CloseCode.TOO_BIG: Verdict(Next.STOP, "a message was over the relay's size limit"),
    CloseCode.INTERNAL_ERROR: Verdict(Next.RECONNECT, "the relay had an internal error"),
    SERVICE_RESTART: Verdict(Next.RECONNECT, "the relay is restarting"),
    TRY_AGAIN_LATER: Verdict(Next.RECONNECT, "the relay asked to try again later"),
    BAD_GATEWAY: Verdict(Next.RECONNECT, "a gateway in front of the relay failed"),
    CloseCode.REPLACED: Verdict(Next.STOP, "another connection to this end of the tunnel replaced this one"),
    CloseCode.TOKEN_REVOKED: Verdict(Next.WAIT_FOR_TOKEN, "the tunnel's access token was rotated"),
    CloseCode.HEARTBEAT_TIMEOUT: Verdict(Next.RECONNECT, "the relay heard nothing from this end (heartbeat)"),
    CloseCode.INVALID_MESSAGE: Verdict(Next.STOP, "the relay refused a malformed message"),
    CloseCode.NOT_ALLOWED: Verdict(Next.STOP, "the relay refused a message this end may not send"),
    CloseCode.REQUEST_ID_REUSED: Verdict(Next.STOP, "the relay refused a reused request_id"),
}
# No close code: the network dropped (the client library saw no close frame).
_LOST = Verdict(Next.RECONNECT, "the connection to the relay ended")
# A code not in the table: the relay (or something in front of it) closed for a reason we do
# not know; reconnecting could loop on it.
_UNKNOWN = "the relay closed the connection"


def after_close(code: int | None, *, ours: bool = False) -> Verdict:
    """What follows a close with `code` (None: no close frame). `ours`: the end closed the
    connection itself because the relay's bytes were not the protocol (1002, 1003): a glitch
    on the way, so reconnecting is worth it; the same code from the relay means this end broke
    a rule, and trying again would break it again."""
    if code is None:
        return _LOST
    if ours and code in (CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA):
        return Verdict(Next.RECONNECT, "the relay sent bytes that are not the protocol")
    return _AFTER_CLOSE.get(code, Verdict(Next.STOP, _UNKNOWN))


def describe_close(code: int | None) -> str:
    """One line for people: what the close means, and its code."""
    if code is None:
        return _LOST.text
    return f"{after_close(code).text} (close code {code})"


class Backoff:
    """Growing delays with jitter (+-20 %): 1, 2, 4, ... up to `maximum` seconds, between
    reconnections; `reset` once a connection proved stable."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._next = initial
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay * (0.8 + 0.4 * self._rng.random())

    def reset(self) -> None:
        self._next = self.initial


# -- a refused handshake (the upgrade answered with an HTTP status) ---------------------------------

_REFUSALS: dict[int, str] = {
    HTTPStatus.UNAUTHORIZED: "the relay refused the tunnel's access token (401): it was rotated, or it is not this tunnel's",
    HTTPStatus.NOT_FOUND: "the relay knows no such tunnel (404)",
    HTTPStatus.GONE: "the tunnel is closed or expired (410)",
    HTTPStatus.SERVICE_UNAVAILABLE: "the relay is shutting down (503): try again",
}


def after_refusal(status: int) -> Verdict:
    """What follows a refused upgrade: 401 a token that only a new one replaces; 429 and 5xx
    the relay or a gateway in front of it, for a while; any other 4xx (400, 404 unknown
    tunnel, 410 closed or expired) for good."""
    text = _REFUSALS.get(status, f"the relay refused the connection (HTTP {status})")
    if status == HTTPStatus.UNAUTHORIZED:
        return Verdict(Next.WAIT_FOR_TOKEN, text)
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR or status == HTTPStatus.TOO_MANY_REQUESTS:
        return Verdict(Next.RECONNECT, text)
    return Verdict(Next.STOP, text)


# -- the relay's `disconnect` messages (Huawei protocol, docs/protocol.md) ---------------------------

# The statuses of the relay's own `disconnect` that end the connection (a close follows):
# replaced (409), closed (410), expired (408), token rotated (401), shutting down (503),
# heartbeat (504). 499 (the peer left) and 404 (no peer for a message) leave it open.
FINAL_DISCONNECTS = frozenset({HTTPStatus.CONFLICT, HTTPStatus.GONE, HTTPStatus.REQUEST_TIMEOUT,
                               HTTPStatus.UNAUTHORIZED, HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT})
_FINAL_TEXTS = frozenset(str(int(status)) for status in FINAL_DISCONNECTS)   # as the envelope spells them


def disconnect_is_final(status_code: str) -> bool:
    """Whether a relay `disconnect` with this `status_code` (a string in the envelope, "409")
    ends the connection."""
    return status_code in _FINAL_TEXTS
