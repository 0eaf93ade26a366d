"""The one reconnect loop of every end, without sockets: relay/closes.py's `Reconnect` (what an
end does after each attempt, with its own limits) and relay/ends/reconnect.py's
`keep_connected` (the loop that runs it, driven here by hooks that open no socket)."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.closes import (STABLE_AFTER, Backoff, Closed, Next, Reconnect, Refusal, Step, Unreached, after_close,
                          after_refusal)
from relay.ends.reconnect import Ending, keep_connected, why_unreached
from relay.ends.websocket import Refused, Unreachable
from tests.ends.test_closes import EVERY_CLOSE


def steady(**settings) -> Reconnect:
    """Rules with delays that show the backoff: 1, 2, 4, ... 30 s, no jitter."""
    return Reconnect(Backoff(1.0, 30.0, jitter=0), **settings)


# -- what follows one attempt ----------------------------------------------------------------------


@pytest.mark.parametrize("code, expected", EVERY_CLOSE)
def test_a_close_is_followed_as_the_policy_says_and_a_rotated_token_ends_an_end_without_a_way_to_a_new_one(
        code, expected):
    with_tokens = steady(new_tokens=True).after(Closed(code))
    without = steady().after(Closed(code))
    assert with_tokens.next is expected and with_tokens.verdict == after_close(code)
    assert without.next is (Next.STOP if expected is Next.WAIT_FOR_TOKEN else expected)
    assert without.verdict == after_close(code)


@pytest.mark.parametrize("status, agent, others", [
    (401, Next.WAIT_FOR_TOKEN, Next.STOP), (404, Next.STOP, Next.STOP), (410, Next.STOP, Next.STOP),
    (400, Next.STOP, Next.STOP), (429, Next.RECONNECT, Next.RECONNECT), (503, Next.RECONNECT, Next.RECONNECT),
])
def test_a_refusal_is_followed_as_the_policy_says(status, agent, others):
    assert steady(new_tokens=True).after(Refusal(status)).next is agent
    step = steady().after(Refusal(status))
    assert step.next is others and step.verdict == after_refusal(status)


def test_an_unreachable_relay_is_tried_again_after_the_backoff():
    step = steady().after(Unreached(ConnectionRefusedError()))
    assert step == Step(Next.RECONNECT, step.verdict, delay=1.0)
    assert step.verdict.next is Next.RECONNECT


def test_this_ends_own_close_after_the_relays_garbage_is_tried_again():
    assert steady().after(Closed(1002, ours=True)).next is Next.RECONNECT
    assert steady().after(Closed(1002)).next is Next.STOP


def test_a_stop_the_end_saw_ends_it_whatever_the_code():
    step = steady().after(Closed(1006, stop="the relay ended the session (410): closed"))
    assert step.next is Next.STOP and step.verdict.text == "the relay ended the session (410): closed"


# -- attempt after attempt -------------------------------------------------------------------------


def test_delays_grow_to_a_ceiling_and_a_new_token_starts_them_over():
    rules = steady(new_tokens=True)
    delays = [rules.after(Unreached(OSError())).delay for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert rules.after(Closed(4001)).next is Next.WAIT_FOR_TOKEN
    rules.token_arrived()
    assert rules.after(Unreached(OSError())).delay == 1


def test_jitter_spreads_the_delays_of_ends_cut_off_at_once():
    rules = Reconnect(Backoff(1.0, 30.0, rng=random.Random(3)))
    delays = [rules.after(Unreached(OSError())).delay for _ in range(4)]
    assert all(0.8 * base <= d <= 1.2 * base for d, base in zip(delays, [1, 2, 4, 8], strict=True))
    assert delays != [1, 2, 4, 8]


def test_it_gives_up_after_max_attempts_failures_in_a_row():
    rules = steady(max_attempts=3)
    steps = [rules.after(attempt) for attempt in (Unreached(OSError()), Refusal(503), Closed(1006))]
    assert [s.next for s in steps] == [Next.RECONNECT] * 3
    last = rules.after(Closed(1011))
    assert last.next is Next.STOP and last.gave_up and last.verdict == after_close(1011)


def test_without_max_attempts_it_never_gives_up():
    rules = steady()
    assert all(rules.after(Unreached(OSError())).next is Next.RECONNECT for _ in range(100))


@pytest.mark.parametrize("closed, starts_over", [
    (Closed(1006, lasted=STABLE_AFTER), True),
    (Closed(1006, lasted=STABLE_AFTER - 0.1), False),
    (Closed(1006, lasted=0.0, proved=True), True),
])
def test_a_connection_that_proved_the_way_works_starts_the_delays_and_the_count_over(closed, starts_over):
    rules = steady(max_attempts=3)
    for _ in range(2):
        rules.after(Unreached(OSError()))
    step = rules.after(closed)
    assert step.delay == (1 if starts_over else 4)
    assert rules.failures == (1 if starts_over else 3)


def test_without_stable_after_only_the_end_says_a_connection_proved_the_way():
    rules = steady(stable_after=None)
    rules.after(Unreached(OSError()))
    assert rules.after(Closed(1006, lasted=3600.0)).delay == 2
    assert rules.after(Closed(1006, proved=True)).delay == 1


def test_a_first_attempt_that_cannot_connect_is_final_when_the_end_says_so():
    """`relay forward`: it says at once why it cannot connect; once it connected, it retries."""
    rules = steady(first_must_open=True)
    assert rules.after(Refusal(503)).next is Next.STOP
    assert rules.after(Unreached(OSError())).next is Next.STOP
    assert rules.after(Closed(1006)).next is Next.RECONNECT
    assert rules.after(Refusal(503)).next is Next.RECONNECT
    assert rules.after(Unreached(OSError())).next is Next.RECONNECT


def test_relay_forwards_rules():
    """No jitter (it prints its delays), MAX_RECONNECTS failures, only the device proves the way."""
    from relay.client.forward import MAX_RECONNECTS, reconnect_rules

    rules = reconnect_rules()
    assert rules.after(Unreached(OSError())).next is Next.STOP
    assert rules.after(Closed(1006, lasted=3600.0)).delay == 1
    delays = [rules.after(Closed(1006)).delay for _ in range(MAX_RECONNECTS - 1)]
    assert delays == [2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert rules.after(Closed(1006)).gave_up


# -- the loop ---------------------------------------------------------------------------------------


class Socket:
    """Stands for an open WebSocket: the loop only hands it from `open` to `serve`."""


class End:
    """Hooks that open no socket: `outcomes` is what each attempt meets, in order (an exception
    that `open` raises, or the Closed that `serve` returns); the notices and pauses are kept."""

    def __init__(self, *outcomes: BaseException | Closed, stop_pause: str | None = None,
                 serve_for: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.notices: list[tuple[object, Step]] = []
        self.pauses: list[Step] = []
        self.served = 0
        self.stop_pause = stop_pause
        self.serve_for = serve_for

    async def open(self) -> Socket:
        outcome = self.outcomes[0]
        if isinstance(outcome, BaseException):
            self.outcomes.pop(0)
            raise outcome
        return Socket()

    async def serve(self, socket: Socket) -> Closed:
        assert isinstance(socket, Socket)
        self.served += 1
        await asyncio.sleep(self.serve_for)
        closed = self.outcomes.pop(0)
        assert isinstance(closed, Closed)
        return closed

    def notice(self, attempt: object, step: Step) -> None:
        self.notices.append((attempt, step))

    async def pause(self, step: Step) -> str | None:
        self.pauses.append(step)
        return self.stop_pause

    async def run(self, rules: Reconnect) -> Ending:
        return await asyncio.wait_for(keep_connected(rules, open=self.open, serve=self.serve,  # type: ignore[arg-type]
                                                     notice=self.notice, pause=self.pause), 30)


async def test_the_loop_runs_attempts_until_the_rules_say_stop_and_tells_every_step():
    timeout = TimeoutError()
    end = End(Unreachable(timeout), Refused(503), Closed(1006), Closed(1000))
    ending = await end.run(steady())
    assert [type(a).__name__ for a, _ in end.notices] == ["Unreached", "Refusal", "Closed", "Closed"]
    assert end.notices[0][0] == Unreached(timeout) and end.notices[1][0] == Refusal(503)
    assert [s.delay for s in end.pauses] == [1, 2, 4]
    assert end.served == 2
    assert ending.step.next is Next.STOP and ending.why is None
    assert isinstance(ending.attempt, Closed) and ending.attempt.code == 1000
    assert ending.step is end.notices[-1][1]
    assert why_unreached(Unreached(timeout)) == "timed out"


async def test_the_loop_stops_when_the_ends_pause_says_why():
    """The agent: the tunnel's lifetime ended while it waited."""
    end = End(Closed(1006), stop_pause="the tunnel's lifetime is over")
    ending = await end.run(steady())
    assert ending.why == "the tunnel's lifetime is over" and ending.step.next is Next.RECONNECT
    assert end.served == 1 and len(end.pauses) == 1


async def test_after_waiting_for_a_token_the_delays_start_over():
    end = End(Unreachable(OSError()), Unreachable(OSError()), Closed(4001), Unreachable(OSError()), Closed(1000))
    await end.run(steady(new_tokens=True))
    assert [(s.next, s.delay) for s in end.pauses] == [
        (Next.RECONNECT, 1), (Next.RECONNECT, 2), (Next.WAIT_FOR_TOKEN, 0.0), (Next.RECONNECT, 1)]


async def test_the_loop_measures_how_long_a_connection_lasted():
    end = End(Unreachable(OSError()), Closed(1006), Closed(1000), serve_for=0.05)
    await end.run(steady(stable_after=0.05))
    closed = end.notices[1][0]
    assert isinstance(closed, Closed) and closed.lasted >= 0.05
    assert end.pauses[1].delay == 1   # it lasted long enough: the delays started over


async def test_the_default_pause_sleeps_the_delay_and_an_end_without_a_pause_cannot_wait_for_a_token():
    rules = Reconnect(Backoff(0.0, 0.0), new_tokens=True)
    end = End(Unreachable(OSError()), Closed(4001))
    ending = await asyncio.wait_for(keep_connected(rules, open=end.open, serve=end.serve), 30)  # type: ignore[arg-type]
    assert ending.step.next is Next.WAIT_FOR_TOKEN and ending.why == after_close(4001).text


async def test_a_send_between_two_connections_fails_as_a_lost_connection():
    from relay.ends.websocket import send_on

    with pytest.raises(ConnectionResetError, match="the tunnel's WebSocket is not connected"):
        await send_on(None, b"data")
