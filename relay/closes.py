"""How a tunnel connection ends, and what an end does next: the WebSocket close codes of both
protocols' endpoints (the relay's own and its codec's), the relay's `disconnect` statuses that
end a Huawei connection, and the ONE policy every end follows (the agent, `relay ssh`/`exec`,
`relay forward`, `relay localproxy`, both protocols): stop, reconnect, or reconnect only with a
new token, and how to say why to a person; how long to wait before trying again (`Backoff`);
and, attempt after attempt, what an end does next with its own limits (`Reconnect`: whether it
can get a new token, how many failures in a row it takes, when a connection proved stable).
The ends ask it; none keeps a code list or a reconnect rule of its own (their one loop, the
I/O around `Reconnect`, is relay/ends/reconnect.py).

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
    """Growing delays, 1, 2, 4, ... up to `maximum` seconds, between reconnections, each spread
    by +-`jitter` (20 %: ends cut off at once do not all come back in step; 0 for an end that
    prints its delays, `relay forward`); `reset` once a connection proved stable."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None, jitter: float = 0.2) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._next = initial
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        if not self.jitter:
            return delay
        return delay * (1 - self.jitter + 2 * self.jitter * self._rng.random())

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


# -- one end's attempts, one after another (the loop that runs them: relay/ends/reconnect.py) --------


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """An attempt whose upgrade the relay answered with an HTTP status."""

    status: int


@dataclasses.dataclass(frozen=True, slots=True)
class Unreached:
    """An attempt that got no WebSocket: the relay could not be reached (`error` says how)."""

    error: BaseException


@dataclasses.dataclass(frozen=True, slots=True)
class Closed:
    """An attempt whose connection was up, and ended: with `code` (None: no close frame),
    closed by this end itself when `ours` (see `after_close`), after `lasted` seconds. `proved`:
    the end saw the connection work (`relay forward`: the device was there). `stop`: the end
    saw the session end whatever the code (the relay's final `disconnect`, no device in
    time), and why."""

    code: int | None
    ours: bool = False
    lasted: float = 0.0
    proved: bool = False
    stop: str | None = None


Attempt = Refusal | Unreached | Closed

STABLE_AFTER = 10.0   # seconds: a connection up this long proved that the way to the relay works

_UNREACHED = Verdict(Next.RECONNECT, "the relay could not be reached")


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """What an end does after an attempt: `next` (RECONNECT after `delay` seconds,
    WAIT_FOR_TOKEN, or STOP; `gave_up`: STOP because too many attempts in a row failed), and
    `verdict`, what the policy above said of the attempt (its text for people), before this
    end's limits."""

    next: Next
    verdict: Verdict
    delay: float = 0.0
    gave_up: bool = False


class Reconnect:
    """One end's attempts to stay connected, one after another: after each, what the end does
    next. Every end follows `after_close` and `after_refusal`; what differs between the ends is
    stated here, once, as settings:

    - `new_tokens`: the end has a way to a new token (the agent hears it over MQTT); one that
      has none stops where the policy would wait for one;
    - `max_attempts`: failed attempts in a row before it gives up (None: never; the agent is
      bounded by the tunnel's lifetime instead);
    - `stable_after`: a connection up this long proves the way works (None: only the end's
      `proved` does); then the backoff and the count of failures start over;
    - `first_must_open`: a first attempt that opens no connection is final (`relay forward`
      says at once why it cannot connect, and listens only once it has connected).
    """

    def __init__(self, backoff: Backoff | None = None, *, new_tokens: bool = False, max_attempts: int | None = None,
                 stable_after: float | None = STABLE_AFTER, first_must_open: bool = False) -> None:
        self.backoff = backoff or Backoff()
        self.new_tokens = new_tokens
        self.max_attempts = max_attempts
        self.stable_after = stable_after
        self.first_must_open = first_must_open
        self.failures = 0      # attempts since the last connection that proved the way works
        self.opened = False    # whether any attempt opened a connection

    def after(self, attempt: Attempt) -> Step:
        if isinstance(attempt, Closed):
            self.opened = True
            verdict = after_close(attempt.code, ours=attempt.ours) if attempt.stop is None \
                else Verdict(Next.STOP, attempt.stop)
            if attempt.proved or (self.stable_after is not None and attempt.lasted >= self.stable_after):
                self.backoff.reset()
                self.failures = 0
        else:
            verdict = after_refusal(attempt.status) if isinstance(attempt, Refusal) else _UNREACHED
            if self.first_must_open and not self.opened:
                return Step(Next.STOP, verdict)
        if verdict.next is Next.WAIT_FOR_TOKEN and not self.new_tokens:
            return Step(Next.STOP, verdict)
        if verdict.next is not Next.RECONNECT:
            return Step(verdict.next, verdict)
        self.failures += 1
        if self.max_attempts is not None and self.failures > self.max_attempts:
            return Step(Next.STOP, verdict, gave_up=True)
        return Step(Next.RECONNECT, verdict, delay=self.backoff.next_delay())

    def token_arrived(self) -> None:
        """A new token came after WAIT_FOR_TOKEN: the next attempt starts the delays over."""
        self.backoff.reset()
