"""The one reconnect loop of every end: the agent's Huawei tunnel (relay/agent/tunnel.py), an
AWS end's session (aws_session.py, agent and `relay localproxy`), `relay forward`
(relay/client/forward.py). Open a WebSocket, serve it until it ends, ask relay/closes.py's
`Reconnect` what follows, pause, and again.

The decisions are `Reconnect`'s (sans-I/O, tested without sockets in tests/ends/); this loop
only runs them. What differs between the ends is theirs, as hooks: what to open
(`open`), what to do on a connection (`serve`, which also closes it), how to say what
happens (`notice`) and how to wait before the next attempt (`pause`; the agent's ends early
when a new token comes, and stops when the tunnel's lifetime does).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from relay.closes import Attempt, Closed, Next, Reconnect, Refusal, Step, Unreached
from relay.ends.pipes import describe
from relay.ends.websocket import ClientSocket, Refused, Unreachable


@dataclasses.dataclass(frozen=True, slots=True)
class Ending:
    """Why the loop returned: its last attempt, the step that followed it (a STOP), or, when
    the end's `pause` stopped it, that step and the pause's reason (`why`)."""

    attempt: Attempt
    step: Step
    why: str | None = None


def attempt_of(failure: Refused | Unreachable) -> Refusal | Unreached:
    """A failed opening, as `Reconnect` reads it."""
    if isinstance(failure, Refused):
        return Refusal(failure.status)
    return Unreached(failure.error)


def why_unreached(attempt: Unreached) -> str:
    """Why the relay could not be reached, in a few words for the logs."""
    return "timed out" if isinstance(attempt.error, asyncio.TimeoutError) else describe(attempt.error)


def _quiet(attempt: Attempt, step: Step) -> None:
    return None


async def _sleep(step: Step) -> str | None:
    """The pause of an end with no way to a new token: the delay."""
    if step.next is not Next.RECONNECT:
        return step.verdict.text
    await asyncio.sleep(step.delay)
    return None


async def keep_connected(rules: Reconnect, *, open: Callable[[], Awaitable[ClientSocket]],
                         serve: Callable[[ClientSocket], Awaitable[Closed]],
                         notice: Callable[[Attempt, Step], None] = _quiet,
                         pause: Callable[[Step], Awaitable[str | None]] = _sleep) -> Ending:
    """Attempt after attempt until `rules` say STOP or `pause` returns a reason to stop.
    `open` raises relay/ends/websocket.py's `Refused` or `Unreachable`; `serve` returns once
    the connection is over (how long it lasted is measured here); `notice` hears every step,
    the last one too. Bounded by the rules' `max_attempts`, or by what the end's `pause`
    bounds (the agent: the tunnel's lifetime)."""
    loop = asyncio.get_running_loop()
    while True:
        attempt: Attempt
        try:
            socket = await open()
        except (Refused, Unreachable) as exc:
            attempt = attempt_of(exc)
        else:
            connected = loop.time()
            closed = await serve(socket)
            attempt = dataclasses.replace(closed, lasted=loop.time() - connected)
        step = rules.after(attempt)
        notice(attempt, step)
        if step.next is Next.STOP:
            return Ending(attempt, step)
        why = await pause(step)
        if why is not None:
            return Ending(attempt, step, why)
        if step.next is Next.WAIT_FOR_TOKEN:
            rules.token_arrived()
