"""relay/closes.py without sockets: every close code and what follows it, every refusal, the
relay's final disconnects, and the one description every end shows."""

from __future__ import annotations

import random
from http import HTTPStatus

import pytest

from relay import closes
from relay.closes import (Backoff, Closed, CloseCode, Next, Refusal, Unreached, after_close, after_refusal,
                          describe_close, disconnect_is_final)

# Every code an end can see, and what it does next: the relay's own, its codec's, and what the
# network or a proxy in front gives (None: no close frame).
EVERY_CLOSE = [
    (None, Next.RECONNECT),
    (1000, Next.STOP),             # the tunnel is over
    (1001, Next.RECONNECT),        # the relay is shutting down: another replica takes over
    (1002, Next.STOP),             # the relay's codec: this end broke the WebSocket protocol
    (1003, Next.STOP),             # ... sent the wrong kind of message
    (1006, Next.RECONNECT),        # no close frame: the network
    (1007, Next.STOP),
    (1009, Next.STOP),
    (1011, Next.RECONNECT),
    (1012, Next.RECONNECT),
    (1013, Next.RECONNECT),
    (1014, Next.RECONNECT),
    (4000, Next.STOP),             # replaced by a newer connection
    (4001, Next.WAIT_FOR_TOKEN),   # the token was rotated
    (4008, Next.RECONNECT),        # heartbeat
    (4400, Next.STOP),
    (4403, Next.STOP),
    (4409, Next.STOP),
    (3000, Next.STOP),             # a code nobody documents: do not loop on it
    (4999, Next.STOP),
]


@pytest.mark.parametrize("code, expected", EVERY_CLOSE)
def test_what_follows_each_close_code(code, expected):
    assert after_close(code).next is expected


def test_every_code_the_relay_sends_has_a_verdict_and_a_description_of_its_own():
    for code in CloseCode:
        assert code in dict(EVERY_CLOSE), f"{code!r} has no expectation in EVERY_CLOSE"
        assert "closed the connection (close code" not in describe_close(code), code


def test_the_codecs_close_codes_are_the_ones_docs_codec_md_lists():
    """docs/codec.md "Close codes": the codec's own are part of CloseCode, by the same numbers."""
    assert {int(c) for c in CloseCode} >= {1000, 1001, 1002, 1003, 1007, 1009, 4000, 4001, 4400, 4403, 4409}


@pytest.mark.parametrize("code", [1002, 1003])
def test_our_own_close_after_the_relays_garbage_reconnects(code):
    """A 1002/1003 this end sent (the relay's bytes were not the protocol) is a glitch on the
    way; the same code from the relay means this end broke a rule."""
    assert after_close(code, ours=True).next is Next.RECONNECT
    assert after_close(code).next is Next.STOP


@pytest.mark.parametrize("code", [1000, 4000, 4001, 1009])
def test_ours_changes_nothing_else(code):
    assert after_close(code, ours=True) == after_close(code)


@pytest.mark.parametrize("code, words", [
    (None, "the connection to the relay ended"),
    (1000, "the tunnel is over (closed or expired) (close code 1000)"),
    (4000, "replaced"), (4001, "rotated"), (1001, "shutting down"), (4409, "request_id"),
    (4008, "heartbeat"), (1006, "lost"), (3999, "the relay closed the connection (close code 3999)"),
])
def test_descriptions(code, words):
    assert words in describe_close(code)


@pytest.mark.parametrize("status, expected", [
    (HTTPStatus.UNAUTHORIZED, Next.WAIT_FOR_TOKEN),
    (HTTPStatus.BAD_REQUEST, Next.STOP), (HTTPStatus.FORBIDDEN, Next.STOP), (HTTPStatus.NOT_FOUND, Next.STOP),
    (HTTPStatus.CONFLICT, Next.STOP), (HTTPStatus.GONE, Next.STOP),
    (HTTPStatus.TOO_MANY_REQUESTS, Next.RECONNECT),
    (HTTPStatus.INTERNAL_SERVER_ERROR, Next.RECONNECT), (HTTPStatus.BAD_GATEWAY, Next.RECONNECT),
    (HTTPStatus.SERVICE_UNAVAILABLE, Next.RECONNECT), (HTTPStatus.GATEWAY_TIMEOUT, Next.RECONNECT),
    (HTTPStatus.OK, Next.STOP),   # not a relay's answer to an upgrade
])
def test_what_follows_each_refusal(status, expected):
    assert after_refusal(status).next is expected


def test_refusals_say_what_they_mean():
    assert "rotated" in after_refusal(401).text and "(401)" in after_refusal(401).text
    assert "no such tunnel" in after_refusal(404).text
    assert "closed or expired" in after_refusal(410).text
    assert after_refusal(418).text == "the relay refused the connection (HTTP 418)"


@pytest.mark.parametrize("status_code, final", [
    ("409", True), ("410", True), ("408", True), ("401", True), ("503", True), ("504", True),
    ("499", False), ("404", False), ("400", False), ("200", False), ("", False), ("0409", False), ("409 ", False),
])
def test_which_relay_disconnects_end_the_connection(status_code, final):
    assert disconnect_is_final(status_code) is final


def test_final_disconnects_are_http_statuses():
    assert all(isinstance(s, HTTPStatus) for s in closes.FINAL_DISCONNECTS)


def test_backoff_grows_with_jitter_to_a_ceiling_and_resets():
    backoff = Backoff(1, 8, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0.8 * b <= d <= 1.2 * b for d, b in zip(delays, bases, strict=True))
    backoff.reset()
    assert 0.8 <= backoff.next_delay() <= 1.2


# -- the ends use it ------------------------------------------------------------------------------


@pytest.mark.parametrize("error, retry", [
    ("unreachable", True), (503, True), (502, True), (500, True), (429, True),
    (401, False), (404, False), (410, False), (400, False),
])
def test_relay_forward_retries_what_the_policy_retries(error, retry):
    """`relay forward`, once it listens, retries a failed reconnection when the policy says so
    (it has no way to a new token: 401 ends it). Its rules are relay/client/forward.py's
    `reconnect_rules` (they were its `_retryable`); what it prints, remote.py's `connect_error`."""
    from relay.client.forward import reconnect_rules
    from relay.client.remote import Refused, connect_error

    rules = reconnect_rules()
    rules.after(Closed(1006, proved=True))   # it connected once: it listens
    attempt = Unreached(ConnectionRefusedError()) if error == "unreachable" else Refusal(int(error))
    assert (rules.after(attempt).next is Next.RECONNECT) is retry
    exc = connect_error("ws://127.0.0.1:1/x", attempt)
    if error != "unreachable":
        assert isinstance(exc, Refused) and str(exc) == after_refusal(int(error)).text
    else:
        assert str(exc) == "cannot connect to ws://127.0.0.1:1/x: ConnectionRefusedError"

