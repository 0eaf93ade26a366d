"""Why the control plane ends a tunnel's connections, without sockets: one typed mapping from
the store's close reason to the cause a cluster hint carries, and from that cause to what the
ends are told, with no default for a cause nobody named."""

from __future__ import annotations

import pytest

from relay.model import CloseReason
from relay.protocol import CloseCode, EndCause, Reasons


def test_every_close_reason_has_its_cause():
    assert EndCause.of_close(CloseReason.CLOSED) is EndCause.CLOSED
    assert EndCause.of_close(CloseReason.EXPIRED) is EndCause.EXPIRED
    assert {EndCause.of_close(reason) for reason in CloseReason} <= set(EndCause)


def test_each_cause_tells_the_ends_its_own_reason_and_close():
    assert EndCause.CLOSED.reason is Reasons.TUNNEL_CLOSED
    assert EndCause.EXPIRED.reason is Reasons.TUNNEL_EXPIRED
    assert EndCause.ROTATED.reason is Reasons.TOKEN_ROTATED
    assert {cause.reason.close_code for cause in EndCause} == {CloseCode.NORMAL, CloseCode.TOKEN_REVOKED}
    assert (EndCause.CLOSED.reason.status_code, EndCause.EXPIRED.reason.status_code) == ("410", "408")


@pytest.mark.parametrize("cause", list(EndCause))
def test_a_cause_goes_through_a_hint_and_back_unchanged(cause):
    assert EndCause.parse(cause.value) is cause
    assert cause.value in ("closed", "expired", "rotated")   # the hint's wire form, shared by every replica


@pytest.mark.parametrize("text", ["", "Closed", "evicted", "shutting down", "closed "])
def test_a_cause_nobody_named_is_refused_not_guessed(text):
    with pytest.raises(ValueError):
        EndCause.parse(text)
